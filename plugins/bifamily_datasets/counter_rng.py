"""Counter-based random numbers: uniforms that are a pure function of (key, index, column).

A data set item must look the same whether it is drawn alone, in a batch, in a worker process or after
a resume, so its randomness cannot come from a stateful generator. Instead every number is a hash of
a key (made from the seed, split, epoch...), the item's index and the number's position in the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9

Word = TypeVar("Word", int, torch.Tensor)


def _mul32(x: Word, constant: int) -> Word:
    """(x * constant) mod 2**32 for 32-bit values, split in halves so int64 tensors never overflow."""
    low = (x & 0xFFFF) * constant
    high = (((x >> 16) * constant) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(x: Word) -> Word:
    """A 32-bit integer finaliser with full avalanche (xor-shift / multiply rounds).

    Works the same on Python ints and on int64 tensors holding 32-bit values.
    """
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def key_of(*words: int) -> int:
    """A 32-bit key from a few ints (seed, split id, epoch...), each taken modulo 2**64."""
    state = 0
    for word in words:
        word &= (1 << 64) - 1
        for limb in (word & _MASK32, word >> 32):
            state = _mix32(((state ^ _mix32(limb)) + _GOLDEN) & _MASK32)
    return state


def uniforms(key: int, indices: torch.Tensor | Sequence[int], count: int) -> torch.Tensor:
    """(len(indices), count) float32 uniforms in [0, 1): number j of item i depends only on (key, i, j)."""
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1, 1) & _MASK32
    column = torch.arange(1, count + 1, dtype=torch.int64).reshape(1, -1)
    per_item = _mix32(((_mix32(index) ^ key) + _GOLDEN) & _MASK32)
    bits = _mix32((per_item + _mul32(column, _GOLDEN)) & _MASK32)
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))
