"""Compare two scans of the same films (x86 and emulated arm64): the bar ``make pi-check`` holds them to.

Films are matched by their bytes (``file_sha256``) in the stores and by file name in the probes
(tools/pi_probe.py: each film's model input and feature map). For every film both machines must agree on
status and error kind, the guard's verdict and refusal (the out-of-distribution guard and the screen), the
flagged findings (the decisions) and the top label.

The model is held to identity: a film whose decoded input is the same on both machines must have the same
feature map, bit for bit, and every score within ``SCORE_TOLERANCE``; a PNG film must decode the same (zlib
is exact). A film of another format may decode differently (Pillow's bundled openjpeg rounds a few JPEG 2000
pixels by one grey level differently on aarch64): its pixel difference and score difference are reported,
not held to the bar, since they measure the decoder, not the model. Heatmap peaks are reported: a peak
exactly on a pixel boundary may move by one.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["SCORE_TOLERANCE", "Comparison", "Decoded", "compare", "compare_probes", "compare_rows", "read_rows"]

SCORE_TOLERANCE = 1e-6
_SLACK = 1e-9  # scores are stored rounded to 6 decimals: two equal-within-1e-6 scores may differ by 1e-6 + float noise
_SAME = ("status", "error_kind", "guard", "refusal", "flagged", "top_label")
EXACT_DECODE_SUFFIXES = (".png",)


@dataclass(frozen=True)
class Decoded:
    """A film whose model input differs between the machines: how much, and what that did to its scores."""

    name: str
    max_dpixel: int
    pixels: int
    max_dscore: float = 0.0


@dataclass
class Comparison:
    films: int = 0
    decisions_agreeing: int = 0
    refused: int = 0  # films refused (by the guard or the screen) on both machines
    max_dscore: float = 0.0  # over films decoded identically
    same_input: int = 0  # films decoded identically ...
    features_exact: int = 0  # ... of which this many have identical feature maps
    png: int = 0  # PNG films probed
    decoded_differently: list[Decoded] = field(default_factory=list)
    max_peak_shift: int = 0  # pixels, any heatmap peak
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.films > 0


def read_rows(out: Path) -> dict[str, dict]:
    """The results store of one scan, ``{file_sha256: row}`` with the JSON columns parsed."""
    db = Path(out) / "results.sqlite"
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no results store (did the scan run?)")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in con.execute("SELECT * FROM results")]
    finally:
        con.close()
    for row in rows:
        for col in ("scores", "flagged", "cam"):
            row[col] = json.loads(row[col])
    return {row["file_sha256"]: row for row in rows}


def _name(row: dict) -> str:
    return Path(row["film_path"]).name


def _peak_shift(a: list, b: list) -> int | None:
    """Largest per-pixel shift between two films' heatmap peaks; None when they name different labels or counts."""
    if [c["label"] for c in a] != [c["label"] for c in b]:
        return None
    shift = 0
    for ca, cb in zip(a, b, strict=True):
        if len(ca["peaks"]) != len(cb["peaks"]):
            return None
        for pa, pb in zip(ca["peaks"], cb["peaks"], strict=True):
            shift = max(shift, abs(pa[0] - pb[0]), abs(pa[1] - pb[1]))
    return shift


def _scores(a: dict, b: dict, decoded: dict[str, Decoded], result: Comparison) -> None:
    name = _name(a)
    if a["scores"].keys() != b["scores"].keys():
        result.problems.append(f"{name}: different labels scored")
        return
    delta = max((abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]), default=0.0)
    if name in decoded:  # the decoder's difference, reported
        decoded[name] = Decoded(name, decoded[name].max_dpixel, decoded[name].pixels, delta)
        return
    result.max_dscore = max(result.max_dscore, delta)
    for label in a["scores"]:
        if abs(a["scores"][label] - b["scores"][label]) > SCORE_TOLERANCE + _SLACK:
            result.problems.append(f"{name}: {label} score {a['scores'][label]} != {b['scores'][label]}")


def compare_rows(ref: dict[str, dict], other: dict[str, dict], result: Comparison,
                 decoded: dict[str, Decoded] | None = None) -> None:
    """Both stores, film by film; ``decoded``: films (by name) whose input differs, exempt from the score bar."""
    decoded = {} if decoded is None else decoded
    for sha in sorted(ref.keys() ^ other.keys()):
        row = ref.get(sha) or other[sha]
        result.problems.append(f"{_name(row)}: scanned on one machine only")
    for sha in sorted(ref.keys() & other.keys(), key=lambda s: _name(ref[s])):
        a, b = ref[sha], other[sha]
        result.films += 1
        differ = [col for col in _SAME if a[col] != b[col]]
        if differ:
            result.problems.append(f"{_name(a)}: {', '.join(f'{c} {a[c]!r} != {b[c]!r}' for c in differ)}")
        else:
            result.decisions_agreeing += 1
        result.refused += a["guard"] == "refused" and b["guard"] == "refused"
        _scores(a, b, decoded, result)
        shift = _peak_shift(a["cam"], b["cam"])
        if shift is None:
            result.problems.append(f"{_name(a)}: heatmaps for different labels or peak counts")
        else:
            result.max_peak_shift = max(result.max_peak_shift, shift)
    result.decoded_differently = sorted(decoded.values(), key=lambda d: d.name)


def _split(arrays: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    return {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith(kind + ":")}


def compare_probes(ref: dict[str, np.ndarray], other: dict[str, np.ndarray], result: Comparison) -> dict[str, Decoded]:
    """Inputs and feature maps (tools/pi_probe.py's arrays); the films decoded differently, by name."""
    decoded: dict[str, Decoded] = {}
    ref_in, other_in = _split(ref, "input"), _split(other, "input")
    ref_f, other_f = _split(ref, "features"), _split(other, "features")
    for name in sorted(ref_in.keys() ^ other_in.keys()):
        result.problems.append(f"{name}: probed on one machine only")
    for name in sorted(ref_in.keys() & other_in.keys()):
        png = name.lower().endswith(EXACT_DECODE_SUFFIXES)
        result.png += png
        a, b = ref_in[name], other_in[name]
        if a.shape != b.shape or not np.array_equal(a, b):
            diff = np.abs(a.astype(np.int64) - b.astype(np.int64)) if a.shape == b.shape else None
            decoded[name] = Decoded(name, int(diff.max()) if diff is not None else -1,
                                    int(np.count_nonzero(diff)) if diff is not None else -1)
            if png or diff is None:
                result.problems.append(f"{name}: decoded differently ({'shapes' if diff is None else 'pixels'})")
            continue
        result.same_input += 1
        if np.array_equal(ref_f[name], other_f[name]):
            result.features_exact += 1
        else:
            delta = np.max(np.abs(ref_f[name] - other_f[name])) if ref_f[name].shape == other_f[name].shape else -1
            result.problems.append(f"{name}: the same input gives different feature maps (max |d| {delta:.3g})")
    return decoded


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def compare(ref_out: Path, other_out: Path, ref_probe: Path, other_probe: Path) -> Comparison:
    """Both scans' stores and both probes' arrays against the bar in this module's docstring."""
    result = Comparison()
    decoded = compare_probes(_load_npz(ref_probe), _load_npz(other_probe), result)
    compare_rows(read_rows(ref_out), read_rows(other_out), result, decoded)
    return result
