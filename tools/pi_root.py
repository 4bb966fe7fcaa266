"""The emulated Raspberry Pi root for ``make pi-check`` (tools/pi_check.py): built, cached, mounted, undone.

A Debian 12 (bookworm) arm64 minbase root made by debootstrap, with the host's CA certificates and an empty
venv, cached under ``.cache/pi-root/<recipe hash>``; qemu-aarch64 registered through binfmt_misc (from the file
qemu-user-static installs) and /proc and /sys mounted in a throwaway copy, each undone by its context manager;
commands run in the root through ``chroot`` in a clean environment, each in a process group of its own so that
stopping one ends everything it started.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CACHE", "IN_ROOT", "QEMU_CONF", "RECIPE", "ROOT_DIR", "STEP_TIMEOUT", "CheckError", "Timer", "base_root",
           "binfmt_aarch64", "copy_root", "end_process", "in_root", "install_wheel", "kernel_filesystems",
           "remove_tree", "run", "throwaway", "unmount_all", "wait_for"]

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
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IN_ROOT = Path("/opt/pi-check")  # inside the emulated root: venv, films, bundle, results
STEP_TIMEOUT = {"debootstrap": 1800, "pip": 1200, "scan": 2400, "serve": 600}


class CheckError(Exception):
    """Cannot run the check (exit 2), said in one line."""


# ---------------------------------------------------------------- commands

def wait_for(proc: subprocess.Popen, args: list[str], timeout: float) -> int:
    """The exit status; a command past its time limit, or one running when we are stopped, is ended first."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_process(proc)
        raise CheckError(f"`{' '.join(args[-6:])}` took over {timeout:.0f} s; stopped it") from None
    except BaseException:
        end_process(proc)
        raise


def run(cmd: Sequence[str | Path], *, timeout: float, quiet: bool = False) -> None:
    """Run a command; raise CheckError naming it when it fails; kill it (and wait) if we are stopped meanwhile."""
    args = [str(c) for c in cmd]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL if quiet else None, start_new_session=True)
    wait_for(proc, args, timeout)
    if proc.returncode != 0:
        raise CheckError(f"`{' '.join(args[:6])}{' ...' if len(args) > 6 else ''}` failed (exit {proc.returncode})")


def end_process(proc: subprocess.Popen) -> None:
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
    """Each step's seconds, announced as it starts and ends with ``prefix`` (the check's name)."""

    def __init__(self, prefix: str = "pi-check") -> None:
        self.prefix, self.steps = prefix, {}

    @contextmanager
    def step(self, name: str, what: str = "") -> Iterator[None]:
        print(f"{self.prefix}: {name}{f' ({what})' if what else ''} ...", flush=True)
        start = time.monotonic()
        yield
        self.steps[name] = time.monotonic() - start
        print(f"{self.prefix}: {name}: {self.steps[name]:.0f} s", flush=True)

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
    remove_tree(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path) -> None:
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
    remove_tree(tmp)
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
    remove_tree(final)
    tmp.rename(final)
    for old in (CACHE / "pi-root").iterdir():  # earlier recipes' roots (hundreds of MB each)
        if old != final:
            remove_tree(old)
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
