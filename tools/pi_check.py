"""``make pi-check``: install the wheel as a Raspberry Pi does, in an emulated arm64 root, and score as x86 does.

Steps (each timed): a Debian 12 (bookworm, Raspberry Pi OS's base) arm64 minbase root made by debootstrap, with
the host's CA certificates (pip goes through this network) and an empty venv, cached under
``.cache/pi-root/<recipe hash>`` (rebuilt when ``RECIPE`` or those certificates change); in a throwaway copy of
it pip installs the wheel and its ``edge`` extra (``-c constraints-pi.txt``, PyPI's aarch64 wheels, a clean
environment: ``env -i``, no host ``PIP_*``); then in emulation (qemu-user-static through
binfmt_misc, ``QEMU_CPU``, default cortex-a72 = Pi 4) ``edge.scan`` and ``tools/pi_probe.py`` run on a handful of
real films, phantoms and one colour picture, the same as on x86 (this checkout's venv), and tools.pi_compare
holds the two to its bar; finally ``edge.serve`` starts inside the root on 127.0.0.1 and a result page is fetched.

Needs root (debootstrap, chroot, mount, binfmt_misc). Whatever it mounts or registers is undone at the end, also
when it fails or is stopped (Ctrl-C, SIGTERM, SIGHUP); the throwaway root is removed only once nothing is
mounted in it. Exit status: 0 the two machines agree, 1 they do not, 2 cannot run (prerequisite, usage).
"""

from __future__ import annotations

import argparse
import hashlib
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
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tools.pi_compare import SCORE_TOLERANCE, Comparison, compare

ROOT_DIR = Path(__file__).resolve().parent.parent
CACHE = ROOT_DIR / ".cache"
RECIPE = {  # change anything here and the cached root is rebuilt
    "suite": "bookworm", "arch": "arm64", "variant": "minbase",
    "include": ["python3.11", "python3.11-venv", "python3-distutils", "ca-certificates"],
    "mirror": os.environ.get("PI_MIRROR", "http://deb.debian.org/debian"),
    "version": 2,
}
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # installed by qemu-user-static
BINFMT = Path("/proc/sys/fs/binfmt_misc")
PREREQUISITES = {"debootstrap": "debootstrap", "chroot": "coreutils", "qemu-aarch64-static": "qemu-user-static"}
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IN_ROOT = Path("/opt/pi-check")  # inside the emulated root: venv, films, bundle, results
REAL_FILMS = ("nih-images/*.png", 6), ("dicom/*.dcm", 5), ("other-cxr/montgomery-derived/*.png", 1), \
    ("other-cxr/tbx11k/imgs/health/*.png", 1)
PHANTOMS = 3
STEP_TIMEOUT = {"debootstrap": 1800, "pip": 1200, "scan": 2400, "serve": 600}


class CheckError(Exception):
    """Cannot run the check (exit 2), said in one line."""


class Stopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: unwind, undoing every mount and registration on the way."""


def _stop(signum: int, frame: object) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the clean-up that follows runs to its end
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


# ---------------------------------------------------------------- commands

def _wait(proc: subprocess.Popen, args: list[str], timeout: float) -> int:
    """The exit status; a command past its time limit, or one running when we are stopped, is ended first."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end(proc)
        raise CheckError(f"`{' '.join(args[-6:])}` took over {timeout:.0f} s; stopped it") from None
    except BaseException:
        _end(proc)
        raise


def run(cmd: Sequence[str | Path], *, timeout: float, quiet: bool = False) -> None:
    """Run a command; raise CheckError naming it when it fails; kill it (and wait) if we are stopped meanwhile."""
    args = [str(c) for c in cmd]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL if quiet else None, start_new_session=True)
    _wait(proc, args, timeout)
    if proc.returncode != 0:
        raise CheckError(f"`{' '.join(args[:6])}{' ...' if len(args) > 6 else ''}` failed (exit {proc.returncode})")


def _end(proc: subprocess.Popen) -> None:
    """End a command and everything it started (each runs in a process group of its own)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            if grace is not None:
                time.sleep(0.5)  # its children may take a moment longer than the leader
        except subprocess.TimeoutExpired:
            continue
        return


def in_root(root: Path, *cmd: str | Path, cpu: str) -> list[str]:
    """A command line that runs ``cmd`` inside ``root`` in a clean environment (no host PIP_*, proxies or paths)."""
    return ["env", "-i", f"PATH={CLEAN_PATH}", "HOME=/root", "LANG=C.UTF-8", f"QEMU_CPU={cpu}",
            "chroot", str(root), *map(str, cmd)]


class Timer:
    def __init__(self) -> None:
        self.steps: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, what: str = "") -> Iterator[None]:
        print(f"pi-check: {name}{f' ({what})' if what else ''} ...", flush=True)
        start = time.monotonic()
        yield
        self.steps[name] = time.monotonic() - start
        print(f"pi-check: {name}: {self.steps[name]:.0f} s", flush=True)

    def text(self) -> str:
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.steps.items())


# ---------------------------------------------------------------- mounts and binfmt (each undone on exit)

def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=False)  # busy: detach it now, freed when unused


def unmount_all(path: Path) -> None:
    """Unmount whatever is mounted below ``path`` (deepest first): debootstrap's, or those of a run killed with -9."""
    for target in sorted(_mounts_under(path), reverse=True):
        print(f"pi-check: unmounting {target}", flush=True)
        _umount(Path(target))


@contextmanager
def binfmt_aarch64() -> Iterator[None]:
    """binfmt_misc mounted and qemu-aarch64 registered (from qemu-user-static's file) for the duration."""
    mounted = registered = False
    try:
        if not (BINFMT / "register").exists():
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], timeout=30)
            mounted = True
            print(f"pi-check: mounted {BINFMT}", flush=True)
        entry = BINFMT / "qemu-aarch64"
        if not entry.exists():
            (BINFMT / "register").write_text(QEMU_CONF.read_text().strip() + "\n")
            registered = True
            print(f"pi-check: registered qemu-aarch64 from {QEMU_CONF}", flush=True)
        elif "enabled" not in entry.read_text():
            raise CheckError(f"{entry} is registered but disabled: enable it (echo 1 > {entry}) and run again")
        yield
    finally:
        if registered and (BINFMT / "qemu-aarch64").exists():
            (BINFMT / "qemu-aarch64").write_text("-1\n")
            print("pi-check: unregistered qemu-aarch64", flush=True)
        if mounted and _mounted(BINFMT):
            _umount(BINFMT)
            print(f"pi-check: unmounted {BINFMT}", flush=True)


@contextmanager
def kernel_filesystems(root: Path) -> Iterator[None]:
    """/proc and /sys (read-only) in the root: TFLite's cpuinfo reads the processor lists in /sys, as on a Pi."""
    done: list[Path] = []
    try:
        for fstype, options in (("proc", "rw"), ("sysfs", "ro")):
            target = root / ("proc" if fstype == "proc" else "sys")
            run(["mount", "-t", fstype, "-o", options, fstype, target], timeout=30)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            _umount(target)


@contextmanager
def throwaway(path: Path) -> Iterator[Path]:
    """A fresh folder removed at the end, but never while anything is still mounted below it."""
    _remove(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    if not path.exists():
        return
    left = _mounts_under(path)
    if left:
        raise CheckError(f"not removing {path}: still mounted there: {', '.join(left)} (umount them first)")
    shutil.rmtree(path)


# ---------------------------------------------------------------- the cached root

def _host_cas() -> list[Path]:
    """The host's own CA certificates (this network's, beside Debian's): pip in the root needs them too."""
    return sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []


def recipe() -> dict:
    """RECIPE plus the host's CA certificates (a new one rebuilds the root)."""
    return {**RECIPE, "host_cas": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in _host_cas()}}


def recipe_key() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def base_root(timer: Timer, cpu: str) -> Path:
    """The cached root for recipe(), built (into a temporary folder, then renamed) when missing: debootstrap, then
    in emulation update-ca-certificates (the host's CAs copied in) and the venv the wheel goes into."""
    final = CACHE / "pi-root" / recipe_key()
    if (final / ".complete").is_file():
        print(f"pi-check: reusing the cached arm64 root {final.relative_to(ROOT_DIR)} (recipe unchanged)", flush=True)
        timer.steps["debootstrap + venv (cached root reused)"] = 0.0
        return final / "root"
    tmp = final.with_name(final.name + ".tmp")
    _remove(tmp)
    tmp.mkdir(parents=True)
    root = tmp / "root"
    with timer.step("debootstrap", "arm64 bookworm minbase, once per recipe"):
        try:
            run(["debootstrap", f"--arch={RECIPE['arch']}", f"--variant={RECIPE['variant']}",
                 f"--include={','.join(RECIPE['include'])}", RECIPE["suite"], root, RECIPE["mirror"]],
                timeout=STEP_TIMEOUT["debootstrap"], quiet=True)
        finally:
            unmount_all(tmp)  # debootstrap mounts /proc and /sys in the root to configure it; stopped, it leaves them
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):  # downloaded packages: not needed again
            deb.unlink()
    with timer.step("venv", "update-ca-certificates and python3.11 -m venv, emulated, once per recipe"):
        for crt in _host_cas():
            shutil.copy2(crt, root / "usr/local/share/ca-certificates" / crt.name)
        with kernel_filesystems(root):
            run(in_root(root, "update-ca-certificates", cpu=cpu), timeout=600, quiet=True)
            run(in_root(root, "python3.11", "-m", "venv", IN_ROOT / "venv", cpu=cpu), timeout=600)
    (tmp / "recipe.json").write_text(json.dumps(recipe(), indent=1) + "\n")
    (tmp / ".complete").write_text("ok\n")
    _remove(final)
    tmp.rename(final)
    for old in (CACHE / "pi-root").iterdir():  # earlier recipes' roots (hundreds of MB each)
        if old != final:
            _remove(old)
    return final / "root"


def copy_root(base: Path, work: Path) -> None:
    """A throwaway copy of the cached root, with the host's resolver (pip goes through this network)."""
    run(["cp", "-a", f"{base}/.", work], timeout=600)
    shutil.copy2("/etc/resolv.conf", work / "etc/resolv.conf")


def install_wheel(work: Path, wheel: Path, constraints: Path, cpu: str) -> list[str]:
    """The wheel with its edge extra, pinned by constraints-pi.txt; the names of the wheels pip installed."""
    dest = work / IN_ROOT.relative_to("/")  # made with the venv in the cached root
    shutil.copy2(wheel, dest / wheel.name)
    shutil.copy2(constraints, dest / "constraints-pi.txt")
    venv = IN_ROOT / "venv"
    run(in_root(work, venv / "bin/pip", "install", "--quiet", "--no-cache-dir", "--only-binary=:all:",
                "--report", IN_ROOT / "pip-report.json", "-c", IN_ROOT / "constraints-pi.txt",
                f"{IN_ROOT / wheel.name}[edge]", cpu=cpu), timeout=STEP_TIMEOUT["pip"])
    report = json.loads((dest / "pip-report.json").read_text())
    return sorted(Path(item["download_info"]["url"]).name for item in report["install"])


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
        code = _wait(proc, cmd, timeout)
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
        status, kind, png = _get(shown["overlay_urls"][0])
        if status != 200 or kind != "image/png" or not png.startswith(b"\x89PNG"):
            raise CheckError(f"{shown['overlay_urls'][0]}: status {status}, {kind}, not a PNG heatmap")
        proc.send_signal(signal.SIGTERM)
        if proc.wait(timeout=120) != 0:
            raise CheckError(f"edge.serve did not stop cleanly on SIGTERM (exit {proc.returncode})")
        return f"{shown['url']} ({name}: page {len(html)} bytes, heatmap {len(png)} bytes)"
    finally:
        _end(proc)


# ---------------------------------------------------------------- the check

def _bundle(given: str | None) -> Path:
    if given:
        bundle = Path(given)
    else:
        made = [p / "bundle" for p in (CACHE / "test-artifacts").glob("bundle-*") if (p / ".complete").is_file()]
        demo = ROOT_DIR / "demo-out/bundle"
        made.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        bundle = made[0] if made else demo
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
    _remove(last / "root")
    for stale in ("x86", "films", "arm64"):
        _remove(last / stale)
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
