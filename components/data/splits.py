"""Which images train, validate and measure retrieval, under one of two protocols.

Every rule is deterministic from the seed, the class names and the image keys, and every
per-image decision depends on that image alone, so new imagery never moves existing images.

Protocol ``classes`` (default; the overhead-vehicle study's class-disjoint split):

- Classes are ordered by ``sha256(f"{seed}:{class}")``; the first ``round(seen_fraction·C)``
  are *seen* (trained on), the rest *unseen* (retrieval is measured on them only).
- Stability when new classes arrive: given the previous version's assignment (same seed and
  fraction), every existing class keeps its side, and each new class, in hash order, joins
  the side that is furthest below its target share. So nothing that was ever unseen can leak
  into training, and a model's "unseen" metrics stay comparable across versions.

Protocol ``images`` (seen-class retrieval, as the Fashion-MNIST retrieval study measures it):

- Every class is trained on; held-out images of those classes form the retrieval split
  ``test``. An image the source files as its own test image (``metadata[source_split]``,
  e.g. Fashion-MNIST's t10k files) is ``test``, one filed as training is not; an image the
  source says nothing about is ``test`` when ``sha256(f"{seed}:test:{key}")`` falls below
  `test_fraction`.

Both protocols:

- Validation: training-side images whose ``sha256(f"{seed}:val:{key}")`` falls below
  `val_fraction` (stable per image), except that every trained class keeps at least one
  training image. Nothing is ever selected on retrieval (unseen / test) data.
- Retrieval roles: by default every retrieval image is ``both`` a query and in the gallery
  (leave-one-out). With `query_fraction`, images whose hash falls below it are queries only
  and the others gallery only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from components import constants as C

Protocol = Literal["classes", "images"]


def unit_hash(text: str) -> float:
    """A stable pseudo-random number in [0, 1) for `text`."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16) / float(16**15)


@dataclass(frozen=True)
class SplitSpec:
    seen_fraction: float = 0.6          # protocol classes: share of classes trained on
    val_fraction: float = 0.15          # share of training-side images held out for validation
    query_fraction: float | None = None  # retrieval images that only query (the rest only gallery)
    seed: int = 0
    protocol: Protocol = "classes"      # C.PROTOCOL_CLASSES (spelled out: the Literal's default)
    test_fraction: float = 0.2          # protocol images: held-out share where the source has no split

    def __post_init__(self) -> None:
        if self.protocol not in C.PROTOCOLS:
            raise ValueError(f"split.protocol must be one of {list(C.PROTOCOLS)}, got {self.protocol!r}")
        if not 0.0 < self.seen_fraction < 1.0:
            raise ValueError(f"split.seen_fraction must be in (0, 1), got {self.seen_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"split.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.query_fraction is not None and not 0.0 < self.query_fraction < 1.0:
            raise ValueError(f"split.query_fraction must be in (0, 1) or null, got {self.query_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"split.test_fraction must be in (0, 1), got {self.test_fraction}")

    @property
    def retrieval_split(self) -> str:
        """The split retrieval is measured on: ``unseen`` (protocol classes) or ``test`` (images)."""
        return C.RETRIEVAL_SPLITS[self.protocol]


class SplitConfig(BaseModel):
    """The `split` config section: the typed schema of `SplitSpec` (whose checks name the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seen_fraction: float = 0.6
    val_fraction: float = 0.15
    query_fraction: float | None = None
    seed: int = 0
    protocol: Protocol = "classes"
    test_fraction: float = 0.2

    @model_validator(mode="after")
    def _limits(self) -> "SplitConfig":
        self.spec()   # one set of limits: SplitSpec's, which raise ValueError naming split.<key>
        return self

    def spec(self) -> SplitSpec:
        return SplitSpec(**self.model_dump())


@dataclass
class ClassSplit:
    seen: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)


def split_classes(classes: list[str], spec: SplitSpec, previous: ClassSplit | None = None) -> ClassSplit:
    """Assign each class to seen or unseen (see the module docstring for the rules)."""
    names = sorted(set(classes))
    if spec.protocol == C.PROTOCOL_IMAGES:
        return ClassSplit(seen=names, unseen=[])
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


def is_held_out(key: str, source_split: str | None, spec: SplitSpec) -> bool:
    """Protocol images: whether an image of a trained class belongs to the retrieval split."""
    if source_split is None:
        return unit_hash(f"{spec.seed}:test:{key}") < spec.test_fraction
    if source_split not in (C.SPLIT_TRAIN, C.SPLIT_TEST):
        raise ValueError(f"image {key!r}: metadata[{C.SOURCE_SPLIT!r}] must be {C.SPLIT_TRAIN!r} or "
                         f"{C.SPLIT_TEST!r} (the source's own train/test files), got {source_split!r}")
    return source_split == C.SPLIT_TEST


def _retrieval_role(key: str, spec: SplitSpec) -> str:
    if spec.query_fraction is None:
        return C.ROLE_BOTH
    return C.ROLE_QUERY if unit_hash(f"{spec.seed}:query:{key}") < spec.query_fraction else C.ROLE_GALLERY


def _train_and_val(keys: list[str], spec: SplitSpec) -> dict[str, tuple[str, str]]:
    """Carve validation out of one class's training-side images (never all of them)."""
    scores = {k: unit_hash(f"{spec.seed}:val:{k}") for k in keys}
    val = {k for k in keys if scores[k] < spec.val_fraction}
    if keys and len(val) == len(keys):  # keep one training image per trained class
        val.discard(max(keys, key=lambda k: scores[k]))
    return {k: (C.SPLIT_VAL if k in val else C.SPLIT_TRAIN, C.ROLE_BOTH) for k in keys}


def assign_splits(
    keys_by_class: dict[str, list[str]], class_split: ClassSplit, spec: SplitSpec,
    source_splits: Mapping[str, str | None] | None = None,
) -> dict[str, tuple[str, str]]:
    """Map every key to ``(split, role)``; `keys_by_class` must hold accepted samples only.

    `source_splits[key]` is the source's own train/test label of an image (protocol images
    only; missing or None: decided by hash).
    """
    source_splits = source_splits or {}
    assignment: dict[str, tuple[str, str]] = {}
    for name in class_split.seen:
        keys = sorted(keys_by_class.get(name, []))
        if spec.protocol == C.PROTOCOL_IMAGES:
            held_out = {k for k in keys if is_held_out(k, source_splits.get(k), spec)}
            assignment.update({k: (C.SPLIT_TEST, _retrieval_role(k, spec)) for k in sorted(held_out)})
            keys = [k for k in keys if k not in held_out]
        assignment.update(_train_and_val(keys, spec))
    for name in class_split.unseen:
        for key in keys_by_class.get(name, []):
            assignment[key] = (C.SPLIT_UNSEEN, _retrieval_role(key, spec))
    return assignment


def check_protocol_splits(assignment: dict[str, tuple[str, str]], spec: SplitSpec) -> None:
    """A version must have something to train on and something to retrieve among."""
    if spec.protocol != C.PROTOCOL_IMAGES:
        return
    splits = {split for split, _ in assignment.values()}
    if C.SPLIT_TEST not in splits:
        raise ValueError(
            "split.protocol=images left no held-out (test) images: the source files every image as "
            "training (e.g. data.subset=train); ingest its test files too (data.subset=all) or use "
            "split.protocol=classes")
    if not splits & {C.SPLIT_TRAIN, C.SPLIT_VAL}:
        raise ValueError(
            "split.protocol=images left no training images: the source files every image as test "
            "(e.g. data.subset=test); ingest its training files too (data.subset=all) or use "
            "split.protocol=classes")


def group_keys_by_class(labels: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for key, label in labels.items():
        grouped[label].append(key)
    return {name: sorted(keys) for name, keys in grouped.items()}
