"""Shared fixtures: the real test data, and one briefly trained model + bundle per session.

The slow artefacts (phantom set, trained DenseNet-121, converted bundle) are built once and cached by
tests/artifacts.py, through the stages' own command lines with no network (tests/test_no_network.py asserts there
was no attempt). When collection shows that a test needs them, a builder starts in the background at once and the
tests that need none run first, so the build overlaps them; a test that needs an artefact waits for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

# Before anything loads PyTorch: its OpenMP threads wait passively, as the train command's do (train/__main__.py).
# Spinning threads made the tests that train in this process 10-30x slower beside the background build or another
# xdist worker (test_training_steps_lower_the_loss: 4 s alone, 108 s beside them).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tests import artifacts  # noqa: E402
from tests.artifacts import NETNS, ROOT, BuildError, run_offline  # noqa: E402, F401  (tests import these from here)

IN_CI = os.environ.get("CI", "").lower() == "true"

# The fixtures that need a built artefact, and the last stage each needs.
_NEEDS = {"bundle_dir": "bundle", "checkpoint": "run", "trained_run": "run", "phantom_set": "phantoms"}
_builder: subprocess.Popen | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the artefacts' builder in the background when a test needs one, and run the tests in the order the
    builder finishes what they need (none, then the phantoms, the trained run, the bundle), so the build overlaps
    them (under pytest-xdist too: every worker collects the same and the first builder wins)."""
    global _builder

    def needs(item: pytest.Item) -> int:  # 0: nothing built; 1, 2, 3: up to phantoms, run, bundle
        return max((artifacts.STAGES.index(_NEEDS[f]) + 1 for f in getattr(item, "fixturenames", ()) if f in _NEEDS),
                   default=0)

    last = max(map(needs, items), default=0)
    if last and not config.option.collectonly:
        _builder = artifacts.start_in_background(artifacts.STAGES[last - 1])
        items.sort(key=needs)  # stable: in the order collected within each stage


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A builder still running when the tests end (-x, -k, an interrupt) is stopped: a half build is never reused."""
    if _builder is not None and _builder.poll() is None:
        os.killpg(_builder.pid, signal.SIGTERM)
        try:
            _builder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(_builder.pid, signal.SIGKILL)


def _built(make, *args) -> Path:
    try:
        return make(*args)
    except BuildError as err:
        pytest.fail(str(err))


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


@pytest.fixture(scope="session")
def phantom_set() -> Path:
    """A phantom set in NIH layout (images/, Data_Entry_2017.csv, BBox_List_2017.csv, split lists)."""
    return _built(artifacts.phantoms)


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
    return _built(artifacts.run, phantom_set)


@pytest.fixture(scope="session")
def checkpoint(trained_run: Path) -> Path:
    return trained_run / "best.safetensors"


@pytest.fixture(scope="session")
def bundle_dir(checkpoint: Path, phantom_set: Path) -> Path:
    """The model bundle convert makes from the session checkpoint (int8 + fp32 TFLite)."""
    return _built(artifacts.bundle, checkpoint, phantom_set)
