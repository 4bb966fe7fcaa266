"""Shared fixtures: the real test data, and one briefly trained model + bundle per session.

The slow artefacts (phantom set, trained DenseNet-121, converted bundle) are built once per
session through the stages' own command-line entry points, each in a subprocess with no
network (tests/offline.py; a fresh network namespace where allowed): network.log beside
each artefact records any attempt, and tests/test_no_network.py asserts there was none. They are cached under
``.cache/test-artifacts/<key>`` where the key hashes the code that makes them, so a re-run
with unchanged stages reuses them; set XRAY_TEST_ARTIFACTS to use another folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convert.spread import CONVERT_ARGS, PHANTOMS, TRAIN_ARGS
from train.repro import pinned_env

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"

# What the session model is made from; changing any of these files rebuilds it.
_ARTIFACT_SOURCES = tuple(sorted(str(p.relative_to(ROOT)) for p in (ROOT / "train").glob("*.py"))) + (
    "edge/preprocess.py", "edge/films.py", "edge/decode.py", "edge/dicom.py", "tests/offline.py")
_CONVERT_SOURCES = tuple(str(p.relative_to(ROOT)) for p in sorted((ROOT / "convert").glob("*.py")))

# The session recipe (convert.spread, which also measures it over training seeds): ~190 held-out films,
# enough positives per label to measure |dAUROC| to 0.005.
PHANTOM_PATIENTS, PHANTOM_SEED, PHANTOM_TEST_FRACTION = (PHANTOMS[k] for k in ("patients", "seed", "test_fraction"))


def _netns_prefix() -> list[str]:
    """``unshare -n`` puts a command in a new network namespace with no interfaces up, where allowed."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-n"]
    return []


NETNS = _netns_prefix()


def run_offline(module: str, args: list[str], log: Path, timeout: float = 1800,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` with no network (tests/offline.py); network attempts go to ``log``."""
    cmd = [*NETNS, sys.executable, str(ROOT / "tests" / "offline.py"), str(log), module, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def _run_stage(module: str, args: list[str], out: Path) -> None:
    """A fixture stage, with the CPU's instruction sets and threads pinned (train.repro): the session's
    phantoms, model and bundle are the same on every x86-64 machine, so its quality figures are too."""
    proc = run_offline(module, args, out / "network.log", env=pinned_env())
    (out / f"{module}.log").write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"python -m {module} failed ({proc.returncode}):\n{tail}"


def shared_data_dir() -> Path | None:
    env = os.environ.get("XRAY_TEST_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def skip_or_fail(message: str) -> None:
    """Something a test needs is missing: skip it locally, fail it in CI (where it must be there)."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def test_data() -> Path:
    """../shared/data (or $XRAY_TEST_DATA). Missing: skip locally, fail in CI."""
    path = shared_data_dir()
    if path is None:
        skip_or_fail("real test data not found: set XRAY_TEST_DATA or put it in ../shared/data")
    return path


def _key(files: tuple[str, ...], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for name in files:
        p = ROOT / name
        h.update(name.encode() + (p.read_bytes() if p.is_file() else b"<missing>"))
    return h.hexdigest()[:16]


def _artifact_root() -> Path:
    return Path(os.environ.get("XRAY_TEST_ARTIFACTS", ROOT / ".cache" / "test-artifacts"))


def _build_once(name: str, key: str, build) -> Path:
    """Build into a temp folder and rename into place, so an interrupted build is never reused."""
    final = _artifact_root() / f"{name}-{key}"
    if (final / ".complete").is_file():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


@pytest.fixture(scope="session")
def phantom_set() -> Path:
    """A phantom set in NIH layout (images/, Data_Entry_2017.csv, BBox_List_2017.csv, split lists)."""
    def build(tmp: Path) -> None:
        _run_stage("train.phantoms", ["--out", str(tmp), "--patients", str(PHANTOM_PATIENTS), "--seed",
                                      str(PHANTOM_SEED), "--test-fraction", str(PHANTOM_TEST_FRACTION), "--quiet"], tmp)
    key = _key(("train/phantoms.py", "train/phantom_draw.py", "train/repro.py", "tests/offline.py"),
               f"{PHANTOM_PATIENTS}-{PHANTOM_SEED}-{PHANTOM_TEST_FRACTION}")
    return _build_once("phantoms", key, build)


@pytest.fixture
def few_films(phantom_set: Path, tmp_path: Path) -> Path:
    """A folder (in tmp_path) with copies of the first three phantom films."""
    folder = tmp_path / "films"
    folder.mkdir()
    for src in sorted((phantom_set / "images").glob("*.png"))[:3]:
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="session")
def trained_run(phantom_set: Path) -> Path:
    """A run folder of the real DenseNet-121 trained briefly on the CPU (preset 'test')."""
    def build(tmp: Path) -> None:
        _run_stage("train", ["--data", str(phantom_set), "--out", str(tmp), *TRAIN_ARGS], tmp)
    return _build_once("run", _key(_ARTIFACT_SOURCES, phantom_set.name), build)


@pytest.fixture(scope="session")
def checkpoint(trained_run: Path) -> Path:
    return trained_run / "best.safetensors"


@pytest.fixture(scope="session")
def bundle_dir(checkpoint: Path, phantom_set: Path) -> Path:
    """The model bundle convert makes from the session checkpoint (int8 + fp32 TFLite)."""
    def build(tmp: Path) -> None:
        # Relaxed int8 limits so a bundle always exists for the tests that use one; the default limits
        # are asserted on its fidelity report by tests/convert/test_end_to_end.py.
        _run_stage("convert", [str(checkpoint), "--data", str(phantom_set), "--out", str(tmp / "bundle"),
                               *CONVERT_ARGS], tmp)
    root = _build_once("bundle", _key(_ARTIFACT_SOURCES + _CONVERT_SOURCES, checkpoint.parent.name), build)
    return root / "bundle"
