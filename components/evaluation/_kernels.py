"""Array kernels behind `ranking.rank_relevant_items`: numpy for CPU, torch for GPUs.

The ranking algorithm is written once against this small set of operations. On CPU the numpy
set is used: its ufuncs, bincount, take and nonzero are several times faster than torch's CPU
kernels for these shapes; it reuses its large work buffers between blocks (no page faults,
cache-warm memory), and runs query chunks on a few threads (numpy releases the GIL in these
loops).
The torch set runs the same steps on CUDA; tests also run it on CPU against the same
references.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

Result = TypeVar("Result")
Item = TypeVar("Item")

# CPU: scores per matrix product (a few hundred rows: near-peak BLAS speed, still cache-sized
# for L3) and per block of element-wise passes (~25 bytes per score: stays in L2/L3).
CPU_PART_ELEMENTS = 2**23
CPU_BLOCK_ELEMENTS = 2**20


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS limited to one thread (threadpoolctl, a scikit-learn dependency) if present."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class NumpyKernels:
    """CPU kernels on numpy arrays (views of CPU tensors: no copies)."""

    name = "numpy"

    def __init__(self, threads: int = 1) -> None:
        self.threads = max(1, int(threads))
        self._local = threading.local()  # work buffers are per thread
        self._pool: ThreadPoolExecutor | None = None
        self._scope: contextlib.ExitStack | None = None

    def __enter__(self) -> "NumpyKernels":
        """Start the worker threads (kept for the whole evaluation, with their buffers)."""
        self._scope = contextlib.ExitStack()
        # The workers use every thread, so BLAS is held to one thread meanwhile: its idle
        # threads would otherwise spin-wait and take cores from the workers.
        self._scope.enter_context(_single_threaded_blas())
        if self.threads > 1:
            self._pool = self._scope.enter_context(ThreadPoolExecutor(max_workers=self.threads))
        return self

    def __exit__(self, *exc) -> None:
        scope, self._scope, self._pool = self._scope, None, None
        if scope is not None:
            scope.close()

    def _buffer(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A reusable work array (contents undefined), grown when a larger one is needed."""
        buffers = self._local.__dict__.setdefault("buffers", {})
        size = int(np.prod(shape))
        buffer = buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.size < size:
            buffer = np.empty(size, dtype=dtype)
            buffers[name] = buffer
        return buffer[:size].reshape(shape)

    @staticmethod
    def chunk_rows(row_length: int) -> int:
        """Most query rows per chunk: one chunk is one matrix product of ~CPU_PART_ELEMENTS."""
        return max(1, CPU_PART_ELEMENTS // max(row_length, 1))

    def map_chunks(self, function: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        """function(item) for every chunk, results in order; on the worker threads when used as
        a context manager. A worker does all of a chunk's work (ranking and its per-query
        sums), so the threads never wait for each other or for the caller between chunks."""
        if self._pool is None:
            return map(function, items)
        return self._pool.map(function, items)

    def map_parts(self, function: Callable[[int, int], Result], num_rows: int, row_length: int) -> list[Result]:
        """function(begin, end) over row ranges of about CPU_PART_ELEMENTS scores, in order, in
        the calling thread (chunks, not parts, are what runs in parallel)."""
        step = max(1, CPU_PART_ELEMENTS // max(row_length, 1))
        return [function(begin, min(begin + step, num_rows)) for begin in range(0, num_rows, step)]

    @staticmethod
    def array(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    @staticmethod
    def to_numpy(values: np.ndarray) -> np.ndarray:
        return values

    def matmul_transposed(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        out = self._buffer("scores", (queries.shape[0], gallery.shape[0]), np.float32)
        return np.matmul(queries, gallery.T, out=out)  # numpy's BLAS beats torch's CPU matmul here

    def block_rows(self, num_rows: int, row_length: int) -> int:
        return max(1, CPU_BLOCK_ELEMENTS // max(row_length, 1))

    @staticmethod
    def arange(n: int, like: np.ndarray) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    @staticmethod
    def zeros_bool(n: int, like: np.ndarray) -> np.ndarray:
        return np.zeros(n, dtype=bool)

    @staticmethod
    def repeat(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.repeat(values, counts)

    @staticmethod
    def segment_min_max(values: np.ndarray, rows: np.ndarray, num_rows: int):
        """Min and max of `values` per row; rows ascending, every row 0..num_rows-1 present."""
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        return np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)

    @staticmethod
    def small_float64(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float64)

    @staticmethod
    def to_float32(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32)

    def bins(self, scores, shift, scale, low, high) -> np.ndarray:
        """int64 floor(clip((scores - shift) * scale, low, high)), row-wise parameters."""
        work = self._buffer("work", scores.shape, np.float32)
        np.subtract(scores, shift[:, None], out=work)
        np.multiply(work, scale[:, None], out=work)
        np.clip(work, low[:, None], high[:, None], out=work)
        out = self._buffer("bins", scores.shape, np.int64)
        np.copyto(out, work, casting="unsafe")  # values >= low >= 0: truncation is the floor
        return out

    @staticmethod
    def bincount(values: np.ndarray, length: int) -> np.ndarray:
        return np.bincount(values.reshape(-1), minlength=length)

    @staticmethod
    def cumsum(values: np.ndarray) -> np.ndarray:
        return np.cumsum(values)

    def take(self, table: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.take(table, index, out=self._buffer("taken", index.shape, table.dtype))

    @staticmethod
    def flatnonzero(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    @staticmethod
    def ravel(values: np.ndarray) -> np.ndarray:
        return values.reshape(-1)

    @staticmethod
    def float32_order_key(scores: np.ndarray) -> np.ndarray:
        """int64 keys ordered like the float32 scores (equal floats, incl. -0.0/+0.0: equal keys)."""
        bits = (scores + np.float32(0.0)).view(np.int32).astype(np.int64)
        return np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)

    @staticmethod
    def stable_argsort(keys: np.ndarray) -> np.ndarray:
        return np.argsort(keys, kind="stable")

    @staticmethod
    def run_starts(keys: np.ndarray) -> np.ndarray:
        """For keys whose equal values are contiguous: index of the first element of each run."""
        positions = np.arange(keys.shape[0], dtype=np.int64)
        change = np.ones(keys.shape[0], dtype=bool)
        change[1:] = keys[1:] != keys[:-1]
        return np.maximum.accumulate(np.where(change, positions, 0))

    @staticmethod
    def equal_to_previous(keys: np.ndarray) -> np.ndarray:
        """(n + 1,) bools: entry i (1 <= i < n) says keys[i] == keys[i - 1]; both ends False."""
        same = np.zeros(keys.shape[0] + 1, dtype=bool)
        np.equal(keys[1:], keys[:-1], out=same[1:-1])
        return same

    @staticmethod
    def searchsorted(sorted_keys: np.ndarray, values: np.ndarray, right: bool) -> np.ndarray:
        return np.searchsorted(sorted_keys, values, side="right" if right else "left")

    @staticmethod
    def row_counts(rows: np.ndarray, num_rows: int) -> np.ndarray:
        return np.bincount(rows, minlength=num_rows)

    @staticmethod
    def concatenate(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)


class TorchKernels:
    """The same operations with torch, on the tensors' device."""

    name = "torch"

    def __enter__(self) -> "TorchKernels":
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def array(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @staticmethod
    def block_rows(num_rows: int, row_length: int) -> int:
        return num_rows  # a GPU wants the whole chunk at once

    @staticmethod
    def chunk_rows(row_length: int) -> int | None:
        return None  # a GPU takes chunks as large as the caller's memory bound allows

    @staticmethod
    def map_chunks(function: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        return map(function, items)  # one stream of work: chunks run one after the other

    @staticmethod
    def map_parts(function: Callable[[int, int], Result], num_rows: int, row_length: int) -> list[Result]:
        return [function(0, num_rows)]  # a GPU takes the whole chunk at once

    @staticmethod
    def to_numpy(values: torch.Tensor) -> np.ndarray:
        return values.cpu().numpy()

    @staticmethod
    def matmul_transposed(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        return queries @ gallery.T

    @staticmethod
    def arange(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(n, dtype=torch.int64, device=like.device)

    @staticmethod
    def zeros_bool(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.bool, device=like.device)

    @staticmethod
    def repeat(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(values, counts)

    @staticmethod
    def segment_min_max(values: torch.Tensor, rows: torch.Tensor, num_rows: int):
        low = torch.empty(num_rows, dtype=values.dtype, device=values.device)
        high = torch.empty_like(low)
        low.scatter_reduce_(0, rows, values, reduce="amin", include_self=False)
        high.scatter_reduce_(0, rows, values, reduce="amax", include_self=False)
        return low, high

    @staticmethod
    def small_float64(values: torch.Tensor) -> torch.Tensor:
        return values.to(torch.float64)

    @staticmethod
    def to_float32(values: torch.Tensor) -> torch.Tensor:
        return values.to(torch.float32)

    @staticmethod
    def bins(scores, shift, scale, low, high) -> torch.Tensor:
        work = scores - shift[:, None]
        work.mul_(scale[:, None])
        torch.clamp(work, low[:, None], high[:, None], out=work)
        return work.to(torch.int64)  # values >= low >= 0: truncation is the floor

    @staticmethod
    def bincount(values: torch.Tensor, length: int) -> torch.Tensor:
        return torch.bincount(values.reshape(-1), minlength=length)

    @staticmethod
    def cumsum(values: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(values, 0)

    @staticmethod
    def take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.take(table, index)

    @staticmethod
    def flatnonzero(mask: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(mask.reshape(-1)).reshape(-1)

    @staticmethod
    def ravel(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(-1)

    @staticmethod
    def float32_order_key(scores: torch.Tensor) -> torch.Tensor:
        bits = (scores + 0.0).view(torch.int32).to(torch.int64)
        return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)

    @staticmethod
    def stable_argsort(keys: torch.Tensor) -> torch.Tensor:
        return torch.sort(keys, stable=True).indices

    @staticmethod
    def run_starts(keys: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(keys.shape[0], dtype=torch.int64, device=keys.device)
        change = torch.ones(keys.shape[0], dtype=torch.bool, device=keys.device)
        change[1:] = keys[1:] != keys[:-1]
        return torch.cummax(torch.where(change, positions, 0), 0).values

    @staticmethod
    def equal_to_previous(keys: torch.Tensor) -> torch.Tensor:
        same = torch.zeros(keys.shape[0] + 1, dtype=torch.bool, device=keys.device)
        same[1:-1] = keys[1:] == keys[:-1]
        return same

    @staticmethod
    def searchsorted(sorted_keys: torch.Tensor, values: torch.Tensor, right: bool) -> torch.Tensor:
        return torch.searchsorted(sorted_keys, values, right=right)

    @staticmethod
    def row_counts(rows: torch.Tensor, num_rows: int) -> torch.Tensor:
        return torch.bincount(rows, minlength=num_rows)

    @staticmethod
    def concatenate(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts)


def kernels_for(device: torch.device, prefer_torch: bool = False):
    """A kernel set for `device`: numpy on CPU (unless `prefer_torch`), torch elsewhere.

    The numpy set uses as many threads as torch does (torch.get_num_threads(), which follows
    OMP_NUM_THREADS / torch.set_num_threads).
    """
    if device.type != "cpu" or prefer_torch:
        return TorchKernels()
    return NumpyKernels(threads=torch.get_num_threads())
