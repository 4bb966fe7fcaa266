"""``python -m edge.serve --bundle DIR --out DIR [--host 127.0.0.1] [--port 8080]``: the app, offline on the Pi.

A phone on the clinic's Wi-Fi or LAN uploads or photographs a film and sees its findings, heatmaps and
past results; the pages and a JSON API (README, "The app") are served by waitress, a production WSGI
server (pure Python), never Flask's development server. Everything it shows is in ``--out``, the same
results folder as edge.scan and edge.capture (one store, one set of overlays and exports).

Listens on 127.0.0.1 unless told otherwise; on any other address every page asks for the access code,
made at first start in ``OUT/.access-code`` (0600) and printed with the URL.

Exit status: 0 stopped with Ctrl-C or SIGTERM (every stored result kept), 2 usage / bundle / folder error.
"""

from __future__ import annotations

# isort: off
import edge._blas  # noqa: F401 - first, before numpy loads: one OpenBLAS thread
# isort: on

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from edge.cli import positive, run_main
from edge.explain import CamExplainer
from edge.report import DEMO_DISCLAIMER
from edge.runtime import DEVICES
from edge.store import DB_NAME, Store

__all__ = ["build_app", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.serve",
                                description="Serve the app: upload or photograph a chest film on a phone, see its "
                                            "findings, heatmaps and past results. Offline.")
    p.add_argument("--bundle", required=True, help="model bundle folder (made by python -m convert)")
    p.add_argument("--out", required=True, help="results folder, shared with edge.scan and edge.capture")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network, "
                        "with the access code)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--max-upload-mb", type=positive, default=100, help="largest upload accepted (default 100 MB)")
    p.add_argument("--no-keep-uploads", action="store_true",
                   help="do not keep uploaded films in OUT/uploads (their results, heatmaps and exports are kept)")
    p.add_argument("--threads", type=positive, default=8, help="server threads (inference runs one film at a time)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--camera", choices=("auto", "off", "on"), default="auto",
                   help="Pi camera capture from the page: auto (when picamera2 finds a camera), on (a missing "
                        "camera is an error), off")
    p.add_argument("--camera-index", type=int, default=0)
    return p


def open_page_camera(mode: str, index: int) -> Any:
    """The Pi camera for the pages, or None: ``auto`` quietly goes without one (not a Pi, no camera module)."""
    if mode == "off":
        return None
    from edge.capture import open_camera
    from edge.errors import RuntimeMissingError

    try:
        return open_camera(index, preview=False)
    except RuntimeMissingError:
        if mode == "on":
            raise
        return None


def build_app(args: argparse.Namespace) -> tuple[Any, str, bool]:
    """(the WSGI app, the access code, whether it is required) for parsed arguments; opens the model."""
    from edge import runtime
    from edge.novelty import load_guard
    from edge.screen import guard_notes
    from edge.web import create_app
    from edge.web.engine import Engine
    from edge.web.security import access_code, is_loopback

    model = runtime.open_model(args.bundle, device=args.device)  # verified before anything is served
    guard = load_guard(model.bundle)  # the scan's own refusal of unfamiliar films (None: the bundle has none)
    for note in [*model.notes, *guard_notes(guard)]:
        print(f"note: {note}", file=sys.stderr)
    out = Path(args.out)
    code = access_code(out)
    with Store(out / DB_NAME) as store:  # the folder is writable and its database opens: said now, not at an upload
        stored = store.count()
    engine = Engine(model, CamExplainer(model.bundle, getattr(model, "head", None)), out,
                    keep_uploads=not args.no_keep_uploads, guard=guard,
                    camera=open_page_camera(getattr(args, "camera", "off"), getattr(args, "camera_index", 0)))
    if stored:
        engine.exports_due()  # results stored after the exports last ran (a kill, a full disk) reach them
    require = not is_loopback(args.host)
    return create_app(engine, code=code, require_code=require, max_mb=args.max_upload_mb), code, require


def _url(host: str, port: int) -> str:
    shown = "THIS-MACHINE'S-ADDRESS" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _run(args: argparse.Namespace) -> int:
    from waitress import create_server

    app, code, require = build_app(args)
    # waitress buffers a body before the app sees it: it cuts off only absurd ones (its own plain 413); the app
    # refuses anything over --max-upload-mb with its page (Flask's MAX_CONTENT_LENGTH, from the Content-Length).
    server = create_server(app, host=args.host, port=args.port, threads=args.threads,
                           max_request_body_size=(2 * args.max_upload_mb + 1) * 2**20,
                           clear_untrusted_proxy_headers=True)
    port = server.effective_port
    print(f"Serving on {_url(args.host, port)}  (results: {args.out}; stop with Ctrl-C)", flush=True)
    if require:
        print(f"Access code: {code}  (also in {Path(args.out) / '.access-code'}, readable by you only)", flush=True)
    else:
        print("Only this machine can open it; for phones on the network: --host 0.0.0.0.", flush=True)
    if app.extensions["xray"]["engine"].bundle.is_demo:
        print(f"*** {DEMO_DISCLAIMER} ***", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: as Ctrl-C
    engine = app.extensions["xray"]["engine"]
    if engine.camera is not None:
        print(f"Pi camera: photograph films from the page ({_url(args.host, port)}camera)", flush=True)
    try:
        server.run()  # until Ctrl-C or SIGTERM (waitress ends its loop); a film being stored is whole or absent
    finally:
        engine.flush_exports()  # the last uploads reach results.csv and report.html
        getattr(engine.camera, "close", lambda: None)()
    print("edge.serve: stopped; every stored result is kept", file=sys.stderr, flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    return run_main("edge.serve", lambda: _parser().parse_args(argv), _run, "stopped; every stored result is kept",
                    _check)


def _check(args: argparse.Namespace) -> str | None:
    return None if 0 <= args.port <= 65535 else f"--port must be 0 to 65535, got {args.port}"


if __name__ == "__main__":
    sys.exit(main())
