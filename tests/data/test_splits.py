"""Split invariants: class-disjoint, deterministic, fractions, stable under added classes."""

from __future__ import annotations

import pytest

from components import constants as C
from components.data.splits import ClassSplit, SplitSpec, assign_splits, split_classes

CLASSES = [f"model_{i:03d}" for i in range(200)]


def test_disjoint_complete_and_fraction():
    split = split_classes(CLASSES, SplitSpec(seen_fraction=0.6, seed=3))
    assert not set(split.seen) & set(split.unseen)
    assert set(split.seen) | set(split.unseen) == set(CLASSES)
    assert len(split.seen) == 120


@pytest.mark.parametrize("count", [2, 3, 5, 10, 11])
def test_fraction_is_exact_for_few_classes(count):
    split = split_classes(CLASSES[:count], SplitSpec(seen_fraction=0.6))
    assert len(split.seen) == min(max(round(0.6 * count), 1), count - 1)
    assert split.unseen


def test_deterministic_and_seed_dependent():
    a = split_classes(CLASSES, SplitSpec(seed=1))
    b = split_classes(list(reversed(CLASSES)), SplitSpec(seed=1))
    c = split_classes(CLASSES, SplitSpec(seed=2))
    assert a == b
    assert a.seen != c.seen


def test_stable_when_new_classes_arrive():
    spec = SplitSpec(seen_fraction=0.6, seed=0)
    first = split_classes(CLASSES[:100], spec)
    grown = split_classes(CLASSES, spec, previous=first)
    assert set(first.seen) <= set(grown.seen)
    assert set(first.unseen) <= set(grown.unseen)
    assert abs(len(grown.seen) - 0.6 * len(CLASSES)) <= 1
    # A class that was removed does not come back, and classes never change side.
    shrunk = split_classes(CLASSES[10:150], spec, previous=grown)
    assert set(shrunk.seen) <= set(grown.seen) and set(shrunk.unseen) <= set(grown.unseen)


def test_validation_is_carved_from_seen_classes_only():
    spec = SplitSpec(seen_fraction=0.5, val_fraction=0.25, seed=0)
    split = ClassSplit(seen=["a", "b"], unseen=["c"])
    keys = {"a": [f"a/{i}" for i in range(400)], "b": ["b/only"], "c": [f"c/{i}" for i in range(50)]}
    assignment = assign_splits(keys, split, spec)
    assert set(assignment) == {k for ks in keys.values() for k in ks}
    val = [k for k, (s, _) in assignment.items() if s == C.SPLIT_VAL]
    assert all(k.startswith("a/") for k in val)
    assert 0.15 < len(val) / 400 < 0.35
    assert assignment["b/only"][0] == C.SPLIT_TRAIN          # never a class without training images
    assert all(assignment[k] == (C.SPLIT_UNSEEN, C.ROLE_BOTH) for k in keys["c"])


def test_query_roles():
    spec = SplitSpec(query_fraction=0.3)
    assignment = assign_splits({"c": [f"c/{i}" for i in range(1000)]}, ClassSplit(seen=[], unseen=["c"]), spec)
    roles = [role for _, role in assignment.values()]
    assert set(roles) == {C.ROLE_QUERY, C.ROLE_GALLERY}
    assert 0.25 < roles.count(C.ROLE_QUERY) / 1000 < 0.35


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="seen_fraction"):
        SplitSpec(seen_fraction=1.0)
    with pytest.raises(ValueError, match="query_fraction"):
        SplitSpec(query_fraction=0.0)
