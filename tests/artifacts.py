"""The session's slow artefacts: a phantom set, the DenseNet-121 trained on it and the bundle converted from it.

Each is built once through its stage's own command line, in a subprocess with no network (tests/offline.py, in a
fresh network namespace where allowed; network.log beside each artefact records any attempt), with the CPU's
instruction sets and threads pinned (train.repro), so they are the same bits on every x86-64 machine. They are
cached under ``.cache/test-artifacts/<name>-<key>`` (``XRAY_TEST_ARTIFACTS`` for another folder), where the key
hashes the code that makes them.

A build holds a lock on its artefact, so two processes (a background builder and a test, or two pytest-xdist
workers) never build one twice: the second waits and takes the finished one. tests/conftest.py starts this module
in the background as soon as collection shows that a test needs an artefact, and runs the tests that need none
first, so the ten minutes of building overlap the rest of the suite.

    python -m tests.artifacts [phantoms|run|bundle]     # build up to that artefact (default: bundle)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from convert.spread import CONVERT_ARGS, PHANTOMS, TRAIN_ARGS
from train.repro import pinned_env

ROOT = Path(__file__).resolve().parents[1]

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


class BuildError(RuntimeError):
    pass


def _run_stage(module: str, args: list[str], out: Path) -> None:
    proc = run_offline(module, args, out / "network.log", env=pinned_env())
    (out / f"{module}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise BuildError(f"python -m {module} failed ({proc.returncode}):\n{tail}")


def _key(files: tuple[str, ...], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for name in files:
        p = ROOT / name
        h.update(name.encode() + (p.read_bytes() if p.is_file() else b"<missing>"))
    return h.hexdigest()[:16]


def artifact_root() -> Path:
    return Path(os.environ.get("XRAY_TEST_ARTIFACTS", ROOT / ".cache" / "test-artifacts"))


def _build_once(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """Build into a temp folder and rename into place, under a lock: an interrupted build is never reused, and a
    second process waits for the first's instead of building its own."""
    final = artifact_root() / f"{name}-{key}"
    if (final / ".complete").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(final.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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


def phantoms() -> Path:
    """A phantom set in NIH layout (images/, Data_Entry_2017.csv, BBox_List_2017.csv, split lists)."""
    def build(tmp: Path) -> None:
        _run_stage("train.phantoms", ["--out", str(tmp), "--patients", str(PHANTOM_PATIENTS), "--seed",
                                      str(PHANTOM_SEED), "--test-fraction", str(PHANTOM_TEST_FRACTION), "--quiet"], tmp)
    key = _key(("train/phantoms.py", "train/phantom_draw.py", "train/repro.py", "tests/offline.py"),
               f"{PHANTOM_PATIENTS}-{PHANTOM_SEED}-{PHANTOM_TEST_FRACTION}")
    return _build_once("phantoms", key, build)


def run(phantom_set: Path) -> Path:
    """A run folder of the real DenseNet-121 trained briefly on the CPU (preset 'test')."""
    def build(tmp: Path) -> None:
        _run_stage("train", ["--data", str(phantom_set), "--out", str(tmp), *TRAIN_ARGS], tmp)
    return _build_once("run", _key(_ARTIFACT_SOURCES, " ".join([phantom_set.name, *TRAIN_ARGS])), build)


def bundle(checkpoint: Path, phantom_set: Path) -> Path:
    """The model bundle convert makes from the session checkpoint (int8 + fp32 TFLite)."""
    def build(tmp: Path) -> None:
        # Relaxed int8 limits so a bundle always exists for the tests that use one; the default limits are
        # asserted on its fidelity report by tests/convert/test_end_to_end.py.
        _run_stage("convert", [str(checkpoint), "--data", str(phantom_set), "--out", str(tmp / "bundle"),
                               *CONVERT_ARGS], tmp)
    key = _key(_ARTIFACT_SOURCES + _CONVERT_SOURCES, " ".join([checkpoint.parent.name, *CONVERT_ARGS]))
    root = _build_once("bundle", key, build)
    return root / "bundle"


STAGES = ("phantoms", "run", "bundle")


def build_upto(stage: str = "bundle") -> Path:
    data = phantoms()
    if stage == "phantoms":
        return data
    trained = run(data)
    return trained if stage == "run" else bundle(trained / "best.safetensors", data)


def _builder_lock() -> Path:
    return artifact_root() / ".builder.lock"


def start_in_background(stage: str) -> subprocess.Popen | None:
    """Start ``python -m tests.artifacts stage`` unless a builder already runs; its output goes to builder.log."""
    root = artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(_builder_lock(), "w") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another process's builder holds it
        fcntl.flock(probe, fcntl.LOCK_UN)
    with open(root / "builder.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "tests.artifacts", stage], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def main(argv: list[str]) -> int:
    stage = argv[0] if argv else "bundle"
    if stage not in STAGES:
        print(f"usage: python -m tests.artifacts [{'|'.join(STAGES)}]", file=sys.stderr)
        return 2
    artifact_root().mkdir(parents=True, exist_ok=True)
    with open(_builder_lock(), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another builder is running", file=sys.stderr)
            return 0
        try:
            print(build_upto(stage), flush=True)
        except BuildError as err:
            print(err, file=sys.stderr)  # the test that needs it builds again and fails with this message
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
