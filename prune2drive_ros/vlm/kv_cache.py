"""A KV cache whose layers may hold different numbers of prefix tokens.

After pruning at layer K, layers below K hold every prefix token and layers from K on hold only the
kept ones, so the usual one-length-fits-all cache does not apply. Each layer owns a preallocated
buffer ``[B, kv_heads, capacity, head_dim]``: a per-layer *prefix* (the visual prefix, possibly
pruned) followed by a *tail* shared by all layers (question tokens, then generated tokens). The
class duck-types the ``update(key, value, layer_idx)`` call that transformers' attention modules
make, so the stock decoder layers write into it.
"""

from __future__ import annotations

import torch


class PrunedKVCache:
    def __init__(self, num_layers: int, reserve: int = 0):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers
        self.prefix_lengths = [0] * num_layers
        self.reserve = reserve

    # -- the interface transformers' attention calls -------------------------------------------
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        start, new = self.lengths[layer_idx], key.shape[2]
        buf_k = self.keys[layer_idx]
        if buf_k is None or buf_k.shape[2] < start + new:
            capacity = start + new + self.reserve
            self._grow(layer_idx, key, capacity)
        self.keys[layer_idx][:, :, start : start + new] = key
        self.values[layer_idx][:, :, start : start + new] = value
        self.lengths[layer_idx] = start + new
        end = start + new
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def _grow(self, layer: int, like: torch.Tensor, capacity: int) -> None:
        b, h, _, d = like.shape
        k = like.new_empty((b, h, capacity, d))
        v = like.new_empty((b, h, capacity, d))
        n = self.lengths[layer]
        if n:
            k[:, :, :n] = self.keys[layer][:, :, :n]
            v[:, :, :n] = self.values[layer][:, :, :n]
        self.keys[layer], self.values[layer] = k, v

    # -- prefix sharing ------------------------------------------------------------------------
    def seal_prefix(self) -> None:
        """Mark everything written so far as the prefix that later tails attend to."""
        self.prefix_lengths = list(self.lengths)

    def fork(self, batch: int, tail_capacity: int) -> PrunedKVCache:
        """A new cache holding this cache's prefix for ``batch`` sequences, with room for a tail."""
        child = PrunedKVCache(len(self.keys), reserve=self.reserve)
        child.prefix_lengths = list(self.prefix_lengths)
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            n = self.prefix_lengths[layer]
            shape = (batch, k.shape[1], n + tail_capacity, k.shape[3])
            child.keys[layer] = k.new_empty(shape)
            child.values[layer] = v.new_empty(shape)
            child.keys[layer][:, :, :n] = k[:1, :, :n]
            child.values[layer][:, :, :n] = v[:1, :, :n]
            child.lengths[layer] = n
        return child

    def tail_length(self) -> int:
        return self.lengths[0] - self.prefix_lengths[0]

    def nbytes(self, prefix_only: bool = True) -> int:
        total = 0
        for layer, k in enumerate(self.keys):
            if k is None:
                continue
            n = self.prefix_lengths[layer] if prefix_only else self.lengths[layer]
            total += 2 * k.shape[0] * k.shape[1] * n * k.shape[3] * k.element_size()
        return total

    # transformers' helpers probe these; this cache never runs inside its mask builders.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def __len__(self) -> int:
        return len(self.keys)
