"""The promotion gate against hand-computed cases and a plain reference of the rule."""

from __future__ import annotations

import fnmatch
import random

import pytest

from components.release.gate import decide

CHAMPION = {"mAP": 0.60, "R@1": 0.80, "MAP@R": 0.40, "mAP/superclass/truck": 0.55, "mAP/superclass/car": 0.65}


def test_promotes_when_primary_beats_margin_and_nothing_regresses():
    challenger = {**CHAMPION, "mAP": 0.63, "R@1": 0.795}
    decision = decide(CHAMPION, challenger, min_improvement=0.01, guarded={"R@1": 0.01, "MAP@R": 0.0})
    assert decision.promote
    assert decision.blocked_by == ()
    assert decision.deltas["mAP"] == pytest.approx(0.03)
    assert decision.deltas["R@1"] == pytest.approx(-0.005)
    assert "promoted" in decision.reason and "mAP" in decision.reason


def test_primary_below_margin_blocks_and_names_the_metric():
    challenger = {**CHAMPION, "mAP": 0.605}
    decision = decide(CHAMPION, challenger, min_improvement=0.01)
    assert not decision.promote
    assert decision.blocked_by == ("mAP",)
    assert "mAP" in decision.reason and "margin 0.0100" in decision.reason


def test_a_tie_never_promotes_even_with_zero_margin():
    decision = decide(CHAMPION, dict(CHAMPION), min_improvement=0.0)
    assert not decision.promote and decision.blocked_by == ("mAP",)


def test_guarded_regression_blocks_and_names_the_metric():
    challenger = {**CHAMPION, "mAP": 0.70, "R@1": 0.77}
    decision = decide(CHAMPION, challenger, min_improvement=0.01, guarded={"R@1": 0.01, "MAP@R": 0.01})
    assert not decision.promote
    assert decision.blocked_by == ("R@1",)
    assert "R@1 regressed by 0.0300" in decision.reason and "tolerance 0.0100" in decision.reason
    assert "MAP@R" not in decision.reason.split("not promoted:")[1]


def test_glob_guards_every_superclass_and_reports_each_blocker():
    challenger = {**CHAMPION, "mAP": 0.70, "mAP/superclass/truck": 0.50, "mAP/superclass/car": 0.60}
    decision = decide(CHAMPION, challenger, min_improvement=0.0, guarded={"mAP/superclass/*": 0.02})
    assert not decision.promote
    assert decision.blocked_by == ("mAP/superclass/car", "mAP/superclass/truck")
    assert "mAP/superclass/car" in decision.reason and "mAP/superclass/truck" in decision.reason
    assert set(decision.deltas) == {"mAP", "mAP/superclass/car", "mAP/superclass/truck"}


def test_missing_or_bad_inputs_raise_naming_the_key():
    with pytest.raises(ValueError, match="challenger metrics lack 'R@1'"):
        decide(CHAMPION, {"mAP": 0.7}, min_improvement=0.0, guarded={"R@1": 0.0})
    with pytest.raises(ValueError, match="champion metrics lack 'mAP'"):
        decide({"R@1": 0.8}, CHAMPION, min_improvement=0.0)
    with pytest.raises(ValueError, match="min_improvement"):
        decide(CHAMPION, CHAMPION, min_improvement=-0.01)
    with pytest.raises(ValueError, match=r"guarded\['R@1'\]"):
        decide(CHAMPION, CHAMPION, min_improvement=0.0, guarded={"R@1": -1})
    with pytest.raises(ValueError, match="matches no champion metric"):
        decide(CHAMPION, CHAMPION, min_improvement=0.0, guarded={"mAP/class/*": 0.0})
    with pytest.raises(ValueError, match="finite number"):
        decide(CHAMPION, {**CHAMPION, "mAP": float("nan")}, min_improvement=0.0)


def _reference(champion, challenger, primary, margin, guarded):
    """The rule spelled out as a loop over names, written apart from the module."""
    names = []
    for pattern, _ in guarded.items():
        names += [n for n in champion if fnmatch.fnmatchcase(n, pattern)]
    blockers = []
    gain = challenger[primary] - champion[primary]
    if gain <= 0 or gain < margin:
        blockers.append(primary)
    for name in sorted(set(names)):
        tolerance = min(t for p, t in guarded.items() if fnmatch.fnmatchcase(name, p))
        if champion[name] - challenger[name] > tolerance:
            blockers.append(name)
    return not blockers, tuple(blockers)


def test_matches_the_reference_rule_on_random_metrics():
    rng = random.Random(0)
    promoted = 0
    for _ in range(500):
        champion = {name: rng.random() for name in CHAMPION}
        challenger = {name: min(1.0, max(0.0, value + rng.uniform(-0.05, 0.05))) for name, value in champion.items()}
        margin = rng.choice([0.0, 0.005, 0.02])
        guarded = {"R@1": rng.choice([0.0, 0.01, 0.03]), "mAP/superclass/*": rng.choice([0.01, 0.05])}
        decision = decide(champion, challenger, min_improvement=margin, guarded=guarded)
        assert (decision.promote, decision.blocked_by) == _reference(champion, challenger, "mAP", margin, guarded)
        promoted += decision.promote
    assert 20 < promoted < 480  # both outcomes exercised
