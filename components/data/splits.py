"""Class-disjoint seen/unseen split, a validation set carved from the seen classes, query roles.

Rules (all deterministic from the seed, the class names and the image keys):

- Classes are ordered by ``sha256(f"{seed}:{class}")``; the first ``round(seen_fraction·C)``
  are *seen* (trained on), the rest *unseen* (retrieval is measured on them only).
- Stability when new classes arrive: given the previous version's assignment (same seed and
  fraction), every existing class keeps its side, and each new class, in hash order, joins
  the side that is furthest below its target share. So nothing that was ever unseen can leak
  into training, and a model's "unseen" metrics stay comparable across versions.
- Validation: images of seen classes whose ``sha256(f"{seed}:val:{key}")`` falls below
  `val_fraction` (stable per image), except that every seen class keeps at least one
  training image. Nothing is ever selected on unseen data.
- Unseen roles: by default every unseen image is ``both`` a query and in the gallery
  (leave-one-out). With `query_fraction`, images whose hash falls below it are queries only
  and the others gallery only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from components import constants as C


def unit_hash(text: str) -> float:
    """A stable pseudo-random number in [0, 1) for `text`."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16) / float(16**15)


@dataclass(frozen=True)
class SplitSpec:
    seen_fraction: float = 0.6
    val_fraction: float = 0.15
    query_fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.seen_fraction < 1.0:
            raise ValueError(f"split.seen_fraction must be in (0, 1), got {self.seen_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"split.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.query_fraction is not None and not 0.0 < self.query_fraction < 1.0:
            raise ValueError(f"split.query_fraction must be in (0, 1) or null, got {self.query_fraction}")


@dataclass
class ClassSplit:
    seen: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)


def split_classes(classes: list[str], spec: SplitSpec, previous: ClassSplit | None = None) -> ClassSplit:
    """Assign each class to seen or unseen (see the module docstring for the rules)."""
    names = sorted(set(classes))
    order = sorted(names, key=lambda name: (unit_hash(f"{spec.seed}:{name}"), name))
    if previous is None:
        n_seen = round(spec.seen_fraction * len(names))
        if len(names) >= 2:  # both sides non-empty whenever there are two classes
            n_seen = min(max(n_seen, 1), len(names) - 1)
        return ClassSplit(seen=sorted(order[:n_seen]), unseen=sorted(order[n_seen:]))

    side = {name: "seen" for name in previous.seen} | {name: "unseen" for name in previous.unseen}
    seen = [n for n in names if side.get(n) == "seen"]
    unseen = [n for n in names if side.get(n) == "unseen"]
    for name in (n for n in order if n not in side):
        total = len(seen) + len(unseen) + 1
        # Join the side whose share is furthest below target after adding this class.
        seen_deficit = spec.seen_fraction * total - len(seen)
        unseen_deficit = (1 - spec.seen_fraction) * total - len(unseen)
        (seen if seen_deficit >= unseen_deficit else unseen).append(name)
    return ClassSplit(seen=sorted(seen), unseen=sorted(unseen))


def assign_splits(
    keys_by_class: dict[str, list[str]], class_split: ClassSplit, spec: SplitSpec
) -> dict[str, tuple[str, str]]:
    """Map every key to ``(split, role)``; `keys_by_class` must hold accepted samples only."""
    assignment: dict[str, tuple[str, str]] = {}
    for name in class_split.seen:
        keys = sorted(keys_by_class.get(name, []))
        scores = {k: unit_hash(f"{spec.seed}:val:{k}") for k in keys}
        val = {k for k in keys if scores[k] < spec.val_fraction}
        if keys and len(val) == len(keys):  # keep one training image per seen class
            val.discard(max(keys, key=lambda k: scores[k]))
        for key in keys:
            assignment[key] = (C.SPLIT_VAL if key in val else C.SPLIT_TRAIN, C.ROLE_BOTH)
    for name in class_split.unseen:
        for key in keys_by_class.get(name, []):
            if spec.query_fraction is None:
                role = C.ROLE_BOTH
            else:
                role = C.ROLE_QUERY if unit_hash(f"{spec.seed}:query:{key}") < spec.query_fraction else C.ROLE_GALLERY
            assignment[key] = (C.SPLIT_UNSEEN, role)
    return assignment


def group_keys_by_class(labels: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for key, label in labels.items():
        grouped[label].append(key)
    return {name: sorted(keys) for name, keys in grouped.items()}
