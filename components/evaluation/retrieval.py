"""Exact, streaming retrieval evaluation: mAP, MAP@R, R-precision, Recall@K, PR curves.

Protocol
--------
- Leave-one-out by default: every item queries all the others (it is never its own result).
- With `query_mask` / `gallery_mask` (boolean, one flag per item; a missing mask means
  "every item"), the query items rank the gallery items; an item that is both a query and in
  the gallery is excluded from its own ranking.
- Relevant = same label. A query with no relevant item in the gallery (a class with a single
  image, or a class absent from the gallery) has no defined AP: it is excluded from every
  metric and counted in `num_queries_without_relevant`.

Metrics (all averaged over the queries that have at least one relevant item)
-------------------------------------------------------------------------------
- mAP: average precision over the FULL ranking of the gallery, AP = (1/R) sum_k k / rank_k,
  with R relevant items, the k-th at rank rank_k (with ties: see below).
- MAP@R (Musgrave et al., 2020, "A metric learning reality check"): (1/R) sum over the top R
  positions i of P(i) * rel(i).
- R-precision: fraction of the top R results that are relevant.
- R@K: fraction of queries with at least one relevant item in the top K.
- PR curve (when asked): interpolated precision (max precision at any recall >= level) at
  evenly spaced recall levels 0..1, averaged over queries.

Ranking and ties
----------------
Features are L2-normalised first when `normalize=True` (the default; with normalised features
squared distance = 2 - 2 * dot, so ranking by dot product is ranking by distance). Scores are
float32 dot products (numpy's BLAS on CPU, torch / cuBLAS with TF32 disabled on GPU), ranked
by descending score. Items with equal scores form a tie group that is never ordered, so no
metric depends on the order of the input (a fully collapsed embedding scores chance):

- mAP and PR curves follow scikit-learn (`average_precision_score`, `precision_recall_curve`):
  each distinct score is one threshold, and every relevant item of a tie group gets the
  precision at the end of its group, (hits up to the group's end) / (items up to its end).
  So AP = (1/R) sum over groups of h_g * H_g / N_g (h_g relevant items in the group, H_g and
  N_g hits and items up to its end), exactly what `average_precision_score` returns.
- R@K, R-precision and MAP@R cut the ranking at a position (K or R), which can fall inside a
  tie group; there they are the EXPECTED value over a uniformly random order of every tie
  group (each order of the tied items equally likely), in closed form: a group of g items
  with h relevant, at positions a+1..a+g after c earlier hits, gives
  P(no hit in the top K) = C(g-h, m) / C(g, m) with m = K - a items of the group inside the
  cut, E[rel(i)] = h / g at each of its positions, and
  E[rel(i) * hits up to i] = (h/g) * (c + 1) + (i - a - 1) * h (h - 1) / (g (g - 1)).
  Where no group straddles the cut (no ties there) these are the plain definitions.
  A threshold rule has no answer for a tie straddling the cut (counting the whole group
  would make R@1 of a collapsed embedding 0, counting none would make it 1); the expectation
  is what a random tie-break gives on average, so it stays comparable with other tools.

Given the scores, all of this is exact. The scores' last bit depends on the matrix-product
kernel: CPU vs GPU, numpy vs torch, and even BLAS calls on rows that start at a different
memory alignment (as chunk_size or the thread count can cause) may round a score differently,
which can split or merge nearly tied items. On data whose scores are exact in float32
(small integers; tests use them), chunk_size, block sizes and threads change nothing.

Memory
------
Queries are processed in chunks against the whole gallery; nothing larger than
chunk_size x gallery_size is ever held (see `components.evaluation.ranking` for how ranks are
found without sorting each row). On CPU each worker thread takes whole chunks (ranking and
per-query sums), so the threads never wait for each other between chunks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from components.constants import (
    DEFAULT_RECALL_KS,
    METRIC_MAP,
    METRIC_MAP_AT_R,
    METRIC_R_PRECISION,
    NUM_QUERIES,
    NUM_QUERIES_WITHOUT_RELEVANT,
    recall_at,
)
from components.evaluation._inputs import (
    as_bool_mask,
    as_float_matrix,
    check_ks,
    encode_labels,
    resolve_device,
)
from components.evaluation._kernels import kernels_for
from components.evaluation.ranking import MAX_FLAT_BINS, build_gallery_layout, rank_relevant_items

# Extra keys of the returned dict (arrays and dicts, never MLflow metrics); the two counts it
# adds to the metrics, NUM_QUERIES and NUM_QUERIES_WITHOUT_RELEVANT, are in components.constants.
PER_CLASS_AP = "per_class_AP"          # dict label -> AP (only with return_per_class=True)
PR_RECALL = "pr_recall"                # np.ndarray of recall levels (return_pr_curve=True)
PR_PRECISION = "pr_precision"          # np.ndarray, mean interpolated precision per level

# Default bound on chunk_size x gallery_size (scores of one chunk): about 64 MB of float32
# scores plus, per thread, ~25 MB of work buffers on CPU (a GPU works on the whole chunk:
# about 20 bytes per score, ~350 MB).
DEFAULT_CHUNK_ELEMENTS = 2**24
DEFAULT_PR_POINTS = 101
BACKENDS = ("auto", "numpy", "torch")


@dataclass
class RetrievalResult:
    """Everything `evaluate_retrieval` computes; `metrics` is the plain dict of floats."""

    metrics: dict[str, float]
    query_index: np.ndarray            # (Q,) original indices of the queries
    num_relevant: np.ndarray           # (Q,) R per query (0: excluded from the metrics)
    average_precision: np.ndarray      # (Q,) AP per query, NaN when R == 0
    per_class_ap: dict[Any, float] | None = None
    pr_recall: np.ndarray | None = None
    pr_precision: np.ndarray | None = None

    @property
    def num_queries(self) -> int:
        return int((self.num_relevant > 0).sum())

    @property
    def num_queries_without_relevant(self) -> int:
        return int((self.num_relevant == 0).sum())


@contextlib.contextmanager
def _full_float32_matmul() -> Iterator[None]:
    """Exact float32 products: TF32 (CUDA) or bf16 (oneDNN) matmuls would change rankings."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _num_bins(gallery_size: int) -> int:
    # About one bin per two gallery items: the histogram stays smaller than the score matrix
    # while a bin holding a relevant item holds only a few other items (the candidates).
    # Capped so that one row's bins always fit the flat bin space (see ranking.py).
    return min(max(64, gallery_size // 2), MAX_FLAT_BINS // 2)


def _rows_per_chunk(requested: int | None, gallery_size: int, num_bins: int) -> int:
    if requested is not None and (
        isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {requested!r}")
    rows = DEFAULT_CHUNK_ELEMENTS // max(gallery_size, 1) if requested is None else int(requested)
    # The flat bin space of one chunk must stay exactly representable (see ranking.py).
    return max(1, min(rows, (MAX_FLAT_BINS - 1) // (num_bins + 3)))


def _interpolated_precision(row, precision, num_relevant, num_points) -> np.ndarray:
    """(B, num_points): max precision at any recall >= each level (rows have R >= 1).

    `precision` holds, per relevant item in rank order, the precision at the end of its tie
    group: the k-th hit of a row reaches recall >= k / R, and so do all later ones.
    """
    num_rows = num_relevant.shape[0]
    # Suffix maximum inside each row's segment with one running maximum over the reversed
    # list: precision <= 1, so adding 2 * (B - row) makes every value of a row larger than
    # all values of the rows after it (which come first when reversed): the maximum restarts.
    offset = 2.0 * (num_rows - row)
    suffix_max = np.maximum.accumulate((precision + offset)[::-1])[::-1] - offset
    # Recall level i/(P-1) is first reached at hit k = ceil(i * R / (P-1)) (at least 1);
    # integer arithmetic keeps the ceiling exact.
    levels = np.arange(num_points, dtype=np.int64)
    needed = np.maximum((levels[None, :] * num_relevant[:, None] + (num_points - 2)) // (num_points - 1), 1)
    row_start = np.cumsum(num_relevant) - num_relevant
    return suffix_max[row_start[:, None] + needed - 1]


# P(no hit in the top K) is an exact product of min(m, h) ratios below this many terms, and
# from log-gamma beyond (relative error ~1e-10 there; m, h > 1024 needs huge tie groups).
_EXACT_PRODUCT_TERMS = 1024


def _lgamma(x: np.ndarray) -> np.ndarray:
    """log Γ(x) elementwise, through torch: numpy has no log-gamma."""
    return torch.lgamma(torch.from_numpy(x)).numpy()


def _miss_probability(group: np.ndarray, hits: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """P(none of `hits` relevant items lands in the first `inside` of `group` shuffled items):
    C(g - h, m) / C(g, m) = C(g - m, h) / C(g, h), elementwise (h >= 1, 0 <= m <= g)."""
    probability = np.where(inside == 0, 1.0, 0.0)
    open_ = np.flatnonzero((inside > 0) & (inside <= group - hits))
    if open_.size == 0:
        return probability
    g = group[open_].astype(np.float64)
    # prod_{j < t} (g - u - j) / (g - j) with t = min(m, h), u = max(m, h): the shorter product.
    terms = np.minimum(inside[open_], hits[open_])
    other = np.maximum(inside[open_], hits[open_]).astype(np.float64)
    value = np.ones(open_.size)
    small = terms <= _EXACT_PRODUCT_TERMS
    for j in range(int(terms[small].max()) if small.any() else 0):
        running = small & (j < terms)
        value[running] *= (g[running] - other[running] - j) / (g[running] - j)
    if not small.all():
        big = ~small
        gb, ub, tb = g[big], other[big], terms[big].astype(np.float64)
        value[big] = np.exp(_lgamma(gb - ub + 1) - _lgamma(gb - ub - tb + 1) - _lgamma(gb + 1) + _lgamma(gb - tb + 1))
    probability[open_] = value
    return probability


@dataclass
class _QuerySums:
    """Per-query results of one chunk, from the tie-group spans of its relevant items."""

    average_precision_sum: np.ndarray  # sum over relevant items of the precision at their group's end
    map_at_r_sum: np.ndarray           # E[sum over the top R positions of P(i) * rel(i)]
    r_precision_hits: np.ndarray       # E[relevant items in the top R]
    first_ahead: np.ndarray            # items ranked strictly above the first tie group with a hit
    first_group: np.ndarray            # size of that group
    first_hits: np.ndarray             # relevant items in that group


def _query_sums(found, harmonic: np.ndarray) -> _QuerySums:
    """The per-query sums behind every metric (formulas: module docstring, "Ranking and ties")."""
    rows, size = found.row, found.num_relevant.shape[0]
    cut = found.num_relevant[rows]                     # R: MAP@R and R-precision stop there
    precision_at_end = found.hit_last / found.rank_last.astype(np.float64)
    # A relevant item alone in its group (g = 1) sits at rank_last: it counts k / rank_k in
    # MAP@R and 1 in R-precision when rank_k <= R.
    within = found.rank_last <= cut
    map_terms = np.where(within, precision_at_end, 0.0)
    top_r = within.astype(np.float64)
    tied = np.flatnonzero(found.rank_first != found.rank_last)
    if tied.size:
        map_terms[tied], top_r[tied] = _expected_tied_terms(
            found.rank_first[tied] - 1, found.rank_last[tied], found.hit_first[tied] - 1,
            found.hit_last[tied], cut[tied], harmonic)

    # Every row has a hit and entries are in rank order: a row's first entry is in its first
    # tie group holding a hit, and rows are ascending, so these are rows 0..B-1 in order.
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    return _QuerySums(
        average_precision_sum=np.bincount(rows, weights=precision_at_end, minlength=size),
        map_at_r_sum=np.bincount(rows, weights=map_terms, minlength=size),
        r_precision_hits=np.bincount(rows, weights=top_r, minlength=size),
        first_ahead=found.rank_first[first] - 1,
        first_group=found.rank_last[first] - found.rank_first[first] + 1,
        first_hits=found.hit_last[first] - found.hit_first[first] + 1,
    )


def _expected_tied_terms(ahead, rank_last, hits_before, hit_last, cut, harmonic):
    """(MAP@R term, expected count in the top R) of relevant items in tie groups of g > 1.

    a = ahead items before the group, g = its size, c = hits before it, h = its hits. Each
    relevant item is equally likely at each of the group's positions a+1..a+g; the MAP@R term
    is (1/g) sum over positions i = a+1..a+inside (inside the top R) of
    [(c+1) + (i-a-1)(h-1)/(g-1)] / i. With harmonic numbers H, sum 1/i = H[a+inside] - H[a]
    and sum (i-a-1)/i = inside - (a+1) * that.
    """
    group = rank_last - ahead
    group_hits = hit_last - hits_before
    inside = np.clip(cut - ahead, 0, group)
    reciprocal_sum = harmonic[ahead + inside] - harmonic[ahead]
    later_sum = np.clip(inside - (ahead + 1) * reciprocal_sum, 0.0, None)
    pair_share = (group_hits - 1) / (group - 1)
    map_terms = ((hits_before + 1) * reciprocal_sum + pair_share * later_sum) / group
    return map_terms, inside / group


def evaluate_retrieval(
    embeddings: Any,
    labels: Any,
    ks: Sequence[int] = DEFAULT_RECALL_KS,
    *,
    query_mask: Any = None,
    gallery_mask: Any = None,
    chunk_size: int | None = None,
    device: Any = None,
    normalize: bool = True,
    return_per_class: bool = False,
    return_pr_curve: bool = False,
    pr_points: int = DEFAULT_PR_POINTS,
    backend: str = "auto",
) -> RetrievalResult:
    """Exact retrieval metrics with per-query details; see the module docstring.

    embeddings: (N, D) numpy array or torch tensor. labels: (N,) ints, strings or a tensor.
    chunk_size: most queries per chunk (None: about 16M scores per chunk; on CPU chunks are
    further cut to one ~8M-score product each, at least one chunk per thread, ~40 MB per thread).
    device: None (the input tensor's device; CPU for numpy), 'auto' (CUDA if available), or a
    torch device. normalize: L2-normalise the features before scoring.
    backend: 'auto' (numpy kernels on CPU, torch on GPU), 'numpy' (CPU only) or 'torch'.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    features = as_float_matrix(embeddings, "embeddings")
    num_items = features.shape[0]
    encoded = encode_labels(labels, num_items)
    recall_ks = check_ks(ks)
    is_query = as_bool_mask(query_mask, num_items, "query_mask")
    in_gallery = as_bool_mask(gallery_mask, num_items, "gallery_mask")
    if not is_query.any():
        raise ValueError("query_mask selects no item (or embeddings is empty): at least one query is needed")
    if not in_gallery.any():
        raise ValueError("gallery_mask selects no item: the gallery would be empty")
    if isinstance(pr_points, bool) or not isinstance(pr_points, int) or pr_points < 2:
        raise ValueError(f"pr_points must be an int >= 2, got {pr_points!r}")
    target = resolve_device(device, embeddings)
    if backend == "numpy" and target.type != "cpu":
        raise ValueError(f"backend 'numpy' runs on CPU only, but device is {target}")
    kernels = kernels_for(target, prefer_torch=backend == "torch")

    features = features.to(target)
    if normalize:
        features = torch.nn.functional.normalize(features, dim=1)
    codes = encoded.codes
    gallery_index = np.flatnonzero(in_gallery)
    query_index = np.flatnonzero(is_query)
    gallery_codes = torch.from_numpy(codes[gallery_index]).to(target)
    gallery = features if in_gallery.all() else features[torch.from_numpy(gallery_index).to(target)]
    layout = build_gallery_layout(gallery, gallery_codes, encoded.num_classes, kernels)
    # R per query: gallery items of its class, minus itself when it is in the gallery.
    class_size = np.bincount(codes[gallery_index], minlength=encoded.num_classes)
    num_relevant = class_size[codes[query_index]] - in_gallery[query_index]
    # The gallery column of each item (-1 when not in the gallery) is the query's own column.
    column_of_item = np.full(num_items, -1, dtype=np.int64)
    column_of_item[gallery_index] = np.arange(gallery_index.shape[0])

    num_bins = _num_bins(layout.size)
    # Queries without a relevant item have no AP: they are skipped, not ranked.
    active = np.flatnonzero(num_relevant > 0)
    rows_per_chunk = _rows_per_chunk(chunk_size, layout.size, num_bins)
    cpu_rows = kernels.chunk_rows(layout.size)
    if cpu_rows is not None:  # CPU: one product per chunk, and at least one chunk per thread
        threads = getattr(kernels, "threads", 1)
        rows_per_chunk = max(1, min(rows_per_chunk, cpu_rows, -(-active.shape[0] // threads)))
    num_queries = query_index.shape[0]
    ap_sum = np.zeros(num_queries)
    map_at_r_sum = np.zeros(num_queries)
    r_precision_hits = np.zeros(num_queries)
    # The first tie group holding a hit, per query: what R@K needs.
    first_ahead = np.zeros(num_queries, dtype=np.int64)
    first_group = np.ones(num_queries, dtype=np.int64)
    first_hits = np.ones(num_queries, dtype=np.int64)
    pr_sum = np.zeros(pr_points) if return_pr_curve else None
    harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, layout.size + 1))]  # H[n] = sum_{i<=n} 1/i

    def rank_chunk(chunk: np.ndarray):
        """Everything one chunk contributes (runs on a kernel worker thread on CPU)."""
        items = query_index[chunk]
        with torch.no_grad():  # grad mode is per thread
            found = rank_relevant_items(
                kernels.array(features[torch.from_numpy(items).to(target)]),
                kernels.array(torch.from_numpy(codes[items]).to(target)),
                kernels.array(torch.from_numpy(column_of_item[items]).to(target)),
                layout, num_bins, kernels,
            )
        pr = None
        if return_pr_curve:
            precision_at_end = found.hit_last / found.rank_last.astype(np.float64)
            pr = _interpolated_precision(found.row, precision_at_end, found.num_relevant, pr_points).sum(axis=0)
        return chunk, _query_sums(found, harmonic), pr

    chunks = [active[begin:begin + rows_per_chunk] for begin in range(0, active.shape[0], rows_per_chunk)]
    with _full_float32_matmul(), torch.no_grad(), kernels:
        for chunk, sums, pr in kernels.map_chunks(rank_chunk, chunks):  # chunk positions are distinct
            ap_sum[chunk] = sums.average_precision_sum
            map_at_r_sum[chunk] = sums.map_at_r_sum
            r_precision_hits[chunk] = sums.r_precision_hits
            first_ahead[chunk], first_group[chunk], first_hits[chunk] = (
                sums.first_ahead, sums.first_group, sums.first_hits)
            if pr_sum is not None:
                pr_sum += pr

    valid = num_relevant > 0
    denominator = np.where(valid, num_relevant, 1).astype(np.float64)
    average_precision = np.where(valid, ap_sum / denominator, np.nan)

    def mean_over_valid(values: np.ndarray) -> float:
        return float(values[valid].mean()) if valid.any() else float("nan")

    metrics: dict[str, float] = {
        METRIC_MAP: mean_over_valid(average_precision),
        METRIC_MAP_AT_R: mean_over_valid(map_at_r_sum / denominator),
        METRIC_R_PRECISION: mean_over_valid(r_precision_hits / denominator),
    }
    for k in recall_ks:
        inside = np.clip(k - first_ahead, 0, first_group)  # first group's items within the top K
        metrics[recall_at(k)] = mean_over_valid(1.0 - _miss_probability(first_group, first_hits, inside))
    metrics[NUM_QUERIES] = float(valid.sum())
    metrics[NUM_QUERIES_WITHOUT_RELEVANT] = float((~valid).sum())

    result = RetrievalResult(
        metrics=metrics, query_index=query_index, num_relevant=num_relevant,
        average_precision=average_precision,
    )
    if return_per_class:
        query_codes = codes[query_index]
        # Keys are the caller's label values as Python scalars (np.str_ -> str, np.int64 -> int).
        result.per_class_ap = {
            encoded.classes[code].item(): float(average_precision[valid & (query_codes == code)].mean())
            for code in np.unique(query_codes[valid])
        }
    if pr_sum is not None:
        result.pr_recall = np.linspace(0.0, 1.0, pr_points)
        result.pr_precision = pr_sum / valid.sum() if valid.any() else np.full(pr_points, np.nan)
    return result


def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    ks: Sequence[int] = DEFAULT_RECALL_KS,
    *,
    query_mask: Any = None,
    gallery_mask: Any = None,
    chunk_size: int | None = None,
    device: Any = None,
    normalize: bool = True,
    return_per_class: bool = False,
    return_pr_curve: bool = False,
    backend: str = "auto",
) -> dict[str, Any]:
    """Retrieval metrics as a dict: mAP, MAP@R, R-precision, R@k for k in ks, plus
    num_queries / num_queries_without_relevant (as floats, so the dict is loggable as is).

    With return_per_class, key 'per_class_AP' maps label -> AP; with return_pr_curve, keys
    'pr_recall' and 'pr_precision' hold numpy arrays. Without those flags every value is a
    float. Arguments are those of `evaluate_retrieval`.
    """
    result = evaluate_retrieval(
        embeddings, labels, ks, query_mask=query_mask, gallery_mask=gallery_mask,
        chunk_size=chunk_size, device=device, normalize=normalize,
        return_per_class=return_per_class, return_pr_curve=return_pr_curve, backend=backend,
    )
    output: dict[str, Any] = dict(result.metrics)
    if return_per_class:
        output[PER_CLASS_AP] = result.per_class_ap
    if return_pr_curve:
        output[PR_RECALL] = result.pr_recall
        output[PR_PRECISION] = result.pr_precision
    return output
