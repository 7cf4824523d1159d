"""The two KV caches the stock decoder layers write into (both duck-type ``update(key, value, layer_idx)``).

After pruning at layer K, layers below K hold every prompt token and layers from K on only the kept
ones, so one length does not fit all layers.

- ``PrefixRecorder`` runs under the prompt prefill: each layer sees its whole prompt at once, so the
  layer's keys and values are simply kept (no copy) and handed back for attention.
- ``StaticKVCache`` runs under the question prefill and the decode steps: per layer one buffer
  ``[batch, kv_heads, prefix_l + tail_capacity, head_dim]`` allocated once per budget configuration.
  New tokens are written at ``prefix_l + tail_index`` (a device tensor, so a CUDA graph can replay the
  write) and attention reads the whole buffer under a mask that hides unwritten and padding slots.
  Nothing grows and nothing is concatenated per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class PrefixRecorder:
    """Collects each layer's prompt keys/values during a prefill (one call per layer)."""

    def __init__(self, num_layers: int):
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if self.keys[layer_idx] is not None:
            raise RuntimeError(f"layer {layer_idx} ran twice in one prefill")
        self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value

    # transformers' helpers probe these; this cache never runs inside their mask builders.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        key = self.keys[layer_idx]
        return 0 if key is None else key.shape[2]

    def __len__(self) -> int:
        return len(self.keys)


class StaticKVCache:
    """Preallocated per-layer buffers: a per-layer prefix followed by a tail shared by all layers."""

    def __init__(self, prefix_lengths: Sequence[int], tail_capacity: int, batch: int, kv_heads: int,
                 head_dim: int, *, dtype: torch.dtype, device: torch.device):
        self.prefix_lengths = [int(n) for n in prefix_lengths]
        self.tail_capacity = int(tail_capacity)
        self.batch = int(batch)
        self.keys = [torch.zeros((batch, kv_heads, n + tail_capacity, head_dim), dtype=dtype, device=device)
                     for n in self.prefix_lengths]
        self.values = [torch.zeros_like(k) for k in self.keys]
        # Where the tokens of the running call go, in tail coordinates: set by the caller before each run.
        self.tail_index = torch.zeros(1, dtype=torch.long, device=device)
        self.rows = batch  # rows the running call uses (a CUDA-graph bucket uses the first rows)
        self.loaded_prefix: object | None = None  # identity of the prefix in rows [:loaded_rows]
        self.loaded_rows = 0

    def capacity(self, layer: int) -> int:
        return self.keys[layer].shape[2]

    def load_prefix(self, keys: Sequence[Tensor], values: Sequence[Tensor], rows: int, identity: object) -> None:
        """Copy a prefix's per-layer keys/values ``[1, h, prefix_l, d]`` into the first ``rows`` rows."""
        if self.loaded_prefix is identity and self.loaded_rows >= rows:
            return  # the tails never write into the prefix slots, so it is still there
        start = self.loaded_rows if self.loaded_prefix is identity else 0
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            n = self.prefix_lengths[layer]
            if k.shape[2] != n:
                raise ValueError(f"layer {layer}: prefix holds {k.shape[2]} tokens, the cache was sized for {n}")
            self.keys[layer][start:rows, :, :n] = k
            self.values[layer][start:rows, :, :n] = v
        self.loaded_prefix, self.loaded_rows = identity, rows

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        slots = self.tail_index + self.prefix_lengths[layer_idx]
        k, v = self.keys[layer_idx][: self.rows], self.values[layer_idx][: self.rows]
        k.index_copy_(2, slots, key)
        v.index_copy_(2, slots, value)
        return k, v

    def nbytes(self, rows: int = 1, prefix_only: bool = True) -> int:
        total = 0
        for layer, k in enumerate(self.keys):
            n = self.prefix_lengths[layer] if prefix_only else k.shape[2]
            total += 2 * rows * k.shape[1] * n * k.shape[3] * k.element_size()
        return total

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.capacity(layer_idx)

    def __len__(self) -> int:
        return len(self.keys)
