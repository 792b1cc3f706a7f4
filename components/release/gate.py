"""The promotion gate: does a challenger replace the champion?

A pure function of two metric dictionaries, so the rule that protects search can be tested
on its own and recorded with the numbers it used. Every metric is "higher is better" (mAP,
R@K, MAP@R, per-superclass mAP are all fractions in [0, 1]); margins and tolerances are in
the same absolute units (0.01 = one point of mAP).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str                       # names the metric(s) that decided, with the numbers
    deltas: dict[str, float]          # challenger - champion, for the primary and every guarded metric
    blocked_by: tuple[str, ...] = field(default=())  # metrics that stopped the promotion


def _value(metrics: Mapping[str, float], name: str, side: str) -> float:
    if name not in metrics:
        known = ", ".join(sorted(metrics)) or "none"
        raise ValueError(f"{side} metrics lack {name!r} (they have: {known}); evaluate both models "
                         "on the same benchmark with the same metric names")
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{side} metric {name!r} must be a finite number, got {value!r}")
    return float(value)


def _expand_guarded(guarded: Mapping[str, float], champion: Mapping[str, float]) -> dict[str, float]:
    """Metric name -> tolerance; a glob key (``mAP/superclass/*``) guards every champion metric
    it matches, so per-superclass metrics need not be listed one by one."""
    expanded: dict[str, float] = {}
    for key, tolerance in guarded.items():
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
                or not math.isfinite(tolerance) or tolerance < 0:
            raise ValueError(f"guarded[{key!r}] must be a tolerance >= 0 (the largest allowed drop), "
                             f"got {tolerance!r}")
        if _GLOB_CHARS & set(key):
            matched = sorted(name for name in champion if fnmatch.fnmatchcase(name, key))
            if not matched:
                raise ValueError(f"guarded pattern {key!r} matches no champion metric "
                                 f"(they are: {', '.join(sorted(champion)) or 'none'})")
            for name in matched:
                expanded[name] = min(float(tolerance), expanded.get(name, math.inf))
        else:
            expanded[key] = min(float(tolerance), expanded.get(key, math.inf))
    return expanded


def decide(
    champion_metrics: Mapping[str, float],
    challenger_metrics: Mapping[str, float],
    *,
    primary: str = "mAP",
    min_improvement: float,
    guarded: Mapping[str, float] | None = None,
) -> Decision:
    """Promote only when the challenger's `primary` metric is higher than the champion's by at
    least `min_improvement` (a tie never promotes) and no guarded metric drops by more than its
    tolerance. A metric missing on either side is an error, not a pass: the gate must never
    promote on numbers it could not compare."""
    if isinstance(min_improvement, bool) or not isinstance(min_improvement, (int, float)) \
            or not math.isfinite(min_improvement) or min_improvement < 0:
        raise ValueError(f"min_improvement must be a number >= 0, got {min_improvement!r}; a negative "
                         "margin would promote a worse model")
    tolerances = _expand_guarded(guarded or {}, champion_metrics)

    champion_primary = _value(champion_metrics, primary, "champion")
    challenger_primary = _value(challenger_metrics, primary, "challenger")
    deltas = {primary: challenger_primary - champion_primary}
    problems: list[str] = []
    blocked: list[str] = []
    if not (deltas[primary] > 0 and deltas[primary] >= min_improvement):
        blocked.append(primary)
        problems.append(f"{primary}: challenger {challenger_primary:.4f} vs champion {champion_primary:.4f} "
                        f"({deltas[primary]:+.4f}) does not beat it by the margin {min_improvement:.4f}")
    for name, tolerance in sorted(tolerances.items()):
        before = _value(champion_metrics, name, "champion")
        after = _value(challenger_metrics, name, "challenger")
        deltas[name] = after - before
        if before - after > tolerance:
            blocked.append(name)
            problems.append(f"{name} regressed by {before - after:.4f} (champion {before:.4f} -> "
                            f"challenger {after:.4f}), beyond its tolerance {tolerance:.4f}")

    if blocked:
        return Decision(False, "not promoted: " + "; ".join(problems), deltas, tuple(blocked))
    guarded_text = (f"no guarded metric ({', '.join(sorted(tolerances))}) regressed beyond its tolerance"
                    if tolerances else "no guarded metrics")
    reason = (f"promoted: {primary} challenger {challenger_primary:.4f} beats champion {champion_primary:.4f} "
              f"by {deltas[primary]:+.4f} (margin {min_improvement:.4f}); {guarded_text}")
    return Decision(True, reason, deltas, ())
