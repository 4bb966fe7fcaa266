"""Stored results as people read them (the app's pages and report.html): plain words, scores against
thresholds, flagged first, refusals.

Pure functions of a store row (edge.store, with ``id``) and the app's bundle. A film the
out-of-distribution guard or the screen refused has ``guard`` "refused" and its reason in ``refusal``
(edge.screen); rows stored before the guard have neither and show as scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from edge.screen import NOT_RECOGNISED, REFUSED

__all__ = ["DEMO_DISCLAIMER", "PLAIN", "UPLOAD_PREFIX", "ScoreLine", "api_row", "cam_caption", "held_out_auroc",
           "model_facts", "name_of", "refusal", "score_lines", "source_of", "threshold_note", "verdict"]

DEMO_DISCLAIMER = "This model was trained on phantom films: for demonstration only, not for diagnosis."

UPLOAD_PREFIX = "upload/"  # film_path of an uploaded film: upload/<the name it was sent with>

PLAIN = {
    "Atelectasis": "part of a lung collapsed or not filled with air",
    "Cardiomegaly": "enlarged heart",
    "Effusion": "fluid around the lung (pleural effusion)",
    "Infiltration": "something filling the lung tissue",
    "Mass": "a lump larger than 3 cm",
    "Nodule": "a small round spot",
    "Pneumonia": "lung infection",
    "Pneumothorax": "air around the lung (collapsed lung)",
    "Consolidation": "lung tissue filled with fluid or pus",
    "Edema": "fluid in the lungs (oedema)",
    "Emphysema": "damaged, over-inflated air sacs",
    "Fibrosis": "scarring of the lung",
    "Pleural_Thickening": "thickened lining of the lung",
    "Hernia": "stomach pushing up through the diaphragm (hiatus hernia)",
    "No Finding": "nothing found",
}


@dataclass(frozen=True)
class ScoreLine:
    label: str
    words: str
    score: float
    threshold: float | None
    flagged: bool


def held_out_auroc(spec: dict) -> tuple[str, float] | None:
    """("test" | "validation", macro AUROC) from the bundle's training metrics: test films first."""
    metrics = spec.get("provenance", {}).get("training_metrics") or {}
    for key, name in (("test", "test"), ("val", "validation")):
        value = (metrics.get(key) or {}).get("macro_auroc")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return name, float(value)
    return None


def threshold_note(spec: dict) -> str | None:
    """Why the thresholds should not be trusted as operating points, when the bundle says they were not chosen on
    data (convert.importer's defaults for a published model converted without labelled films); else None."""
    choice = spec.get("threshold_choice") or {}
    if choice.get("chosen_on_user_data", True):
        return None
    return (f"the thresholds ({choice.get('rule', 'defaults')}) were not chosen on films like yours; a flag is only "
            f"a score over that default")


def name_of(row: dict) -> str:
    path = str(row.get("film_path", ""))
    return path[len(UPLOAD_PREFIX):] if path.startswith(UPLOAD_PREFIX) else (PurePosixPath(path).name or path)


def source_of(row: dict) -> str:
    path = str(row.get("film_path", ""))
    if path.startswith(UPLOAD_PREFIX):
        return "upload"
    return "camera" if "/captures/capture-" in path else "scan"


def refusal(row: dict) -> str | None:
    """Why the guard refused this film (None: not refused, or no guard when it was scored)."""
    if row.get("guard") != REFUSED:  # accepted, scored anyway (--allow-unrecognised), or no guard
        return None
    return str(row.get("refusal") or NOT_RECOGNISED)


def verdict(row: dict) -> str:
    """One word for the history: refused | failed | flagged | clear."""
    if refusal(row):
        return "refused"
    if row.get("status") != "ok":
        return "failed"
    return "flagged" if row.get("flagged") else "clear"


def score_lines(row: dict, bundle: Any, same_model: bool | None = None) -> list[ScoreLine]:
    """Every label's score, flagged first, then by score; thresholds when the row is this bundle's
    (``same_model``: known by the caller, e.g. a report of one model's rows; else by the row's model_hash)."""
    same = row.get("model_hash") == bundle.sha256 if same_model is None else same_model
    thresholds = dict(zip(bundle.labels, bundle.thresholds, strict=True)) if same else {}
    flagged = set(row.get("flagged") or [])
    lines = [ScoreLine(lb, PLAIN.get(lb, lb.replace("_", " ").lower()), float(s), thresholds.get(lb), lb in flagged)
             for lb, s in (row.get("scores") or {}).items()]
    return sorted(lines, key=lambda ln: (not ln.flagged, -ln.score))


def cam_caption(cam: dict) -> str:
    """Where a heatmap's hottest spot is, and any other spot at least half as hot."""
    text = f"{cam.get('label')}: peak at x={cam.get('x')}, y={cam.get('y')}"
    peaks = cam.get("peaks")
    more = [p for p in peaks[1:] if isinstance(p, list | tuple) and len(p) == 2] if isinstance(peaks, list) else []
    if more:
        text += "; also " + ", ".join(f"x={x}, y={y}" for x, y in more)
    return text


def model_facts(row: dict, bundle: Any) -> list[tuple[str, str]]:
    """The provenance lines of a result: which model, how it ran, how good it was on held-out films."""
    facts = [("Model", str(row.get("model_hash", ""))[:12]), ("Scored", str(row.get("scanned_at", ""))),
             ("Ran on", f"{row.get('model_kind') or '?'} on {row.get('device') or '?'} ({row.get('runtime') or '?'})")]
    if row.get("model_hash") == bundle.sha256:
        prov = bundle.spec.get("provenance", {})
        facts.append(("Trained on", str(prov.get("data", {}).get("kind", "unknown")) + " films"))
        if found := held_out_auroc(bundle.spec):
            facts.append(("Quality", f"macro AUROC {found[1]:.3f} on held-out {found[0]} films"))
        if note := threshold_note(bundle.spec):
            facts.append(("Thresholds", note))
        if prov.get("created") or prov.get("date"):
            facts.append(("Made", str(prov.get("created") or prov.get("date"))))
    else:
        facts.append(("Note", "scored by another model than the one this app runs: thresholds not shown"))
    return facts


def api_row(row: dict, base: str) -> dict:
    """A stored result for the JSON API: the row, plus its verdict, refusal and links (by id)."""
    out = dict(row)
    out.update(name=name_of(row), source=source_of(row), verdict=verdict(row), refused_reason=refusal(row),
               url=f"{base}results/{row['id']}",
               overlay_urls=[f"{base}results/{row['id']}/overlay/{i}" for i in range(len(row.get("overlays") or []))])
    return out
