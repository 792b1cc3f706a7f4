"""How well embedding distance ranks continuous-attribute distance (the log-ratio loss's goal).

For continuous labels (e.g. a vehicle's length and width) retrieval is not right or wrong:
the nearer two samples' attributes, the nearer their embeddings should be. Two scores, per
query against every other retrieval item, averaged over queries:

- Spearman's ρ between the embedding distances and the attribute distances (scipy's
  `spearmanr`: ranks with ties averaged), 1 for a perfect ranking, about 0 for a random one.
- nDCG@k (scikit-learn's `ndcg_score`) of the ranking by embedding distance, with relevance
  1 / (1 + attribute distance): the k nearest in embedding space should be the k nearest in
  attribute space.

Attributes are standardised per column over the evaluated items first, so one attribute's
unit (length in metres spans more than width) does not decide the distance. Queries are a
seeded sample of at most `max_queries` items (the per-query cost is O(N)); the query itself is
left out of its own ranking.
"""

from __future__ import annotations

import numpy as np

from components import constants as C


def attribute_ranking_metrics(embeddings: np.ndarray, attributes: np.ndarray, *, k: int = 10,
                              max_queries: int = 1000, seed: int = 0) -> dict[str, float]:
    """{attribute_spearman, attribute_nDCG@k} of `embeddings` [N, D] against `attributes` [N, A]."""
    from scipy.stats import spearmanr
    from sklearn.metrics import ndcg_score

    features = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(attributes, dtype=np.float64)
    if labels.ndim == 1:
        labels = labels[:, None]
    if features.ndim != 2 or labels.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"embeddings [N, D] and attributes [N, A] must have one row per item, got "
                         f"{features.shape} and {labels.shape}")
    if len(features) < 3:
        raise ValueError(f"attribute ranking needs at least 3 items, got {len(features)}")
    if not np.isfinite(labels).all():
        raise ValueError("attributes must be finite numbers")
    spread = labels.std(axis=0)
    labels = (labels - labels.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    n = len(features)
    queries = np.random.default_rng(seed).permutation(n)[:max_queries]
    rhos, gains, scores = [], [], []
    for q in queries:
        others = np.arange(n) != q
        embedding_distance = np.linalg.norm(features[others] - features[q], axis=1)
        attribute_distance = np.linalg.norm(labels[others] - labels[q], axis=1)
        rho = spearmanr(embedding_distance, attribute_distance).statistic
        rhos.append(0.0 if np.isnan(rho) else float(rho))   # constant distances: no ranking
        gains.append(1.0 / (1.0 + attribute_distance))
        scores.append(-embedding_distance)
    ndcg = ndcg_score(np.stack(gains), np.stack(scores), k=k)
    return {C.METRIC_ATTRIBUTE_SPEARMAN: float(np.mean(rhos)), C.attribute_ndcg_at(k): float(ndcg)}
