"""Issue 12: the seed-spread table (figure x seed against the suite's bars), on made-up figures."""

from __future__ import annotations

from convert.fidelity import LIMITS
from convert.localise import BARS
from convert.spread import FIGURES, figures_table


def _seed(seed: int, per_lesion: float, max_dscore: float) -> dict:
    return {"seed": seed, "test_macro_auroc": 0.9, "mean_abs_dauroc": 0.002, "max_abs_dscore": max_dscore,
            "cam": {"per_lesion": per_lesion, "pointing_game": 0.85, "inside": {"parabolic": 0.78},
                    "mean_corr": 0.99}}


def test_the_table_says_which_bars_every_seed_clears():
    table, rows = figures_table([_seed(0, 0.82, 0.04), _seed(1, 0.70, 0.049), _seed(2, 0.90, 0.06)])
    assert set(rows) == set(FIGURES)
    lesion = rows["CAM per lesion"]
    assert (lesion["min"], lesion["median"], lesion["max"]) == (0.70, 0.82, 0.90)
    assert lesion["bar"] == BARS["per_lesion"] and lesion["every_seed"] is False
    assert rows["int8 max |dscore|"]["bar"] == LIMITS["max_abs_dscore"][1]
    assert rows["int8 max |dscore|"]["every_seed"] is False  # 0.06 > 0.05: an upper bar
    assert rows["int8 mean |dAUROC|"]["every_seed"] is True
    assert rows["test macro AUROC"]["every_seed"] is None  # no bar
    lines = table.splitlines()
    assert lines[0].startswith("| figure | seed 0 | seed 1 | seed 2 | min | median | max | bar | every seed |")
    assert any(line.startswith("| CAM per lesion |") and line.endswith("| **no** |") for line in lines)
    assert len(lines) == 2 + len(FIGURES)
    assert all(line.replace("\\|", "").count("|") == len(lines[0].split("|")) - 1 for line in lines)  # escaped
