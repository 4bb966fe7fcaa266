"""edge.service.findings: the pure rule of which labels a film is flagged for and which get a heatmap."""

from __future__ import annotations

from edge.service import findings

SCORES = [0.2, 0.9, 0.6, 0.9, 0.1]
THRESHOLDS = [0.5, 0.5, 0.5, 0.95, 0.05]


def test_flagged_are_over_threshold_highest_first():
    found = findings(SCORES, THRESHOLDS)
    assert found.flagged == [1, 2, 4] and found.best == 1  # 3 ties 1 but is under its threshold


def test_top_explains_flagged_labels_up_to_k():
    assert findings(SCORES, THRESHOLDS, "top", 2).explain == [1, 2]
    assert findings(SCORES, THRESHOLDS, "top", 5).explain == [1, 2, 4]


def test_top_explains_the_best_label_when_none_is_flagged():
    assert findings(SCORES, [1.0] * 5, "top", 3).explain == [1]  # ties go to the earlier label


def test_all_and_none():
    assert findings(SCORES, THRESHOLDS, "all").explain == [1, 3, 2, 0, 4]
    assert findings(SCORES, THRESHOLDS, "none").explain == []
