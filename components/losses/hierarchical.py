"""Hierarchical proxy loss (HPL, Yang et al. 2022) over Proxy-Anchor or Proxy-NCA.

Proxies at several levels: level 0 holds one learnable proxy per (fine) class; each coarser
level groups the fine classes, and a coarse proxy is the mean of the fine proxies of its
group (so it is a function of the fine proxies, and its gradient trains them). A sample's
coarse label is the group of its fine label. The loss is

    Σ_l level_weights[l] · base_loss(embeddings, labels at level l, proxies at level l).

The groups come either from ``superclass_of`` (given: fine class → coarse class, one list per
coarse level), or from k-means over the fine proxies with ``num_coarse`` clusters (one int per
coarse level; each level clusters the one below, so the hierarchy is nested). K-means runs at
construction and again every ``reassign_every`` (T) training iterations (forward calls in
training mode), which re-assigns the samples' coarse labels; at that moment each coarse proxy
equals its k-means centroid. The current groups are buffers, so a checkpoint restores them.

``needs_superclasses``: given the dataset's superclasses, :meth:`data_arguments` uses them as
``superclass_of`` unless the config set ``superclass_of`` or ``num_coarse`` itself.
Diagnostics: the ``proxy_*`` statistics of the fine proxies (computed when asked),
``coarse_groups`` (groups of the first coarse level) and ``reassignments`` (k-means re-runs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import ParametricLoss, check_choice, check_positive_float, check_positive_int, vector_statistics
from .proxy import init_proxy_anchor_proxies, proxy_anchor_loss, proxy_nca_loss

BASE_LOSSES = {
    "proxy_anchor": (proxy_anchor_loss, {"alpha": 32.0, "margin": 0.1}),
    "proxy_nca": (proxy_nca_loss, {"scale": 9.0}),
}


def mean_proxies(fine_proxies: torch.Tensor, assignment: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[num_groups, D]: the mean of the fine proxies assigned to each group."""
    membership = F.one_hot(assignment, num_groups).t().to(fine_proxies.dtype)     # [G, C]
    return (membership @ fine_proxies) / membership.sum(dim=1, keepdim=True)


def compact(assignment: np.ndarray) -> np.ndarray:
    """Renumber groups 0..G-1 in order of first use, dropping empty groups (k-means can
    leave one empty when fine proxies coincide; an empty group has no mean)."""
    _, first_use, inverse = np.unique(assignment, return_index=True, return_inverse=True)
    rank_of_group = np.argsort(np.argsort(first_use))
    return rank_of_group[inverse]


class HierarchicalProxyLoss(ParametricLoss):
    needs_superclasses = True

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        base: str = "proxy_anchor",
        base_params: dict | None = None,
        superclass_of: Sequence[int] | Sequence[Sequence[int]] | None = None,
        num_coarse: int | Sequence[int] | None = None,
        level_weights: Sequence[float] = (1.0, 0.5),
        reassign_every: int = 100,
        seed: int = 0,
    ):
        super().__init__(num_classes, embedding_dim)
        self.base = check_choice("base", base, BASE_LOSSES)
        self.base_loss, defaults = BASE_LOSSES[base]
        self.base_params = {**defaults, **self._check_base_params(base_params, defaults)}
        if superclass_of is not None and num_coarse is not None:
            raise ValueError("give superclass_of (a fixed hierarchy) or num_coarse (k-means), not both")
        self.reassign_every = check_positive_int("reassign_every", reassign_every)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed

        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        if base == "proxy_anchor":
            init_proxy_anchor_proxies(self.proxies)
        else:
            nn.init.normal_(self.proxies)

        self.uses_kmeans = superclass_of is None
        if self.uses_kmeans:
            self.num_coarse = self._check_num_coarse(num_coarse, num_classes)
            assignments = self._kmeans_assignments()
        else:
            assignments = self._check_superclasses(superclass_of, num_classes)
        self.num_levels = 1 + len(assignments)
        self.level_weights = self._check_level_weights(level_weights, self.num_levels)
        for level, assignment in enumerate(assignments, start=1):
            self.register_buffer(f"assignment_level{level}", assignment)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        #: k-means runs since construction (not counting the one at construction).
        self.num_reassignments = 0

    # --- the hierarchy ------------------------------------------------------------------
    def coarse_assignments(self) -> list[torch.Tensor]:
        """Per coarse level, a LongTensor [num_classes]: fine class → group at that level."""
        return [getattr(self, f"assignment_level{level}") for level in range(1, self.num_levels)]

    def level_proxies(self) -> list[torch.Tensor]:
        """Proxies of every level, fine first; coarse ones are means of fine ones."""
        proxies = [self.proxies]
        for assignment in self.coarse_assignments():
            proxies.append(mean_proxies(self.proxies, assignment, int(assignment.max()) + 1))
        return proxies

    def reassign(self) -> None:
        """Re-run k-means on the current fine proxies and replace the groups."""
        for level, assignment in enumerate(self._kmeans_assignments(), start=1):
            getattr(self, f"assignment_level{level}").copy_(assignment)
        self.num_reassignments += 1

    def _kmeans_assignments(self) -> list[torch.Tensor]:
        from sklearn.cluster import KMeans  # lazily: only the k-means mode needs it

        fine = self.proxies.detach().to("cpu", torch.float64).numpy()
        points, to_fine = fine, np.arange(len(fine))
        assignments = []
        for level, k in enumerate(self.num_coarse):
            # compact() can leave fewer groups than asked for at the level below; never ask
            # k-means for more clusters than it has points.
            k = min(k, len(points))
            clusters = KMeans(n_clusters=k, n_init=1, random_state=self.seed + level).fit_predict(points)
            fine_to_group = compact(clusters[to_fine])
            assignments.append(torch.as_tensor(fine_to_group, dtype=torch.long, device=self.proxies.device))
            # The next level clusters this level's proxies (the means of their fine proxies).
            num_groups = int(fine_to_group.max()) + 1
            points = np.stack([fine[fine_to_group == g].mean(axis=0) for g in range(num_groups)])
            to_fine = fine_to_group
        return assignments

    # --- the loss -----------------------------------------------------------------------
    def compute_loss(self, embeddings, labels):
        if self.uses_kmeans and self.training:
            if self.iteration > 0 and self.iteration % self.reassign_every == 0:
                self.reassign()
            self.iteration += 1
        total = embeddings.new_zeros(())
        level_labels = [labels] + [assignment[labels] for assignment in self.coarse_assignments()]
        for weight, proxies, targets in zip(self.level_weights, self.level_proxies(), level_labels):
            total = total + weight * self.base_loss(embeddings, targets, proxies, **self.base_params)
        return total

    def parameter_diagnostics(self, detailed=False):
        stats = vector_statistics(self.proxies, "proxy", detailed)
        coarse = self.coarse_assignments()
        if coarse:
            stats["coarse_groups"] = coarse[0].max() + 1
        stats["reassignments"] = float(self.num_reassignments)
        return stats

    # --- what it takes from the data ----------------------------------------------------
    @classmethod
    def data_arguments(cls, params, *, num_classes, embedding_dim, superclass_of=None):
        arguments = super().data_arguments(
            params, num_classes=num_classes, embedding_dim=embedding_dim, superclass_of=superclass_of
        )
        # conf/loss/hierarchical_proxy.yaml writes both keys as null: null means "not chosen".
        if superclass_of and arguments.get("superclass_of") is None and arguments.get("num_coarse") is None:
            arguments["superclass_of"] = list(superclass_of)
        return arguments

    @classmethod
    def check_param_names(cls, params: Mapping, what: str) -> None:
        base = params.get("base", "proxy_anchor")
        base_params = params.get("base_params")
        if base in BASE_LOSSES and isinstance(base_params, Mapping):
            accepted = sorted(BASE_LOSSES[base][1])
            unknown = sorted(set(base_params) - set(accepted))
            if unknown:
                raise ValueError(
                    f"{what}.base_params: base loss {base!r} has no parameter(s) {unknown}; its parameters: {accepted}"
                )

    # --- parameter checks ---------------------------------------------------------------
    @staticmethod
    def _check_base_params(base_params, defaults) -> dict:
        if base_params is None:
            return {}
        if not isinstance(base_params, dict):
            raise ValueError(f"base_params must be a dict, got {base_params!r}")
        for key, value in base_params.items():
            if key not in defaults:
                raise TypeError(f"base_params: unknown key {key!r}; accepted: {sorted(defaults)}")
            check_positive_float(f"base_params.{key}", value, allow_zero=key == "margin")
        return dict(base_params)

    @staticmethod
    def _check_num_coarse(num_coarse, num_classes) -> list[int]:
        if num_coarse is None:
            # Our default, not the paper's: about sqrt(C) groups (at least 2).
            num_coarse = [max(2, round(num_classes ** 0.5))]
        elif isinstance(num_coarse, int) and not isinstance(num_coarse, bool):
            num_coarse = [num_coarse]
        num_coarse = list(num_coarse)
        previous = num_classes
        for k in num_coarse:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < previous:
                raise ValueError(
                    f"num_coarse must be ints decreasing from below num_classes={num_classes}, "
                    f"got {num_coarse!r}"
                )
            previous = k
        return num_coarse

    @staticmethod
    def _check_superclasses(superclass_of, num_classes) -> list[torch.Tensor]:
        levels = list(superclass_of)
        if levels and not isinstance(levels[0], (list, tuple)):
            levels = [levels]  # one coarse level given as a flat list
        if not levels:
            raise ValueError("superclass_of is empty")
        assignments = []
        for level, mapping in enumerate(levels, start=1):
            mapping = list(mapping)
            if len(mapping) != num_classes or not all(isinstance(c, int) and c >= 0 for c in mapping):
                raise ValueError(
                    f"superclass_of (level {level}) must list one non-negative int per fine "
                    f"class ({num_classes}), got {mapping!r}"
                )
            missing = sorted(set(range(max(mapping) + 1)) - set(mapping))
            if missing:
                raise ValueError(
                    f"superclass_of (level {level}): coarse classes {missing} have no fine "
                    "class (number coarse classes 0..G-1)"
                )
            assignments.append(torch.tensor(mapping, dtype=torch.long))
        return assignments

    @staticmethod
    def _check_level_weights(level_weights, num_levels) -> list[float]:
        weights = list(level_weights)
        if len(weights) != num_levels:
            raise ValueError(
                f"level_weights must have one weight per level ({num_levels}: fine + "
                f"{num_levels - 1} coarse), got {weights!r}"
            )
        return [check_positive_float("level_weights", w, allow_zero=True) for w in weights]
