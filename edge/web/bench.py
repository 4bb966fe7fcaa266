"""``python -m edge.web.bench [--bundle DIR]`` (part of ``make bench``): how fast and how lean the app is.

Measured with the real server (``python -m edge.serve`` in a child process, waitress on 127.0.0.1) and the
bundle's int8 model, on distinct 1024² PNG films made from the demo's phantom films (edge.bench.make_films):

- the server's time from an upload received to its result stored (the ``Server-Timing: score`` header the app
  sends with every upload), median over ``--uploads`` uploads, against the scan's time per film for the same
  films (``python -m edge.scan`` on them, its fixed start-up cost measured on an empty folder and taken out);
  target: at most 1.3× the scan's;
- the server's resident memory (VmRSS) idle after start, and after every 50 uploads up to ``--uploads``; its
  peak (VmHWM); targets: at most 250 MB, and flat (no more than 10 MiB more after the last upload than after
  the first 50: what grows with the number of uploads is the store on disk, not the process);
- the size of a result page (the HTML, without the film and its overlays, which are separate requests);
  target: at most 150 KB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from edge.bench import DEFAULT_BUNDLE, DEFAULT_FILMS, FILM_SIDE, make_films, run_scan
from edge.cli import run_main
from edge.errors import EdgeError
from edge.runtime import usable_cores

__all__ = ["main", "multipart", "rss_mib"]

UPLOADS = 200
RSS_EVERY = 50
_MIB = 2**20


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload of one file."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def scan_ms_per_film(bundle: Path, films: Path, work: Path) -> float:
    """The scan's time per film on ``films`` (edge.bench's scan run, its start-up on an empty folder taken out)."""
    (work / "empty").mkdir()
    threads = usable_cores()  # as the scan's own default
    startup = run_scan(bundle, work / "empty", work / "scan-empty", threads)[0]
    n = len(list(films.iterdir()))
    return (run_scan(bundle, films, work / "scan-out", threads)[0] - startup) * 1000 / n


class Server:
    """``python -m edge.serve`` on a free port of 127.0.0.1, stopped with SIGTERM."""

    def __init__(self, bundle: Path, out: Path, log: Path):
        with log.open("w") as err:  # the server's notes and log, read only if it fails to start
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.serve", "--bundle", str(bundle), "--out",
                                          str(out), "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        first = self.proc.stdout.readline()
        found = re.search(r"Serving on (http://127\.0\.0\.1:\d+/)", first)
        if not found:
            self.stop()
            raise EdgeError(f"edge.serve did not start: {first.strip()} {log.read_text()[-1500:]}")
        self.base = found.group(1)
        self.code = (out / ".access-code").read_text().strip()

    def upload(self, path: Path) -> tuple[int, float, dict]:
        """(HTTP status, server ms from upload received to result stored, JSON answer)."""
        body, ctype = multipart("film", path.name, path.read_bytes())
        req = urllib.request.Request(self.base + "api/results", data=body, method="POST",
                                     headers={"Content-Type": ctype, "X-Access-Code": self.code})
        with urllib.request.urlopen(req, timeout=120) as resp:
            timing = re.search(r"score;dur=([\d.]+)", resp.headers.get("Server-Timing", ""))
            return resp.status, float(timing.group(1)) if timing else float("nan"), json.loads(resp.read())

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base + path, timeout=60) as resp:
            return resp.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def app_figures(bundle: Path, films: Path, work: Path, uploads: int) -> dict[str, float]:
    paths = sorted(films.iterdir())[:uploads]
    server = Server(bundle, work / "app-out", work / "serve.log")
    try:
        server.get("")  # the first page: templates loaded
        time.sleep(1.0)
        fig = {"app_rss_idle_mib": rss_mib(server.proc.pid)[0]}
        server_ms, last = [], None
        for i, path in enumerate(paths, 1):
            status, ms, answer = server.upload(path)
            if status != 201:
                raise EdgeError(f"upload {path.name} answered {status}: {answer}")
            server_ms.append(ms)
            last = answer["result"]["id"]
            if i % RSS_EVERY == 0 or i == len(paths):
                fig[f"app_rss_after_{i}_mib"] = rss_mib(server.proc.pid)[0]
        time.sleep(2.0)  # the exports' background rebuild has run
        rss, peak = rss_mib(server.proc.pid)
        fig.update(app_rss_end_mib=rss, app_rss_peak_mib=peak, app_uploads=len(paths),
                   app_upload_server_ms_median=statistics.median(server_ms),
                   app_upload_server_ms_p90=statistics.quantiles(server_ms, n=10)[-1],
                   app_result_page_kb=len(server.get(f"results/{last}")) / 1000)
    finally:
        server.stop()
    return fig


def targets(fig: dict[str, float]) -> list[tuple[str, float, bool]]:
    """(target, figure, met) for the app's targets (issue 15)."""
    ratio = fig["app_upload_server_ms_median"] / fig["scan_ms_per_film"]
    first = fig.get(f"app_rss_after_{RSS_EVERY}_mib", fig["app_rss_idle_mib"])
    growth = fig["app_rss_end_mib"] - first
    peak_mb = fig["app_rss_peak_mib"] * _MIB / 1e6
    return [("upload -> result <= 1.3x scan per film", ratio, ratio <= 1.3),
            ("app peak memory <= 250 MB", peak_mb, peak_mb <= 250),
            (f"app memory flat (+<= 10 MiB after {RSS_EVERY})", growth, growth <= 10),
            ("result page <= 150 KB", fig["app_result_page_kb"], fig["app_result_page_kb"] <= 150)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.web.bench", description="Benchmark the app (edge.serve).")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help=f"model bundle (default {DEFAULT_BUNDLE})")
    p.add_argument("--films", type=Path, action="append",
                   help="folder of PNG films to build the test films from (default: the demo's phantom films)")
    p.add_argument("--uploads", type=int, default=UPLOADS, help=f"uploads to time (default {UPLOADS})")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p


def _run(args: argparse.Namespace) -> int:
    if not (args.bundle / "bundle.json").is_file():
        raise EdgeError(f"no model bundle at {args.bundle}: run `make demo` first, or pass --bundle DIR")
    folders = args.films or list(DEFAULT_FILMS)
    sources = [p for folder in folders if folder.is_dir() for p in sorted(folder.rglob("*.png"))]
    if not sources:
        raise EdgeError(f"no PNG films in {', '.join(map(str, folders))}: run `make demo` first, or pass --films")
    with tempfile.TemporaryDirectory(prefix="app-bench-") as tmp:
        work = Path(tmp)
        make_films(sources, work / "films", args.uploads)
        fig = {"scan_ms_per_film": scan_ms_per_film(args.bundle, work / "films", work)}
        fig.update(app_figures(args.bundle, work / "films", work, args.uploads))
    print(f"edge.web.bench: bundle {args.bundle}, {os.cpu_count()} CPUs, films {FILM_SIDE}², {args.uploads} uploads")
    for name, value in fig.items():
        print(f"  {name:36s} {value:10.2f}")
    for name, value, ok in targets(fig):
        print(f"  target {name:42s} {'met' if ok else 'NOT met'} ({value:.2f})")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("edge.web.bench", lambda: _parser().parse_args(argv), _run)


if __name__ == "__main__":
    sys.exit(main())
