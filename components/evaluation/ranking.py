"""Exact ranks of each query's relevant gallery items, computed without sorting the gallery.

Every retrieval metric used here (AP, MAP@R, R-precision, Recall@K, PR curves) depends only on
where a query's *relevant* items sit in its ranking. So instead of sorting all G gallery scores
of each query (O(G log G) per query, which dominates a naive evaluator) we count, for each
relevant item, how many gallery items score higher than it and how many score the same.

Ties: items with equal float32 scores form one *tie group* and are never ordered among
themselves (scikit-learn's `average_precision_score` semantics: one threshold per distinct
score). For each relevant item this module returns its group's span in the ranking
(`rank_first`..`rank_last`: the positions the group occupies, 1-based) and in the query's list
of hits (`hit_first`..`hit_last`). Nothing depends on the order of the gallery: the caller's
metrics (`retrieval.py`) are functions of these spans only. Scores compare as IEEE floats
(-0.0 equals +0.0); the query itself is never part of its own ranking.

Per chunk of B queries against all G gallery items:

1. scores = queries @ galleryᵀ in float32 (B x G, the only B x G float matrix kept).
2. Each row's scores are mapped to integer bins by a monotone function (subtract, multiply,
   clip, truncate: each step is monotone under IEEE rounding), so an item in a higher bin
   always has a strictly higher score, and equal scores always share a bin. The nb range
   bins span the row's relevant scores [min, max]; one bin below holds everything lower
   (never ahead of a relevant item), one above everything higher, and one extra bin holds
   only the query itself (never counted). A histogram and its cumulative sum give, per bin,
   how many items lie in strictly higher bins.
3. Only items sharing a bin with a relevant item ("candidates") need an exact comparison.
   They are few (about R x items-per-bin per row); sorting them by (row, score desc) puts
   each tie group in one contiguous run inside its bin's run.
4. A hit's (relevant candidate's) position in that order gives
   rank = 1 + (#items in higher bins) + (#candidates of its bin ahead of it), and its
   position among the row's hits gives k. A hit whose key (row, score) equals no
   neighbouring candidate's ties with nothing: rank_first = rank_last = rank and
   hit_first = hit_last = k. For the others, binary searches of the sorted keys find their
   tie group's first and last positions, among the candidates and among the hits.

Rounding in step 2 can only move an item into a neighbouring bin, which makes it a candidate:
results stay exact, only the candidate count grows (collapsed embeddings with masses of equal
scores are slow, not wrong). Rows are offset into one flat bin space so histogram, cumulative
sum and lookups are single 1-d operations.

The steps run on a small kernel set (`_kernels`): numpy on CPU, torch on GPU. On CPU the
score matrix of a chunk is processed in row blocks of about a million scores, so the
element-wise passes run in cache; chunks run on as many threads as torch uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Bin ranges narrower than this (relative to the score magnitude) are widened: a single
# relevant item (R = 1) gives a zero-width range, and float32 rounding of the shift would
# otherwise swamp the bin width.
_MIN_RELATIVE_WIDTH = 2.0**-8
_MIN_ABSOLUTE_WIDTH = 1e-12
# float32 rounding of shift, difference and product moves a score by < 3 bins; the relevant
# range is mapped this many bins inside the range bins so no relevant item falls into the
# open-ended "below" / "above" bins (which would make all those items candidates: slow).
_BIN_MARGIN = 4
# Flat bin ids are built in float32 and must be exact integers: keep B * (nb + 3) < 2^23.
MAX_FLAT_BINS = 2**23


@dataclass(frozen=True)
class GalleryLayout:
    """The gallery (in the caller's order) and, per class, its gallery columns."""

    embeddings: Any      # (G, D) float32 (kernel array type, on the device)
    labels: Any          # (G,) int64 class codes
    class_start: Any     # (C + 1,) offsets into class_columns (CSR)
    class_columns: Any   # (G,) gallery columns grouped by class, ascending inside a class

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])


def build_gallery_layout(
    gallery: torch.Tensor, gallery_codes: torch.Tensor, num_classes: int, kernels: Any
) -> GalleryLayout:
    """Index the gallery by class so a query's relevant items are a slice of `class_columns`."""
    order = torch.sort(gallery_codes, stable=True).indices  # ascending column inside a class
    counts = torch.bincount(gallery_codes, minlength=num_classes)
    class_start = torch.zeros(num_classes + 1, dtype=torch.int64, device=gallery_codes.device)
    class_start[1:] = torch.cumsum(counts, 0)
    return GalleryLayout(
        embeddings=kernels.array(gallery.contiguous()),
        labels=kernels.array(gallery_codes),
        class_start=kernels.array(class_start),
        class_columns=kernels.array(order),
    )


@dataclass(frozen=True)
class RelevantRanks:
    """Tie-group spans of the relevant items of a chunk of queries, flattened (numpy, int64).

    One entry per relevant item, grouped by query row (ascending) and, within a row, by
    descending score; entries of one tie group (equal scores) are adjacent and share all four
    spans. A query's tie group with g items, h of them relevant, holds ranks
    rank_first..rank_last (g = rank_last - rank_first + 1) and hits hit_first..hit_last
    (h = hit_last - hit_first + 1) of that query. Without ties, rank_first == rank_last is
    the item's rank and hit_first == hit_last is k, its position among the query's hits.
    """

    row: np.ndarray           # (M,) query row inside the chunk
    hit_first: np.ndarray     # (M,) 1 + relevant items scoring strictly higher
    hit_last: np.ndarray      # (M,) relevant items scoring higher or equal
    rank_first: np.ndarray    # (M,) 1 + gallery items scoring strictly higher
    rank_last: np.ndarray     # (M,) gallery items scoring higher or equal
    num_relevant: np.ndarray  # (B,) R per query


def rank_relevant_items(
    queries: Any,
    query_codes: Any,
    self_column: Any,
    layout: GalleryLayout,
    num_bins: int,
    kernels: Any,
) -> RelevantRanks:
    """Exact tie-group spans of each query's relevant items (method: module docstring).

    queries: (B, D) float32; query_codes: (B,) int64 class codes; self_column: (B,) int64
    gallery column of the query itself, -1 if it is not in the gallery (all three in the
    kernels' array type, on the gallery's device). Every query must have at least one
    relevant item (callers drop the others), and B * (num_bins + 3) < MAX_FLAT_BINS.
    """
    if num_bins < 4 * _BIN_MARGIN:
        raise ValueError(f"num_bins must be at least {4 * _BIN_MARGIN}, got {num_bins}")
    num_queries = int(queries.shape[0])
    if num_queries * (num_bins + 3) >= MAX_FLAT_BINS:
        raise ValueError(f"{num_queries} queries x {num_bins + 3} bins exceed {MAX_FLAT_BINS} flat bins")
    def rank_part(begin: int, end: int) -> list:
        # One matrix product per part (large products run near peak BLAS speed), then the
        # element-wise passes in row blocks small enough to stay in cache.
        scores = kernels.matmul_transposed(queries[begin:end], layout.embeddings)  # float32
        step = kernels.block_rows(end - begin, layout.size)
        found = []
        for first in range(0, end - begin, step):
            last = min(first + step, end - begin)
            rows, *spans = _rank_block(
                scores[first:last], query_codes[begin + first:begin + last],
                self_column[begin + first:begin + last], layout, num_bins, kernels,
            )
            found.append((rows + begin + first, *spans))
        return found

    parts = [block for part in kernels.map_parts(rank_part, num_queries, layout.size) for block in part]
    k = kernels
    columns = [k.concatenate([part[field] for part in parts]) for field in range(5)]
    hit_rows = columns[0]

    start = layout.class_start[query_codes]
    num_relevant = layout.class_start[query_codes + 1] - start - (self_column >= 0) * 1
    found = k.to_numpy(k.row_counts(hit_rows, num_queries))
    expected = k.to_numpy(num_relevant)
    if not np.array_equal(found, expected):  # an internal invariant, cheap to check
        raise RuntimeError("ranking found a different number of relevant items than expected")
    row, hit_first, hit_last, rank_first, rank_last = (k.to_numpy(values) for values in columns)
    return RelevantRanks(row=row, hit_first=hit_first, hit_last=hit_last, rank_first=rank_first,
                         rank_last=rank_last, num_relevant=expected)


def _rank_block(scores, query_codes, self_column, layout: GalleryLayout, num_bins: int, k):
    """(row, hit_first, hit_last, rank_first, rank_last) of every relevant item of a block of
    rows of the score matrix."""
    num_queries, gallery_size = int(scores.shape[0]), layout.size
    # Per row: bin 0 holds only the query itself (never counted, never a candidate), bin 1
    # everything below the relevant range, bins 2..nb+1 the range, bin nb+2 everything above.
    bins_per_row = num_bins + 3
    row_ids = k.arange(num_queries, query_codes)

    # Relevant (row, column) pairs: a slice of the class's gallery columns, minus the query.
    start = layout.class_start[query_codes]
    count = layout.class_start[query_codes + 1] - start
    rows = k.repeat(row_ids, count)
    first_entry = k.cumsum(count) - count
    slot = start[rows] + k.arange(rows.shape[0], query_codes) - first_entry[rows]
    columns = layout.class_columns[slot]
    not_self = columns != self_column[rows]
    relevant_rows = rows[not_self]
    relevant_flat = relevant_rows * gallery_size + columns[not_self]

    flat_scores = k.ravel(scores)
    # Monotone map of each row's scores to bins: [lowest, highest] relevant score ->
    # [2 + margin, nb + 1 - margin], plus the row's offset in the flat bin space.
    low_score, high_score = k.segment_min_max(flat_scores[relevant_flat], relevant_rows, num_queries)
    low64, high64 = k.small_float64(low_score), k.small_float64(high_score)
    magnitude = (abs(low64) + abs(high64)) * _MIN_RELATIVE_WIDTH
    width = (high64 - low64).clip(min=magnitude).clip(min=_MIN_ABSOLUTE_WIDTH)
    scale = (num_bins - 1 - 2 * _BIN_MARGIN) / width
    row_base = k.small_float64(row_ids) * bins_per_row
    shift = low64 - (2.0 + _BIN_MARGIN + row_base) / scale  # the offset folded into the shift
    bins = k.bins(scores, k.to_float32(shift), k.to_float32(scale),
                  k.to_float32(row_base + 1), k.to_float32(row_base + bins_per_row - 1))
    flat_bins = k.ravel(bins)
    has_self = k.flatnonzero(self_column >= 0)
    flat_bins[has_self * gallery_size + self_column[has_self]] = has_self * bins_per_row

    histogram = k.bincount(flat_bins, num_queries * bins_per_row)
    cumulative = k.cumsum(histogram)  # inclusive: items in this bin or lower bins (of all rows)
    row_total = cumulative[row_ids * bins_per_row + bins_per_row - 1]

    marked = k.zeros_bool(num_queries * bins_per_row, query_codes)
    marked[flat_bins[relevant_flat]] = True
    candidates = k.flatnonzero(k.take(marked, bins))  # row-major: (row, column) ascending
    cand_rows = candidates // gallery_size

    # Order by (row, score desc): equal keys are exactly the tie groups (same row, equal
    # float32 score). Their inner order is irrelevant: every member gets the group's spans.
    keys = (cand_rows << 32) | ((2**31 - 1) - k.float32_order_key(flat_scores[candidates]))
    order = k.stable_argsort(keys)
    candidates, cand_rows, keys = candidates[order], cand_rows[order], keys[order]
    cand_bins = flat_bins[candidates]
    # Bins are monotone in score (equal scores share a bin), so each bin's candidates are one
    # contiguous run in this order and each tie group a contiguous run inside it.
    ahead_in_bin = k.arange(candidates.shape[0], query_codes) - k.run_starts(cand_bins)

    cand_columns = candidates - cand_rows * gallery_size
    hit = k.flatnonzero(layout.labels[cand_columns] == query_codes[cand_rows])
    hit_rows, hit_bins = cand_rows[hit], cand_bins[hit]
    # The hit's position in the row's ranking, counting tied items ahead of it in the sorted
    # order: its rank where it ties with nothing.
    rank = 1 + (row_total[hit_rows] - cumulative[hit_bins]) + ahead_in_bin[hit]
    hit_number = k.arange(hit.shape[0], query_codes) - k.run_starts(hit_rows) + 1
    # Only hits whose key equals a neighbouring candidate's are in a tie group (float32 scores
    # of large galleries tie now and then; most hits are alone): their spans come from
    # binary searches of the sorted keys, all other hits keep rank_first = rank_last = rank.
    same_as_previous = k.equal_to_previous(keys)  # (C + 1,), False at both ends
    tied = k.flatnonzero(same_as_previous[hit] | same_as_previous[hit + 1])
    if tied.shape[0] == 0:
        return hit_rows, hit_number, hit_number, rank, rank
    tied_keys = keys[hit[tied]]
    tie_start, tie_end = k.searchsorted(keys, tied_keys, False), k.searchsorted(keys, tied_keys, True) - 1
    rank_first, rank_last = rank + 0, rank  # a copy, and rank itself (not used again)
    rank_first[tied] -= hit[tied] - tie_start
    rank_last[tied] += tie_end - hit[tied]
    # The hits keep the candidates' order (sorted keys): tie groups are runs here too.
    hit_keys = keys[hit]
    hit_tie_start = k.searchsorted(hit_keys, tied_keys, False)
    hit_tie_end = k.searchsorted(hit_keys, tied_keys, True) - 1
    hit_first, hit_last = hit_number + 0, hit_number
    hit_first[tied] -= tied - hit_tie_start
    hit_last[tied] += hit_tie_end - tied
    return hit_rows, hit_first, hit_last, rank_first, rank_last
