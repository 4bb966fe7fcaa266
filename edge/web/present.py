"""Stored results as the pages show them: plain words, scores against thresholds, flagged first, refusals.

Pure functions of a store row (edge.store, with ``id``) and the app's bundle. A film the
out-of-distribution guard or the screen refused has ``guard`` "refused" and its reason in ``refusal``
(edge.screen); rows stored before the guard have neither and show as scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from edge.report import held_out_auroc
from edge.screen import NOT_RECOGNISED, REFUSED
from edge.web.engine import UPLOAD_PREFIX

__all__ = ["PLAIN", "ScoreLine", "api_row", "name_of", "refusal", "score_lines", "source_of", "verdict"]

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


def score_lines(row: dict, bundle: Any) -> list[ScoreLine]:
    """Every label's score, flagged first, then by score; thresholds when the row is this bundle's."""
    same = row.get("model_hash") == bundle.sha256
    thresholds = dict(zip(bundle.labels, bundle.thresholds, strict=True)) if same else {}
    flagged = set(row.get("flagged") or [])
    lines = [ScoreLine(lb, PLAIN.get(lb, lb.replace("_", " ").lower()), float(s), thresholds.get(lb), lb in flagged)
             for lb, s in (row.get("scores") or {}).items()]
    return sorted(lines, key=lambda ln: (not ln.flagged, -ln.score))


def model_facts(row: dict, bundle: Any) -> list[tuple[str, str]]:
    """The provenance lines of a result: which model, how it ran, how good it was on held-out films."""
    facts = [("Model", str(row.get("model_hash", ""))[:12]), ("Scored", str(row.get("scanned_at", ""))),
             ("Ran on", f"{row.get('model_kind') or '?'} on {row.get('device') or '?'} ({row.get('runtime') or '?'})")]
    if row.get("model_hash") == bundle.sha256:
        prov = bundle.spec.get("provenance", {})
        facts.append(("Trained on", str(prov.get("data", {}).get("kind", "unknown")) + " films"))
        if found := held_out_auroc(bundle.spec):
            facts.append(("Quality", f"macro AUROC {found[1]:.3f} on held-out {found[0]} films"))
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
