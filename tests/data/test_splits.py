"""Split invariants: class-disjoint, deterministic, fractions, stable under added classes;
protocol images (the source's own train/test split, else a per-image hash)."""

from __future__ import annotations

import hashlib

import pytest

from components import constants as C
from components.data.splits import ClassSplit, SplitConfig, SplitSpec, assign_splits, check_protocol_splits, split_classes
from components.data.versions import protocol, retrieval_split

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


# --- protocol images --------------------------------------------------------------------

def _reference_held_out(key: str, seed: int, fraction: float) -> bool:
    """Independent restatement of the documented hash rule."""
    digest = hashlib.sha256(f"{seed}:test:{key}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15 < fraction


def _fashion_like(train_per_class: int = 60, test_per_class: int = 10):
    """Keys and source splits shaped like Fashion-MNIST's records (train/NNNNN, test/NNNNN)."""
    keys, source_splits = {}, {}
    for c in range(10):
        name = f"class_{c}"
        keys[name] = [f"train/{c * 1000 + i:05d}" for i in range(train_per_class)]
        keys[name] += [f"test/{c * 1000 + i:05d}" for i in range(test_per_class)]
        source_splits.update({k: k.split("/")[0] for k in keys[name]})
    return keys, source_splits


def test_images_protocol_uses_the_sources_own_split():
    keys, source_splits = _fashion_like()
    spec = SplitSpec(protocol="images", val_fraction=0.2, seed=0)
    class_split = split_classes(list(keys), spec)
    assert class_split.seen == sorted(keys) and class_split.unseen == []     # every class is trained on
    assignment = assign_splits(keys, class_split, spec, source_splits)
    assert set(assignment) == {k for ks in keys.values() for k in ks}
    test = {k for k, (s, _) in assignment.items() if s == C.SPLIT_TEST}
    assert test == {k for k in assignment if k.startswith("test/")}           # exactly the source's test file
    val = {k for k, (s, _) in assignment.items() if s == C.SPLIT_VAL}
    assert val and all(k.startswith("train/") for k in val)                  # validation only from training images
    assert 0.1 < len(val) / 600 < 0.3
    assert {role for k, (_, role) in assignment.items() if k in test} == {C.ROLE_BOTH}
    assert not {s for s, _ in assignment.values()} & {C.SPLIT_UNSEEN}
    # Per class: training images remain for every class (val never takes them all).
    for class_keys in keys.values():
        assert any(assignment[k][0] == C.SPLIT_TRAIN for k in class_keys)


def test_images_protocol_hash_split_matches_the_rule_and_is_stable_under_added_images():
    spec = SplitSpec(protocol="images", test_fraction=0.25, val_fraction=0.1, seed=7)
    first_keys = {f"c{c}": [f"c{c}/img_{i:04d}" for i in range(200)] for c in range(5)}
    first = assign_splits(first_keys, split_classes(list(first_keys), spec), spec)
    for key, (split, _) in first.items():
        assert (split == C.SPLIT_TEST) == _reference_held_out(key, 7, 0.25)
    held = sum(s == C.SPLIT_TEST for s, _ in first.values()) / len(first)
    assert 0.2 < held < 0.3
    # New images in old classes and new classes: no existing image changes split.
    grown_keys = {name: keys + [f"{name}/new_{i:04d}" for i in range(50)] for name, keys in first_keys.items()}
    grown_keys.update({f"n{c}": [f"n{c}/img_{i:04d}" for i in range(80)] for c in range(3)})
    grown = assign_splits(grown_keys, split_classes(list(grown_keys), spec), spec)
    assert all(grown[key] == first[key] for key in first)
    # The held-out set depends on the seed.
    other = assign_splits(first_keys, split_classes(list(first_keys), spec), SplitSpec(protocol="images", seed=8))
    assert {k for k, (s, _) in other.items() if s == C.SPLIT_TEST} != {k for k, (s, _) in first.items() if s == C.SPLIT_TEST}


def test_images_protocol_query_roles_apply_to_the_test_split():
    spec = SplitSpec(protocol="images", query_fraction=0.3, seed=0)
    keys = {"c": [f"c/{i}" for i in range(2000)]}
    assignment = assign_splits(keys, split_classes(["c"], spec), spec)
    test_roles = [role for split, role in assignment.values() if split == C.SPLIT_TEST]
    assert set(test_roles) == {C.ROLE_QUERY, C.ROLE_GALLERY}
    assert 0.25 < test_roles.count(C.ROLE_QUERY) / len(test_roles) < 0.35
    assert {role for split, role in assignment.values() if split != C.SPLIT_TEST} == {C.ROLE_BOTH}


def test_source_split_is_ignored_by_the_classes_protocol():
    keys, source_splits = _fashion_like(20, 5)
    spec = SplitSpec(seed=0)
    assignment = assign_splits(keys, split_classes(list(keys), spec), spec, source_splits)
    assert {s for s, _ in assignment.values()} == {C.SPLIT_TRAIN, C.SPLIT_VAL, C.SPLIT_UNSEEN}


def test_bad_source_split_and_empty_sides_name_the_fix():
    spec = SplitSpec(protocol="images")
    with pytest.raises(ValueError, match="source_split"):
        assign_splits({"c": ["c/1"]}, ClassSplit(seen=["c"]), spec, {"c/1": "validation"})
    only_train = assign_splits({"c": ["c/1", "c/2"]}, ClassSplit(seen=["c"]), spec, {"c/1": "train", "c/2": "train"})
    with pytest.raises(ValueError, match="split.protocol=images left no held-out"):
        check_protocol_splits(only_train, spec)
    only_test = assign_splits({"c": ["c/1"]}, ClassSplit(seen=["c"]), spec, {"c/1": "test"})
    with pytest.raises(ValueError, match="left no training images"):
        check_protocol_splits(only_test, spec)
    check_protocol_splits(only_train, SplitSpec())   # the classes protocol has no such requirement


def test_split_config_schema_names_the_key():
    assert SplitConfig().spec() == SplitSpec()
    config = SplitConfig(protocol="images", test_fraction=0.1, seed=3)
    assert config.spec() == SplitSpec(protocol="images", test_fraction=0.1, seed=3)
    assert config.spec().retrieval_split == C.SPLIT_TEST and SplitSpec().retrieval_split == C.SPLIT_UNSEEN
    for bad, key in (({"protocol": "pairs"}, "protocol"), ({"test_fraction": 1.0}, "test_fraction"),
                     ({"seen_fraction": 0.0}, "seen_fraction"), ({"val_fraction": -0.1}, "val_fraction"),
                     ({"query_fraction": 2.0}, "query_fraction")):
        with pytest.raises(ValueError, match=key):
            SplitConfig(**bad)
    with pytest.raises(ValueError, match="held_out"):
        SplitConfig(held_out=0.2)   # unknown keys are errors


def test_manifest_helpers_read_old_and_new_manifests():
    assert retrieval_split({"split": {}}) == C.SPLIT_UNSEEN      # manifests written before protocols
    assert protocol({"split": {}}) == C.PROTOCOL_CLASSES
    assert retrieval_split({"protocol": "images", "retrieval_split": "test"}) == C.SPLIT_TEST
    assert protocol({"protocol": "images", "retrieval_split": "test"}) == C.PROTOCOL_IMAGES
