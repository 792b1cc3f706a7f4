"""Slow, obviously-correct references for the retrieval metrics: one query at a time, full sort.

They implement the documented ranking rule directly: descending score, ties broken by
ascending original index, the query itself excluded from its own ranking.
"""

from __future__ import annotations

import numpy as np


def ranked_gallery(scores: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Gallery item indices in rank order for one query's scores (indexed by item)."""
    # np.lexsort sorts by the last key first: score descending, then index ascending.
    return gallery[np.lexsort((gallery, -scores[gallery].astype(np.float64)))]


def per_query_metrics(scores, labels, ks, query_mask=None, gallery_mask=None, pr_points=101):
    """One dict per query (None when it has no relevant item): ap, map_at_r, r_precision,
    first (rank of the first hit), recall {k: 0/1}, pr (interpolated precision per level)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    queries = np.flatnonzero(np.ones(n, bool) if query_mask is None else query_mask)
    gallery_all = np.flatnonzero(np.ones(n, bool) if gallery_mask is None else gallery_mask)
    out = []
    for q in queries:
        order = ranked_gallery(scores[q], gallery_all[gallery_all != q])
        relevant = labels[order] == labels[q]
        r = int(relevant.sum())
        if r == 0:
            out.append(None)
            continue
        positions = np.flatnonzero(relevant) + 1          # ranks of the hits, 1-based
        precision_at_hits = np.arange(1, r + 1) / positions
        top_r = relevant[:r]
        map_at_r = sum((top_r[: i + 1].sum() / (i + 1)) for i in range(r) if top_r[i]) / r
        interpolated = []
        for i in range(pr_points):
            level = i / (pr_points - 1)
            recall_at_hits = np.arange(1, r + 1) / r
            interpolated.append(precision_at_hits[recall_at_hits >= level - 1e-12].max())
        out.append(dict(
            ap=float(precision_at_hits.mean()),
            map_at_r=float(map_at_r),
            r_precision=float(top_r.sum() / r),
            first=int(positions[0]),
            recall={k: float(positions[0] <= k) for k in ks},
            pr=np.array(interpolated),
        ))
    return out


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
