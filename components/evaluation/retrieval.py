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
  with R relevant items, the k-th at rank rank_k.
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
float32 dot products (numpy's BLAS on CPU, torch / cuBLAS with TF32 disabled on GPU). The
ranking is by descending score; tied scores are broken by ascending index of the item in the
input array. Given the scores, this rule is exact and deterministic. Different matrix-product
kernels (CPU vs GPU, numpy vs torch) may round a score differently in its last bit, which can
swap two nearly tied items; chunk_size only changes the number of rows per product (numpy's
BLAS gives bit-identical rows whatever that number; tests check results do not change).
scikit-learn's `average_precision_score` instead puts tied scores at one threshold (every
tied item gets the precision at the end of the tie); both agree whenever no relevant item of
the query has a tied score (with a relevant or a non-relevant item).

Memory
------
Queries are processed in chunks against the whole gallery; nothing larger than
chunk_size x gallery_size is ever held (see `components.evaluation.ranking` for how ranks are
found without sorting each row).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from components.constants import (
    DEFAULT_RECALL_KS,
    METRIC_MAP,
    METRIC_MAP_AT_R,
    METRIC_R_PRECISION,
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

# Extra keys of the metrics dict. TODO(lead): move to components.constants if MLflow logs them.
NUM_QUERIES = "num_queries"
NUM_QUERIES_WITHOUT_RELEVANT = "num_queries_without_relevant"
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


def _interpolated_precision(row, hit_number, rank, num_relevant, num_points) -> np.ndarray:
    """(B, num_points): max precision at any recall >= each level (rows have R >= 1)."""
    num_rows = num_relevant.shape[0]
    precision = hit_number / rank.astype(np.float64)
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
    chunk_size: queries per chunk (None: about 16M scores per chunk, ~120 MB of memory on CPU).
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
    rows_per_chunk = _rows_per_chunk(chunk_size, layout.size, num_bins)
    max_k = recall_ks[-1]
    num_queries = query_index.shape[0]
    ap_sum = np.zeros(num_queries)
    map_at_r_sum = np.zeros(num_queries)
    r_precision_hits = np.zeros(num_queries)
    first_rank = np.full(num_queries, max_k + 1, dtype=np.int64)
    pr_sum = np.zeros(pr_points) if return_pr_curve else None

    # Queries without a relevant item have no AP: they are skipped, not ranked.
    active = np.flatnonzero(num_relevant > 0)
    with _full_float32_matmul(), torch.no_grad(), kernels:
        for begin in range(0, active.shape[0], rows_per_chunk):
            chunk = active[begin:begin + rows_per_chunk]  # positions in query_index
            items = query_index[chunk]
            found = rank_relevant_items(
                kernels.array(features[torch.from_numpy(items).to(target)]),
                kernels.array(torch.from_numpy(codes[items]).to(target)),
                kernels.array(torch.from_numpy(column_of_item[items]).to(target)),
                layout, num_bins, kernels,
            )
            rows, count, size = found.row, found.num_relevant, chunk.shape[0]
            precision_at_hit = found.hit_number / found.rank.astype(np.float64)
            within_r = found.rank <= count[rows]
            # Per-query sums over the chunk's rows (chunk positions are distinct).
            ap_sum[chunk] = np.bincount(rows, weights=precision_at_hit, minlength=size)
            map_at_r_sum[chunk] = np.bincount(rows[within_r], weights=precision_at_hit[within_r], minlength=size)
            r_precision_hits[chunk] = np.bincount(rows[within_r], minlength=size)
            first = found.hit_number == 1
            first_rank[chunk[rows[first]]] = np.minimum(found.rank[first], max_k + 1)
            if pr_sum is not None:
                pr_sum += _interpolated_precision(rows, found.hit_number, found.rank, count, pr_points).sum(axis=0)

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
        metrics[recall_at(k)] = mean_over_valid((first_rank <= k).astype(np.float64))
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
