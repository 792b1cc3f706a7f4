"""Stable integer hashing for deterministic, order-independent random streams.

Every random decision of the synthetic source is seeded from a hash of *what* it is about
(catalogue seed, class index, instance seed, ...), never from a shared stream, so that any
item can be rendered alone, in any process, in any order, and come out byte-identical.
Python's built-in ``hash`` is salted per process, hence this splitmix64-based mixer.
"""

from __future__ import annotations

import zlib

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def _finalize(z: int) -> int:
    """splitmix64 output function: a bijective avalanche of 64-bit integers."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix64(*values: int) -> int:
    """Hash a sequence of integers (any sign, any size below 2**64) to one 64-bit integer."""
    h = 0x243F6A8885A308D3
    for value in values:
        h = _finalize((h + _GOLDEN_GAMMA + (value & _MASK64)) & _MASK64)
    return h


def unit_float(h: int) -> float:
    """Map a 64-bit hash to a float uniform in [0, 1) (top 53 bits, like ``random.random``)."""
    return (h >> 11) * (1.0 / (1 << 53))


def text_key(text: str) -> int:
    """A stable 32-bit integer for a string (for mixing names into seeds)."""
    return zlib.crc32(text.encode("utf-8"))
