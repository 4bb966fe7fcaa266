"""The outputs people read, all rebuilt from the database: results.csv, results.jsonl and

report.html: one self-contained page a clinician can open offline, on a phone too, key findings first.

The page goes through the app's own Jinja2 templates (edge.templating: autoescape on, the app's stylesheet
inline, the score line and refusal shown by the same macros as the app's result page). No external assets
and no script: a Content-Security-Policy forbids both, and every film name, label and message is escaped
(a film called ``<script>…</script>.png`` stays text). Overlays are linked relatively (``overlays/…``),
so the folder can be copied whole.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from edge.exports import export_csv, export_jsonl
from edge.fsio import atomic_write_text, output_error
from edge.present import DEMO_DISCLAIMER, cam_caption, held_out_auroc, refusal, score_lines, threshold_note
from edge.progress import printable
from edge.screen import ALLOWED, NOT_RECOGNISED, REFUSED, guard_notes
from edge.store import DB_NAME, OVERLAYS, Store
from edge.templating import render, stylesheet

__all__ = ["DEMO_DISCLAIMER", "export_all", "held_out_auroc", "prune_overlays", "render_report",
           "summary_text", "write_report"]


def _auroc_text(spec: dict) -> str:
    found = held_out_auroc(spec)
    return f"macro AUROC {found[1]:.3f} on held-out {found[0]} films" if found else ""


def _ratio(row: dict, thresholds: dict[str, float]) -> float:
    """How far the strongest finding is above its threshold: orders the flagged films."""
    return max((row["scores"][lb] / max(thresholds.get(lb, 1.0), 1e-6) for lb in row["flagged"]), default=0.0)


def _film(row: dict, bundle: Any) -> dict[str, Any]:
    """One film as the report shows it: names, score lines, heatmaps with captions, and why it failed or
    was refused. A film the guard did not recognise but scored as asked (--allow-unrecognised) says so."""
    path = str(row["film_path"])
    return {"name": Path(path).name or path, "path": path, "error": row.get("error"),
            "lines": score_lines(row, bundle, same_model=True) if row["status"] == "ok" else [],
            "cams": [{"overlay": cam.get("overlay"), "caption": cam_caption(cam)} for cam in row.get("cam") or []],
            "refusal": refusal(row), "novelty": row.get("novelty"),
            "allowed": row.get("refusal") or NOT_RECOGNISED if row.get("guard") == ALLOWED else None}


def render_report(rows: list[dict], bundle: Any, other_models: int = 0) -> str:
    """The HTML page for ``rows`` (store rows of one model) and that model's ``bundle``."""
    thresholds = dict(zip(bundle.labels, bundle.thresholds, strict=True))
    refused = [r for r in rows if r.get("guard") == REFUSED]  # their own section, never findings
    kept = [r for r in rows if r.get("guard") != REFUSED]
    flagged = sorted((r for r in kept if r["status"] == "ok" and r["flagged"]), key=lambda r: -_ratio(r, thresholds))
    clear = [r for r in kept if r["status"] == "ok" and not r["flagged"]]
    failed = [r for r in kept if r["status"] != "ok"]
    cards = {name: [_film(r, bundle) for r in group]
             for name, group in (("flagged", flagged), ("clear", clear), ("failed", failed), ("refused", refused))}
    model = {"sha": bundle.sha256[:12], "task": bundle.task, "labels": len(bundle.labels),
             "auroc": _auroc_text(bundle.spec), "thresholds": threshold_note(bundle.spec)}
    return render("report.html", style=stylesheet(), demo=bundle.is_demo, disclaimer=DEMO_DISCLAIMER,
                  n_ok=len(flagged) + len(clear), n_failed=len(failed), n_refused=len(refused),
                  other_models=other_models, model=model, **cards)


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
    if note := threshold_note(model.bundle.spec):
        lines.append(f"Note: {note}")
    if model.bundle.is_demo:
        lines.append(f"*** {DEMO_DISCLAIMER} ***")
    return "\n".join(printable(line) for line in lines)
