"""The KV buffers of the static runtime: one shared prefix per layer, one tail per row.

After pruning at layer K, layers below K hold every prompt token and layers from K on only the kept
ones, so one length does not fit all layers. Per layer l:

    prefix_k[l], prefix_v[l]   [1, kv_heads, P_l, head_dim]      written by the prompt prefill, read by every row
    tail_k[l],  tail_v[l]      [rows, kv_heads, T, head_dim]     row r: its question, then its generated tokens

Every row attends to the one prefix copy (``layers.split_kv_attention``), so a batch of eight
questions neither copies nor re-reads the prefix eight times. The tail of a row is laid out as

    [ question slots (the question bucket, Q) | generated slots ]

so a generated token t of a row goes to slot Q + t, and a step reads only the first Q + new-token slots.
Everything is allocated once per budget configuration; nothing grows and nothing is concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class StaticKVCache:
    def __init__(self, prefix_lengths: Sequence[int], rows: int, tail_capacity: int, kv_heads: int, head_dim: int,
                 *, dtype: torch.dtype, device: torch.device):
        self.prefix_lengths = [int(n) for n in prefix_lengths]
        self.rows, self.tail_capacity = int(rows), int(tail_capacity)
        self.prefix_k = [torch.zeros((1, kv_heads, n, head_dim), dtype=dtype, device=device) for n in self.prefix_lengths]
        self.prefix_v = [torch.zeros_like(k) for k in self.prefix_k]
        tail = (self.rows, kv_heads, self.tail_capacity, head_dim)
        self.tail_k = [torch.zeros(tail, dtype=dtype, device=device) for _ in self.prefix_lengths]
        self.tail_v = [torch.zeros(tail, dtype=dtype, device=device) for _ in self.prefix_lengths]

    @classmethod
    def on_prefix(cls, keys: Sequence[Tensor], values: Sequence[Tensor], rows: int, tail_capacity: int) -> StaticKVCache:
        """A cache whose prefix is a prefill's own keys/values, not copied (decoding after a question-dependent
        prefill, eagerly)."""
        cache = cls.__new__(cls)
        cache.prefix_lengths = [k.shape[2] for k in keys]
        cache.rows, cache.tail_capacity = int(rows), int(tail_capacity)
        cache.prefix_k, cache.prefix_v = list(keys), list(values)
        tail = (cache.rows, keys[0].shape[1], cache.tail_capacity, keys[0].shape[3])
        cache.tail_k = [keys[0].new_zeros(tail) for _ in keys]
        cache.tail_v = [keys[0].new_zeros(tail) for _ in keys]
        return cache

    def prefix_nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.prefix_k)

    def __len__(self) -> int:
        return len(self.prefix_lengths)
