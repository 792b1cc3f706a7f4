"""Slow, obviously-correct references for the retrieval metrics: one query at a time, full sort.

They implement the documented tie rule directly (`components.evaluation.retrieval`): the
query's gallery is cut into tie groups (equal scores), walked group by group in descending
score; the query itself is excluded from its own ranking.
- AP and the PR curve: scikit-learn's thresholds, one per group (precision at the group's end).
- MAP@R, R-precision, R@K: the expectation over a random order inside every group, summed
  position by position (the evaluator sums item by item, in closed form); R@K's miss
  probability as a product over the group's positions inside the cut.
`test_retrieval_metrics` also checks the expectations by enumerating every order on tiny data.
"""

from __future__ import annotations

import numpy as np


def tie_groups(scores: np.ndarray, gallery: np.ndarray, relevant_label, labels):
    """[(group size g, relevant items h)] for one query, in descending score."""
    values = scores[gallery].astype(np.float64)
    groups = []
    for value in sorted(set(values.tolist()), reverse=True):
        members = gallery[values == value]
        groups.append((len(members), int((labels[members] == relevant_label).sum())))
    return groups


def query_metrics(groups, ks, pr_points):
    """The metrics of one query from its tie groups (None without a relevant item)."""
    r = sum(h for _, h in groups)
    if r == 0:
        return None
    ap, items, hits, points = 0.0, 0, 0, []
    position_groups = []  # (a, g, h, c) for every position 1..G
    for g, h in groups:
        position_groups += [(items, g, h, hits)] * g
        items, hits = items + g, hits + h
        ap += h * hits / items                      # every hit of the group: precision at its end
        points.append((hits / r, hits / items))     # sklearn's precision_recall_curve point
    interpolated = np.array([
        max(p for recall, p in points if recall >= level - 1e-12)
        for level in np.linspace(0.0, 1.0, pr_points)
    ])

    # Position i (1-based) inside a group at positions a+1..a+g with c earlier hits:
    # E[rel(i)] = h/g; E[rel(i) * hits up to i] = h/g * (c + 1) + (i-a-1) * h(h-1) / (g(g-1)).
    map_at_r = r_precision = 0.0
    for i in range(1, r + 1):
        a, g, h, c = position_groups[i - 1]
        r_precision += h / g
        pair = (i - a - 1) * h * (h - 1) / (g * (g - 1)) if g > 1 else 0.0
        map_at_r += (h / g * (c + 1) + pair) / i

    recall = {}
    for k in ks:
        miss, items = 1.0, 0
        for g, h in groups:
            inside = min(max(k - items, 0), g)
            for j in range(inside):                 # draw the group's first `inside` positions
                miss *= (g - h - j) / (g - j)
            items += g
        recall[k] = 1.0 - miss
    return dict(ap=ap / r, map_at_r=map_at_r / r, r_precision=r_precision / r, recall=recall,
                pr=interpolated)


def per_query_metrics(scores, labels, ks, query_mask=None, gallery_mask=None, pr_points=101):
    """One dict per query (None when it has no relevant item): ap, map_at_r, r_precision,
    recall {k: expected 0/1 hit}, pr (interpolated precision per level)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    queries = np.flatnonzero(np.ones(n, bool) if query_mask is None else query_mask)
    gallery_all = np.flatnonzero(np.ones(n, bool) if gallery_mask is None else gallery_mask)
    return [
        query_metrics(tie_groups(scores[q], gallery_all[gallery_all != q], labels[q], labels), ks, pr_points)
        for q in queries
    ]


def summarise(rows, ks):
    """The metrics dict the evaluator returns, from per-query rows."""
    valid = [row for row in rows if row is not None]
    out = {
        "mAP": float(np.mean([row["ap"] for row in valid])),
        "MAP@R": float(np.mean([row["map_at_r"] for row in valid])),
        "R-precision": float(np.mean([row["r_precision"] for row in valid])),
    }
    for k in ks:
        out[f"R@{k}"] = float(np.mean([row["recall"][k] for row in valid]))
    out["num_queries"] = float(len(valid))
    out["num_queries_without_relevant"] = float(len(rows) - len(valid))
    return out


def mean_pr_curve(rows):
    return np.mean([row["pr"] for row in rows if row is not None], axis=0)
