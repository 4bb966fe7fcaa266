"""``make pi-check``: install the wheel as a Raspberry Pi does, in an emulated arm64 root, and score as x86 does.

Steps (each timed): the cached arm64 Debian 12 root (tools/pi_root.py: debootstrap minbase, the host's CA
certificates, an empty venv; rebuilt when its ``RECIPE`` or those certificates change); in a throwaway copy of it
pip installs the wheel and its ``edge`` extra (``-c constraints-pi.txt``, PyPI's aarch64 wheels, a clean
environment: ``env -i``, no host ``PIP_*``); then in emulation (qemu-user-static through binfmt_misc,
``QEMU_CPU``, default cortex-a72 = Pi 4) ``edge.scan`` and ``tools/pi_probe.py`` run on a handful of real films,
phantoms and one colour picture, as they do on x86 (this checkout's venv), and tools.pi_compare holds the two
to its bar; finally ``edge.serve`` starts inside the root on 127.0.0.1 and a result page and its heatmap are
fetched.

Needs root (debootstrap, chroot, mount, binfmt_misc). Whatever it mounts or registers is undone at the end, also
when it fails or is stopped (Ctrl-C, SIGTERM, SIGHUP); the throwaway root is removed only once nothing is
mounted in it. Exit status: 0 the two machines agree, 1 they do not, 2 cannot run (prerequisite, usage).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from tools.pi_compare import SCORE_TOLERANCE, Comparison, compare
from tools.pi_root import (
    CACHE,
    IN_ROOT,
    QEMU_CONF,
    ROOT_DIR,
    STEP_TIMEOUT,
    CheckError,
    Timer,
    base_root,
    binfmt_aarch64,
    copy_root,
    end_process,
    in_root,
    install_wheel,
    kernel_filesystems,
    remove_tree,
    throwaway,
    unmount_all,
    wait_for,
)

PREREQUISITES = {"debootstrap": "debootstrap", "chroot": "coreutils", "qemu-aarch64-static": "qemu-user-static"}
REAL_FILMS = ("nih-images/*.png", 6), ("dicom/*.dcm", 5), ("other-cxr/montgomery-derived/*.png", 1), \
    ("other-cxr/tbx11k/imgs/health/*.png", 1)
PHANTOMS = 3


class Stopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: unwind, undoing every mount and registration on the way."""


def _stop(signum: int, frame: object) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the clean-up that follows runs to its end
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


# ---------------------------------------------------------------- films, scans, the app

def pick_films(data: Path, phantoms: Path | None, dest: Path) -> list[Path]:
    """A handful of real films, a few phantoms and one colour picture (refused by the screen), copied to dest."""
    from PIL import Image

    dest.mkdir(parents=True)
    chosen = [p for pattern, n in REAL_FILMS for p in sorted(data.glob(pattern))[:n]]
    if not chosen:
        raise CheckError(f"no real films in {data} (set XRAY_TEST_DATA)")
    if phantoms is not None:
        chosen += sorted(phantoms.glob("*.png"))[-PHANTOMS:]
    for path in chosen:
        shutil.copy2(path, dest / path.name)
    ramp = Image.linear_gradient("L").resize((320, 240))
    Image.merge("RGB", (ramp, ramp.rotate(90), ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT))).save(
        dest / "colour-picture.png")
    return sorted(dest.iterdir())


def scan_commands(python: str | Path, films: Path, names: list[str], bundle: Path, out: Path, probe_out: Path,
                  probe: Path) -> list[list[str]]:
    """edge.scan of the films folder, then the probe of each film's feature map (paths as the side running sees)."""
    return [[str(python), "-m", "edge.scan", str(films), "--bundle", str(bundle), "--out", str(out), "--quiet"],
            [str(python), str(probe), *(str(films / n) for n in names),
             "--bundle", str(bundle), "--out", str(probe_out)]]


def _scan_ok(cmd: list[str], timeout: float, log: Path) -> None:
    """Run a scan or probe with its output in ``log``; edge.scan's exit 1 (some film failed) is compared, not fatal."""
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        code = wait_for(proc, cmd, timeout)
    if code not in (0, 1):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise CheckError(f"`{' '.join(cmd[-8:])}` failed (exit {code}); the end of {log}:\n" + "\n".join(tail))


def _served_url(proc: subprocess.Popen, timeout: float) -> str:
    """The URL edge.serve prints once it listens (read on a thread, so a silent server cannot hang the check)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line.startswith("Serving on "):
            return line.split()[2]
    raise CheckError(f"edge.serve in the emulated root did not say where it serves within {timeout:.0f} s "
                     f"(exit {proc.poll()})")


def _get(url: str) -> tuple[int, str, bytes]:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never through a proxy
    try:
        with direct.open(url, timeout=300) as r:
            return r.status, r.headers.get_content_type(), r.read()
    except (urllib.error.URLError, OSError) as err:
        raise CheckError(f"{url}: {err}") from None


def serve_check(work: Path, bundle: Path, out: Path, cpu: str, log: Path) -> str:
    """Start edge.serve inside the root on 127.0.0.1 (any free port), fetch a result page and its heatmap, stop it."""
    cmd = in_root(work, IN_ROOT / "venv/bin/python", "-m", "edge.serve", "--bundle", bundle, "--out", out,
                  "--port", "0", cpu=cpu)
    with log.open("w") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, start_new_session=True)
    try:
        base = _served_url(proc, STEP_TIMEOUT["serve"])
        items = json.loads(_get(base + "api/results?show=all")[2])["items"]
        shown = next((i for i in items if i["overlay_urls"]), None)
        if shown is None:
            raise CheckError("edge.serve in the emulated root lists no result with a heatmap")
        status, kind, html = _get(shown["url"])
        name = Path(shown["film_path"]).name
        if status != 200 or name not in html.decode():
            raise CheckError(f"{shown['url']}: status {status}, the film's name {name} not on the page")
        status, kind, image = _get(shown["overlay_urls"][0])
        magic = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG"}.get(kind)  # the scan writes JPEG overlays
        if status != 200 or magic is None or not image.startswith(magic):
            raise CheckError(f"{shown['overlay_urls'][0]}: status {status}, {kind}, not a JPEG or PNG heatmap")
        proc.send_signal(signal.SIGTERM)
        if proc.wait(timeout=120) != 0:
            raise CheckError(f"edge.serve did not stop cleanly on SIGTERM (exit {proc.returncode})")
        return f"{shown['url']} ({name}: page {len(html)} bytes, heatmap {len(image)} bytes, {kind})"
    finally:
        end_process(proc)


# ---------------------------------------------------------------- the check

def suite_bundle() -> Path:
    """The newest bundle the test suite finished making (.cache/test-artifacts), else the demo's."""
    made = [p / "bundle" for p in (CACHE / "test-artifacts").glob("bundle-*") if (p / ".complete").is_file()]
    made.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return made[0] if made else ROOT_DIR / "demo-out/bundle"


def _bundle(given: str | None) -> Path:
    bundle = Path(given) if given else suite_bundle()
    if not (bundle / "bundle.json").is_file():
        raise CheckError(f"no model bundle at {bundle}: run `make test` (or `make demo`) first, or pass BUNDLE=DIR")
    return bundle


def _phantoms() -> Path | None:
    sets = sorted((CACHE / "test-artifacts").glob("phantoms-*/images"), key=lambda p: p.stat().st_mtime)
    return sets[-1] if sets else None


def _preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise CheckError("make pi-check needs root (debootstrap, chroot, mount, binfmt_misc): run it as root, "
                         "e.g. `sudo make pi-check`")
    missing = sorted({pkg for tool, pkg in PREREQUISITES.items() if shutil.which(tool) is None}
                     | ({"qemu-user-static"} if not QEMU_CONF.is_file() else set()))
    if missing:
        raise CheckError(f"missing {', '.join(missing)}: apt-get install -y {' '.join(missing)}")
    for path in (args.wheel, args.constraints):
        if not path.is_file():
            raise CheckError(f"{path}: not found (make dist makes it)")


def check(args: argparse.Namespace) -> int:
    _preflight(args)
    timer, bundle, start = Timer(), _bundle(args.bundle), time.monotonic()
    data = Path(args.data or os.environ.get("XRAY_TEST_DATA") or ROOT_DIR.parent / "shared/data")
    last = CACHE / "pi-check"
    unmount_all(CACHE)  # left by a run that could not clean up (kill -9, power cut)
    remove_tree(last / "root")
    for stale in ("x86", "films", "arm64"):
        remove_tree(last / stale)
    for stale in ("x86.log", "arm64.log", "serve.log", "x86-probe.npz", "arm64-probe.npz", "summary.txt"):
        (last / stale).unlink(missing_ok=True)
    with ExitStack() as stack:
        stack.enter_context(binfmt_aarch64())
        base = base_root(timer, args.cpu)
        work = stack.enter_context(throwaway(last / "root"))
        with timer.step("root copy", "a throwaway copy of the cached root"):
            copy_root(base, work)
        stack.enter_context(kernel_filesystems(work))
        with timer.step("pip install", "the wheel + edge extra from PyPI's aarch64 wheels, emulated"):
            wheels = install_wheel(work, args.wheel, args.constraints, args.cpu)
        films = pick_films(data, _phantoms(), last / "films")
        names = [f.name for f in films]
        inside = work / IN_ROOT.relative_to("/")
        shutil.copytree(last / "films", inside / "films")
        shutil.copytree(bundle, inside / "bundle")
        shutil.copy2(ROOT_DIR / "tools/pi_probe.py", inside / "pi_probe.py")
        with timer.step("x86 scan", f"{len(films)} films, edge.scan + feature maps"):
            for cmd in scan_commands(sys.executable, inside / "films", names, inside / "bundle", last / "x86",
                                     last / "x86-probe.npz", ROOT_DIR / "tools/pi_probe.py"):
                _scan_ok(cmd, STEP_TIMEOUT["scan"], last / "x86.log")
        with timer.step("emulated scan", f"{args.cpu}, {len(films)} films, edge.scan + feature maps"):
            for cmd in scan_commands(IN_ROOT / "venv/bin/python", IN_ROOT / "films", names, IN_ROOT / "bundle",
                                     IN_ROOT / "results", IN_ROOT / "probe.npz", IN_ROOT / "pi_probe.py"):
                _scan_ok(in_root(work, *cmd, cpu=args.cpu), STEP_TIMEOUT["scan"], last / "arm64.log")
        shutil.copytree(inside / "results", last / "arm64")  # kept for a look after the throwaway root is gone
        shutil.copy2(inside / "probe.npz", last / "arm64-probe.npz")
        result = compare(last / "x86", last / "arm64", last / "x86-probe.npz", last / "arm64-probe.npz")
        with timer.step("serve check", "edge.serve inside the root, a result page and its heatmap"):
            served = serve_check(work, IN_ROOT / "bundle", IN_ROOT / "results", args.cpu, last / "serve.log")
    text = summary(result, wheels, served, timer, time.monotonic() - start, bundle, args.cpu)
    (last / "summary.txt").write_text(text + "\n")
    print(text)
    return 0 if result.ok else 1


def summary(result: Comparison, wheels: list[str], served: str, timer: Timer, total: float, bundle: Path,
            cpu: str) -> str:
    lines = [f"pi-check: {'PASSED' if result.ok else 'FAILED'} (bundle {bundle}, emulated {cpu})",
             f"wheels installed ({len(wheels)}):", *(f"  {w}" for w in wheels),
             f"films compared: {result.films} ({result.refused} refused on both machines)",
             f"max |dscore|: {result.max_dscore:.3g} over the {result.same_input} films decoded identically "
             f"(bar {SCORE_TOLERANCE:g})",
             *(f"  decoded differently: {d.name}: {d.pixels} pixels of its model input by up to {d.max_dpixel} "
               f"grey level(s), max |dscore| {d.max_dscore:.3g} (the decoder's difference, reported)"
               for d in result.decoded_differently),
             f"decisions agreeing: {result.decisions_agreeing}/{result.films}",
             f"feature maps identical: {result.features_exact}/{result.same_input} films decoded identically "
             f"(all {result.png} PNG films must be)",
             f"heatmap peaks: max shift {result.max_peak_shift} px",
             f"result page served in emulation: {served}",
             f"time taken: {total:.0f} s ({timer.text()})"]
    lines += [f"  differs: {p}" for p in result.problems]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.pi_check", description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, required=True, help="the wheel to install (make dist)")
    p.add_argument("--constraints", type=Path, default=ROOT_DIR / "constraints-pi.txt")
    p.add_argument("--bundle", default=None, help="model bundle (default: the newest the test suite made, "
                                                  "else the demo's)")
    p.add_argument("--data", default=None, help="real test data (default $XRAY_TEST_DATA or ../shared/data)")
    p.add_argument("--cpu", default="cortex-a72", help="CPU qemu emulates (cortex-a72: Pi 4; cortex-a76: Pi 5)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    before = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return check(args)
    except CheckError as err:
        print(f"pi-check: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped) as err:
        print(f"pi-check: stopped ({err or 'SIGINT'}); everything it mounted or registered was undone", file=sys.stderr)
        return 130
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
