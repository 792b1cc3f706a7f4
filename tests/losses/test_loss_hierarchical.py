"""Hierarchical proxy loss: given superclasses, k-means levels, mean proxies, reassignment."""

from __future__ import annotations

import pytest
import torch

from components.losses import build_loss
from tests.losses import loss_references as ref

REFERENCES = {"proxy_anchor": ref.proxy_anchor, "proxy_nca": ref.proxy_nca}


def batch(num_classes=6, per_class=3, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=generator)]
    return torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), labels


def mean_by_loop(fine, assignment):
    groups = sorted(set(assignment))
    return torch.stack([
        torch.stack([fine[c] for c in range(len(fine)) if assignment[c] == g]).mean(0) for g in groups
    ])


@pytest.mark.parametrize(
    "base, base_params", [("proxy_anchor", {}), ("proxy_anchor", {"alpha": 16.0, "margin": 0.2}), ("proxy_nca", {"scale": 4.0})]
)
def test_given_superclasses_equal_weighted_sum_of_reference_losses(base, base_params):
    embeddings, labels = batch()
    superclass_of = [1, 0, 1, 2, 0, 2]
    loss = build_loss(
        "hierarchical_proxy", num_classes=6, embedding_dim=4, base=base, base_params=base_params,
        superclass_of=superclass_of, level_weights=[1.0, 0.7],
    ).double()
    fine = loss.proxies.detach()
    coarse = mean_by_loop(fine, superclass_of)
    coarse_labels = [superclass_of[int(c)] for c in labels]
    reference = REFERENCES[base]
    expected = (reference(embeddings, labels, fine, **base_params)
                + 0.7 * reference(embeddings, coarse_labels, coarse, **base_params))
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(loss.level_proxies()[1], coarse)


def test_several_given_levels():
    embeddings, labels = batch()
    levels = [[0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]]
    loss = build_loss(
        "hierarchical_proxy", num_classes=6, embedding_dim=4, superclass_of=levels, level_weights=[1.0, 0.5, 0.25]
    ).double()
    fine = loss.proxies.detach()
    expected = ref.proxy_anchor(embeddings, labels, fine)
    for weight, mapping in zip([0.5, 0.25], levels):
        expected += weight * ref.proxy_anchor(embeddings, [mapping[int(c)] for c in labels], mean_by_loop(fine, mapping))
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-6)


def test_kmeans_coarse_proxies_are_means_of_their_fine_proxies_and_loss_matches():
    embeddings, labels = batch(num_classes=9, seed=2)
    loss = build_loss("hierarchical_proxy", num_classes=9, embedding_dim=4, num_coarse=3, level_weights=[1.0, 0.5]).double()
    assignment = loss.coarse_assignments()[0].tolist()
    assert sorted(set(assignment)) == [0, 1, 2]
    fine = loss.proxies.detach()
    coarse = mean_by_loop(fine, assignment)
    assert torch.allclose(loss.level_proxies()[1], coarse)
    expected = ref.proxy_anchor(embeddings, labels, fine) + 0.5 * ref.proxy_anchor(
        embeddings, [assignment[int(c)] for c in labels], coarse
    )
    loss.eval()  # no reassignment inside this call
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-6)


def clustered_proxies(groups, dim=4, seed=0):
    """Fine proxies lying in tight clusters: groups[c] is the cluster of class c."""
    generator = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(max(groups) + 1, dim, generator=generator)
    return torch.stack([centres[g] + 0.01 * torch.randn(dim, generator=generator) for g in groups])


def same_partition(a, b):
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


def test_kmeans_finds_the_clusters_of_the_fine_proxies():
    loss = build_loss("hierarchical_proxy", num_classes=8, embedding_dim=4, num_coarse=3)
    truth = [2, 0, 1, 2, 0, 1, 1, 0]
    with torch.no_grad():
        loss.proxies.copy_(clustered_proxies(truth))
    loss.reassign()
    assert same_partition(loss.coarse_assignments()[0].tolist(), truth)


def test_nested_kmeans_levels():
    loss = build_loss("hierarchical_proxy", num_classes=8, embedding_dim=4, num_coarse=[4, 2], level_weights=[1, 0.5, 0.25])
    truth = [3, 0, 1, 2, 0, 1, 3, 2]
    with torch.no_grad():
        loss.proxies.copy_(clustered_proxies(truth))
    loss.reassign()
    level1, level2 = (a.tolist() for a in loss.coarse_assignments())
    assert same_partition(level1, truth)
    assert len(set(level2)) == 2
    # Nested: classes in the same level-1 group are in the same level-2 group.
    assert all(level2[i] == level2[j] for i in range(8) for j in range(8) if level1[i] == level1[j])


def test_reassignment_happens_every_T_training_iterations():
    embeddings, labels = batch(num_classes=8, per_class=2)
    loss = build_loss("hierarchical_proxy", num_classes=8, embedding_dim=4, num_coarse=3, reassign_every=3).double()
    layouts = [[0, 0, 1, 1, 2, 2, 0, 1], [2, 1, 0, 2, 1, 0, 0, 2], [1, 2, 2, 0, 0, 1, 1, 1]]
    history = []
    for iteration in range(7):
        if iteration % 3 == 1:  # move the proxies between reassignments
            with torch.no_grad():
                loss.proxies.copy_(clustered_proxies(layouts[iteration // 3], seed=iteration).double())
        loss(embeddings, labels)
        history.append((loss.num_reassignments, loss.coarse_assignments()[0].tolist()))
    # Reassigned before iterations 3 and 6 (0-based), never in between.
    assert [n for n, _ in history] == [0, 0, 0, 1, 1, 1, 2]
    assert same_partition(history[3][1], layouts[0]) and same_partition(history[6][1], layouts[1])
    assert history[1][1] == history[2][1] and history[4][1] == history[5][1]
    # Evaluation calls neither count nor reassign.
    loss.eval()
    for _ in range(5):
        loss(embeddings, labels)
    assert loss.num_reassignments == 2 and int(loss.iteration) == 7


def test_coarse_level_trains_the_fine_proxies_and_state_is_saved():
    embeddings, labels = batch()
    loss = build_loss(
        "hierarchical_proxy", num_classes=6, embedding_dim=4, superclass_of=[0, 0, 1, 1, 2, 2], level_weights=[0.0, 1.0]
    )
    loss(embeddings.float(), labels).backward()
    assert loss.proxies.grad is not None and loss.proxies.grad.abs().sum() > 0
    kmeans_loss = build_loss("hierarchical_proxy", num_classes=6, embedding_dim=4, num_coarse=2)
    state = kmeans_loss.state_dict()
    assert {"proxies", "assignment_level1", "iteration"} <= set(state)
    restored = build_loss("hierarchical_proxy", num_classes=6, embedding_dim=4, num_coarse=2, seed=5)
    restored.load_state_dict(state)
    assert restored.coarse_assignments()[0].tolist() == kmeans_loss.coarse_assignments()[0].tolist()


@pytest.mark.parametrize(
    "params, error, word",
    [
        (dict(level_weights=[1.0]), ValueError, "level_weights"),
        (dict(superclass_of=[0, 1, 0]), ValueError, "superclass_of"),
        (dict(superclass_of=[0, 0, 2, 2, 0, 0]), ValueError, "superclass_of"),
        (dict(superclass_of=[0, 0, 1, 1, 0, 0], num_coarse=2), ValueError, "superclass_of"),
        (dict(num_coarse=6), ValueError, "num_coarse"),
        (dict(base="proxy_magic"), ValueError, "base"),
        (dict(base="proxy_nca", base_params={"alpha": 3}), TypeError, "alpha"),
        (dict(reassign_every=0), ValueError, "reassign_every"),
    ],
)
def test_bad_parameters_are_named(params, error, word):
    with pytest.raises(error, match=word):
        build_loss("hierarchical_proxy", num_classes=6, embedding_dim=4, **params)
