"""The outputs people read, all rebuilt from the database: results.csv, results.jsonl and

report.html: one self-contained page a clinician can open offline, key findings first.

No external assets and no script: a Content-Security-Policy forbids both, and every film name,
label and message goes through ``html.escape`` (a film called ``<script>…</script>.png`` stays
text). Overlays are linked relatively (``overlays/…png``), so the folder can be copied whole.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edge.exports import export_csv, export_jsonl
from edge.fsio import atomic_write_text, output_error
from edge.progress import printable
from edge.screen import ALLOWED, NOT_RECOGNISED, REFUSED, guard_notes
from edge.store import DB_NAME, OVERLAYS, Store

__all__ = ["DEMO_DISCLAIMER", "export_all", "held_out_auroc", "prune_overlays", "render_report",
           "summary_text", "write_report"]

DEMO_DISCLAIMER = "This model was trained on phantom films: for demonstration only, not for diagnosis."

_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#111;max-width:78em}
table{border-collapse:collapse;width:100%;margin-bottom:2em}td,th{border-bottom:1px solid #ccc;padding:.4em;
text-align:left;vertical-align:top}th{background:#f2f2f2}.demo{background:#b00020;color:#fff;padding:1em;
font-size:1.2em;font-weight:bold}.flag{color:#b00020;font-weight:bold}.path{color:#666;font-size:.85em;
word-break:break-all}img{width:180px;border:1px solid #999;margin:0 .3em .3em 0}.note{color:#444;font-size:.9em}"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def held_out_auroc(spec: dict) -> tuple[str, float] | None:
    """("test" | "validation", macro AUROC) from the bundle's training metrics: test films first."""
    metrics = spec.get("provenance", {}).get("training_metrics") or {}
    for key, name in (("test", "test"), ("val", "validation")):
        value = (metrics.get(key) or {}).get("macro_auroc")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return name, float(value)
    return None


def _auroc_text(spec: dict) -> str:
    found = held_out_auroc(spec)
    return f"macro AUROC {found[1]:.3f} on held-out {found[0]} films" if found else ""


def _name(row: dict) -> str:
    path = row["film_path"]
    return f"<b>{_e(Path(path).name or path)}</b><div class=path>{_e(path)}</div>"


def _ratio(row: dict, thresholds: dict[str, float]) -> float:
    """How far the strongest finding is above its threshold: orders the flagged films."""
    return max((row["scores"][lb] / max(thresholds.get(lb, 1.0), 1e-6) for lb in row["flagged"]), default=0.0)


def _findings(row: dict, thresholds: dict[str, float]) -> str:
    marked = _unrecognised_mark(row)
    items = [f"<span class=flag>{_e(lb)}</span> {row['scores'][lb]:.2f} "
             f"<span class=note>(threshold {thresholds.get(lb, float('nan')):.2f})</span>" for lb in row["flagged"]]
    return marked + ("<br>".join(items) or "none over threshold")


def _unrecognised_mark(row: dict) -> str:
    """A film the guard did not recognise but scored as asked (--allow-unrecognised) says so above its scores."""
    if row.get("guard") != ALLOWED:
        return ""
    return f"<div class=flag>Scored anyway, as asked; not a finding to trust: {_e(row.get('refusal'))}</div>"


def _refused_section(rows: list[dict]) -> list[str]:
    """Films refused as unlike the training films: why, and their scores kept for audit (not findings)."""
    if not rows:
        return []
    head = (f"<h2>Not recognised as a chest film like the training films: {len(rows)} file(s)</h2><p class=note>"
            "No findings are given for these: the model was not made for such pictures. Their scores, where the "
            "model ran, are kept in results.csv for audit only.</p>")
    body = [f"<tr><td>{_name(r)}</td><td>{_e(r.get('refusal'))}</td><td>"
            f"{'' if r.get('novelty') is None else _e(r['novelty'])}</td></tr>" for r in rows]
    return [head, _table(("File", "Why", "Novelty"), body)]


def _heatmaps(row: dict) -> str:
    cells = []
    for cam in row["cam"]:
        caption = f"{_e(cam['label'])}: peak at x={_e(cam['x'])}, y={_e(cam['y'])}"
        peaks = cam.get("peaks")
        more = [p for p in peaks[1:] if isinstance(p, list | tuple) and len(p) == 2] if isinstance(peaks, list) else []
        if more:
            caption += "; also " + ", ".join(f"x={_e(x)}, y={_e(y)}" for x, y in more)
        if cam.get("overlay"):
            href = _e(quote(cam["overlay"]))
            cells.append(f"<a href=\"{href}\"><img src=\"{href}\" alt=\"{caption}\" title=\"{caption}\" "
                         f"loading=lazy></a>")
        else:
            cells.append(f"<div class=note>{caption}</div>")
    return "".join(cells)


def _top(row: dict, n: int = 3) -> str:
    best = sorted(row["scores"].items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{_e(lb)} {s:.2f}" for lb, s in best)


def _table(headers: tuple[str, ...], rows: list[str]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _sections(rows: list[dict], thresholds: dict[str, float]) -> list[str]:
    refused = [r for r in rows if r.get("guard") == REFUSED]  # guard hook: their own section, never findings
    rows = [r for r in rows if r.get("guard") != REFUSED]
    flagged = sorted((r for r in rows if r["status"] == "ok" and r["flagged"]), key=lambda r: -_ratio(r, thresholds))
    clear = [r for r in rows if r["status"] == "ok" and not r["flagged"]]
    failed = [r for r in rows if r["status"] != "ok"]
    out = [f"<h2>Findings over threshold: {len(flagged)} film(s)</h2>"]
    out.append(_table(("Film", "Findings (score, threshold)", "Where the model looked"),
                      [f"<tr><td>{_name(r)}</td><td>{_findings(r, thresholds)}</td><td>{_heatmaps(r)}</td></tr>"
                       for r in flagged]) if flagged else "<p>None.</p>")
    out.append(f"<h2>No finding over threshold: {len(clear)} film(s)</h2>")
    out.append(_table(("Film", "Highest scores", "Where the model looked"),
                      [f"<tr><td>{_name(r)}</td><td>{_top(r)}</td><td>{_heatmaps(r)}</td></tr>" for r in clear])
               if clear else "<p>None.</p>")
    if failed:
        out.append(f"<h2>Could not be read: {len(failed)} file(s)</h2>")
        out.append(_table(("File", "Problem"), [f"<tr><td>{_name(r)}</td><td>{_e(r['error'])}</td></tr>"
                                                for r in failed]))
    return out + _refused_section(refused)


def _model_lines(bundle: Any, other_models: int) -> list[str]:
    auroc = _auroc_text(bundle.spec)
    lines = [f"Model {_e(bundle.sha256[:12])} ({_e(bundle.task)}, {len(bundle.labels)} labels"
             + (f", {_e(auroc)}" if auroc else "") + ")."]
    if other_models:
        lines.append(f"{other_models} result(s) from other models are in results.csv, not on this page.")
    lines.append("Scores are the model's outputs, not probabilities of disease; a finding is flagged when its "
                 "score reaches the threshold chosen on validation data. Heatmaps (Grad-CAM) show where the "
                 "model looked, not the extent of a lesion; the circle with a cross marks the hottest spot, "
                 "smaller circles other spots at least half as hot.")
    return [f"<p class=note>{line}</p>" for line in lines]


def render_report(rows: list[dict], bundle: Any, other_models: int = 0) -> str:
    """The HTML page for ``rows`` (store rows of one model) and that model's ``bundle``."""
    thresholds = dict(zip(bundle.labels, bundle.thresholds, strict=True))
    n_ok = sum(r["status"] == "ok" and r.get("guard") != REFUSED for r in rows)
    n_refused = sum(r.get("guard") == REFUSED for r in rows)
    parts = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
             f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">",
             f"<title>Chest film findings</title><style>{_STYLE}</style></head><body>"]
    if bundle.is_demo:
        parts.append(f"<div class=demo role=alert>{_e(DEMO_DISCLAIMER)}</div>")
    parts.append(f"<h1>Chest film findings</h1><p>{n_ok} film(s) scored, {len(rows) - n_ok - n_refused} could not "
                 f"be read" + (f", {n_refused} not recognised as chest films" if n_refused else "") + ".</p>")
    parts.extend(_sections(rows, thresholds))
    parts.extend(_model_lines(bundle, other_models))
    if bundle.is_demo:
        parts.append(f"<div class=demo>{_e(DEMO_DISCLAIMER)}</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | Path, rows: list[dict], bundle: Any, other_models: int = 0) -> Path:
    """Render and write report.html atomically."""
    atomic_write_text(path, render_report(rows, bundle, other_models))
    return Path(path)


def prune_overlays(store: Store, out_dir: Path) -> int:
    """Remove overlay files no stored result names (a kill between overlay and commit); count them."""
    folder = out_dir / OVERLAYS
    if not folder.is_dir():
        return 0
    named = {name for row in store.rows() for name in row["overlays"]}
    removed = 0
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False) and f"{OVERLAYS}/{entry.name}" not in named:
            os.unlink(entry.path)
            removed += 1
    return removed


def export_all(store: Store, out: Path, bundle: Any) -> dict[str, Path]:
    """results.csv, results.jsonl and report.html rebuilt from the database (atomically); stray overlays removed.

    Run on every scan (under the output lock), so after a kill the next run brings them back in line.
    """
    paths = {"csv": out / "results.csv", "jsonl": out / "results.jsonl", "report": out / "report.html"}
    try:
        prune_overlays(store, out)
    except OSError as err:
        raise output_error(out / OVERLAYS, err, "tidy the overlays") from None
    export_csv(store, paths["csv"])
    export_jsonl(store, paths["jsonl"])
    try:
        write_report(paths["report"], list(store.rows(bundle.sha256)), bundle,
                     other_models=store.count() - store.count_model(bundle.sha256))
    except OSError as err:
        raise output_error(paths["report"], err, "write the report") from None
    return paths


# ---------------------------------------------------------------- the scan's summary

def _counts(counter: Counter) -> str:
    return ", ".join(f"{printable(k)} {n}" for k, n in counter.most_common())


def summary_text(summary: Any, model: Any, out_dir: Path, exports: dict[str, Path]) -> str:
    """The end-of-scan summary (edge.scan.Summary of a run with ``model``), one printable line each."""
    failed = sum(summary.errors.values())
    scored = summary.scored + failed
    speed = f"{summary.seconds / scored:.2f} s per film" if scored else "nothing new to score"
    lines = [f"{'Stopped' if summary.stopped else 'Done'}: {summary.total} films in {summary.seconds:.1f} s"
             f" ({speed}), model {model.bundle.sha256[:12]} ({model.kind} on {model.device}, {model.runtime})",
             f"  scored              {summary.scored}",
             f"  already done        {summary.skipped['done']} (skipped)"]
    if summary.skipped["duplicate"]:
        lines.append(f"  duplicate files     {summary.skipped['duplicate']} (same bytes as a film above)")
    lines.append(f"  failed              {failed}" + (f": {_counts(summary.errors)}" if failed else ""))
    if getattr(summary, "refused", 0) or getattr(summary, "allowed", 0):  # guard hook
        lines.append(f"  {NOT_RECOGNISED}: {summary.refused} (of those above; no findings given, report.html "
                     f"says why)")
    if getattr(summary, "allowed", 0):
        lines.append(f"  scored anyway       {summary.allowed} (not recognised, scored as --allow-unrecognised asked)")
    if not summary.total:
        lines.append("  no films found in the folders and files given")
    if summary.not_films:
        passed = sum(summary.not_films.values())
        lines.append(f"  passed over         {passed} in folders: {_counts(summary.not_films)}")
    lines.append(f"Results: {exports['csv']}, {exports['jsonl']}, {exports['report']} "
                 f"(database {out_dir / DB_NAME})")
    if auroc := _auroc_text(model.bundle.spec):
        lines.append(f"Model: {auroc} (from its training metrics)")
    lines.extend(f"Note: {note}" for note in guard_notes(model.bundle.spec.get("novelty")))  # guard hook
    if model.bundle.is_demo:
        lines.append(f"*** {DEMO_DISCLAIMER} ***")
    return "\n".join(printable(line) for line in lines)
