"""edge.capture with a fake camera: usable photos stored with a result, unusable ones rejected with the reason."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import edge.capture
from edge.capture import INSTALL_PICAMERA2, check_frame, crop_lightbox, main, run_session, sharpness
from edge.films import load_film
from edge.service import ScanContext
from edge.store import Store
from tests.edge.test_scan import FakeExplainer, FakeModel, fake_bundle, install_fakes

BORDER = 50
WIDTH = 800


class FakeCamera:
    """Hands out the given frames in turn (the last one again when they run out)."""

    def __init__(self, frames: list[np.ndarray]):
        self.frames, self.grabbed, self.closed = list(frames), 0, False

    def capture_array(self) -> np.ndarray:
        self.grabbed += 1
        return self.frames.pop(0) if len(self.frames) > 1 else self.frames[0]

    def close(self) -> None:
        self.closed = True


def photo(film: np.ndarray, *, blur: float = 0, gain: float = 1.0, seed: int = 0, width: int = WIDTH) -> np.ndarray:
    """A camera's RGB photo of ``film`` on a lit lightbox (bright border), with sensor noise."""
    big = Image.fromarray(film).resize((width, round(width * film.shape[0] / film.shape[1])), Image.Resampling.BILINEAR)
    if blur:
        big = big.filter(ImageFilter.GaussianBlur(blur))
    h, w = big.height, big.width
    frame = np.full((h + 2 * BORDER, w + 2 * BORDER), 248, np.float32)
    frame[BORDER:BORDER + h, BORDER:BORDER + w] = np.asarray(big)
    noise = np.random.default_rng(seed).standard_normal((*frame.shape, 3), dtype=np.float32) * 3
    return np.clip(frame[..., None] * gain + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def film(test_data) -> np.ndarray:
    return load_film(test_data / "nih-images" / "00000001_000.png")


@pytest.fixture(scope="module")
def real_films(test_data) -> list[np.ndarray]:
    nih, other = sorted((test_data / "nih-images").glob("*.png")), sorted((test_data / "other-cxr").rglob("*.png"))
    paths = [*nih[::6], *other[::8]]
    return [load_film(p) for p in paths]


def test_real_films_on_a_lightbox_pass_and_are_cropped(real_films):
    for i, f in enumerate(real_films):
        kept, problems = check_frame(photo(f, seed=i))
        assert problems == []
        assert abs(kept.shape[1] - WIDTH) <= 4  # the lit border is trimmed off


def test_blurred_photos_are_rejected(real_films):
    rejected = [check_frame(photo(f, blur=WIDTH / 150, seed=i))[1] for i, f in enumerate(real_films)]
    assert all(any(p.startswith("blurred:") for p in problems) for problems in rejected)
    assert all(sharpness(photo(f, blur=WIDTH / 150)) < sharpness(photo(f)) for f in real_films[:3])


@pytest.mark.parametrize(("frame", "reason"), [
    (lambda f: photo(f, gain=0.08), "too dark"),
    (lambda f: np.full((600, 800, 3), 252, np.uint8), "too bright"),
    (lambda f: np.clip(photo(f).astype(np.int16) * 3, 0, 255).astype(np.uint8), "overexposed"),
    (lambda f: np.full((600, 800, 3), 120, np.uint8), "too little contrast"),
    (lambda f: np.random.default_rng(1).integers(0, 256, (6, 8, 3)).repeat(100, 0).repeat(100, 1).astype(np.uint8),
     "colourful"),
    (lambda f: photo(f)[:, :, :][300:420], "height/width"),
])
def test_unusable_frames_say_why(film, frame, reason):
    _, problems = check_frame(frame(film))
    assert problems and any(reason in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_crop_lightbox_keeps_a_frame_without_border():
    gray = np.random.default_rng(0).integers(0, 200, (50, 40)).astype(np.uint8)
    assert np.array_equal(crop_lightbox(gray), gray)


def _ctx(tmp_path: Path, store: Store) -> ScanContext:
    return ScanContext(model=FakeModel(fake_bundle(tmp_path)), explainer=FakeExplainer(), store=store,
                       out_dir=tmp_path / "out")


def test_timed_session_stores_good_film_with_result(film, tmp_path, capsys):
    camera = FakeCamera([photo(film, gain=0.05), photo(film, blur=WIDTH / 100), photo(film)])
    with Store(tmp_path / "r.sqlite") as store:
        ctx = _ctx(tmp_path, store)
        kept, failed = run_session(camera, ctx, timer=0, count=1, ask=None)
        (row,) = list(store.rows())
    assert (kept, failed, camera.grabbed) == (1, 0, 3)
    assert row["status"] == "ok" and row["overlays"] and Path(row["film_path"]).parent == ctx.out_dir / "captures"
    saved = load_film(row["film_path"])  # read back through the scan path: the film without the lightbox
    assert saved.ndim == 2 and abs(saved.shape[1] - WIDTH) <= 4
    err = capsys.readouterr().err
    assert "rejected: too dark" in err and "rejected: blurred" in err


def test_key_session_retake_keep_quit(film, tmp_path):
    answers = iter(["", "r", "", "", "q"])  # capture, retake; capture, keep; then quit
    camera = FakeCamera([photo(film, seed=1), photo(film, seed=2)])
    with Store(tmp_path / "r.sqlite") as store:
        kept, _ = run_session(camera, _ctx(tmp_path, store), timer=None, count=None, ask=lambda prompt: next(answers))
        assert kept == 1 and store.count() == 1
    assert camera.grabbed == 2


def test_main_with_fake_camera(film, tmp_path, monkeypatch, capsys):
    install_fakes(monkeypatch)
    monkeypatch.setattr(edge.capture, "CamExplainer", lambda bundle, head=None: FakeExplainer())
    camera = FakeCamera([photo(film, seed=3), photo(film, seed=4)])
    monkeypatch.setattr(edge.capture, "open_camera", lambda index, preview: camera)
    out = tmp_path / "out"
    assert main(["--bundle", str(tmp_path), "--out", str(out), "--timer", "0", "--count", "2"]) == 0
    assert camera.closed
    with Store(out / "results.sqlite") as store:
        assert store.count() == 2
    assert (out / "report.html").is_file() and len(list((out / "captures").glob("*.png"))) == 2
    assert "This model was trained on phantom films" in capsys.readouterr().err


def test_key_mode_reads_stdin(film, tmp_path, monkeypatch):
    install_fakes(monkeypatch)
    monkeypatch.setattr(edge.capture, "CamExplainer", lambda bundle, head=None: FakeExplainer())
    monkeypatch.setattr(edge.capture, "open_camera", lambda index, preview: FakeCamera([photo(film)]))
    answers = iter(["", ""])

    def fake_input(prompt: str = "") -> str:
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)
    out = tmp_path / "out"
    assert main(["--bundle", str(tmp_path), "--out", str(out), "--key"]) == 0
    with Store(out / "results.sqlite") as store:
        assert store.count() == 1


def test_missing_picamera2_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    assert main(["--bundle", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"edge.capture: error: {INSTALL_PICAMERA2}\n"
    assert not (tmp_path / "out").exists()


def test_a_film_the_guard_refuses_asks_for_a_retake(film, tmp_path, capsys):
    """The same guard as the scan: refused, not kept, no findings, and the photographer is asked to retake."""
    from edge.novelty import Guard

    c = 4  # FakeModel's feature channels
    never = Guard(mean=np.full(c, 9.0, np.float32), components=np.zeros((0, c), np.float32),
                  variances=np.zeros(0), residual_variance=1e-4, threshold=1.0)
    camera = FakeCamera([photo(film), photo(film, seed=1)])
    with Store(tmp_path / "r.sqlite") as store:
        ctx = _ctx(tmp_path, store)
        ctx.guard = never
        answers = iter(["", "", "q"])  # capture, keep; refused: asked again, quit
        kept, failed = run_session(camera, ctx, timer=None, count=1, ask=lambda prompt: next(answers))
        rows = list(store.rows())
    assert (kept, failed) == (0, 0) and rows[0]["guard"] == "refused" and rows[0]["flagged"] == []
    err = capsys.readouterr().err
    assert "not recognised as a chest film like the training films" in err and "Retake" in err
