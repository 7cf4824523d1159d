"""One Llama / Qwen2 decoder layer, written out for the static runtime (in the style of gpt-fast).

transformers' own layer is the reference: the parity tests compare this one with it and with
``generate``. This one computes the same math with fewer, larger kernels and no cache object:

- q/k/v and gate/up are one GEMM each. The fused weights are built once, at load time, and the
  stock modules' weights become views into them, so nothing is stored twice and transformers'
  ``generate`` still runs on the very same tensors.
- The caller passes cos/sin, the KV buffers and what each token may see. One function body therefore
  serves every layer, and ``torch.compile`` compiles it once per mode instead of once per layer.
- Two attention modes:

  ``prompt_layer``   a whole prompt attends causally to itself (SDPA without a mask, so CUDA runs
                     flash attention with grouped KV heads); the caller keeps the keys/values.
  ``cached_layer``   R rows of new tokens (questions, or one generated token each) attend to the
                     prefix every row shares and to their own row's tail. The prefix is multiplied
                     with all rows' queries at once, so it is read once per step whatever R is, and
                     it is never copied into the rows. The two parts meet in one softmax through a
                     shared row maximum (the split-KV merge of flash-decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Projection = Tensor | nn.Module
"""A projection's weight, or (quantized weights) a module that owns its kernel and bias."""


class LayerWeights(NamedTuple):
    input_norm: Tensor
    post_norm: Tensor
    qkv: Projection  # [(heads + 2 kv_heads) head_dim, hidden]
    qkv_bias: Tensor | None
    o: Projection
    o_bias: Tensor | None
    gate_up: Projection  # [2 ffn, hidden]
    gate_up_bias: Tensor | None
    down: Projection
    down_bias: Tensor | None


class Concat(nn.Module):
    """Projections that read the same input, run one after the other: packed low-bit weights (``weights=int8|
    int4|fp8``) cannot be concatenated into one GEMM, so quantized layers keep their stock projections."""

    def __init__(self, projections: list[nn.Module]):
        super().__init__()
        self.projections = nn.ModuleList(projections)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([p(x) for p in self.projections], dim=-1)


def _linear(x: Tensor, weight: Projection, bias: Tensor | None) -> Tensor:
    return F.linear(x, weight, bias) if isinstance(weight, Tensor) else weight(x)


def _plain(module: nn.Module) -> bool:
    """A stock ``nn.Linear`` with a plain weight (not a quantized module or a tensor subclass)."""
    return type(module) is nn.Linear and type(module.weight) is nn.Parameter


@dataclass(frozen=True)
class LayerShape:
    """The layer's sizes as plain fields: torch.compile keeps them constants (derived properties it would not)."""

    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    groups: int = 0  # query heads per KV head
    scale: float = 0.0  # 1 / sqrt(head_dim)

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", self.heads // self.kv_heads)
        object.__setattr__(self, "scale", self.head_dim**-0.5)


def _fuse(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """One weight (and bias) for linears that read the same input; their own parameters become views of it."""
    weights = [lin.weight for lin in linears]
    storage = weights[0].untyped_storage()
    adjacent = all(w.untyped_storage().data_ptr() == storage.data_ptr() and w.is_contiguous() for w in weights) and all(
        a.storage_offset() + a.numel() == b.storage_offset() for a, b in pairwise(weights))
    rows = sum(w.shape[0] for w in weights)
    if adjacent:  # fused already (a second runner on the same model): view the same memory
        fused = weights[0].new_empty(0).set_(storage, weights[0].storage_offset(), (rows, weights[0].shape[1]))
    else:
        fused = torch.cat([w.detach() for w in weights])
    biases = [lin.bias for lin in linears]
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[start : start + n], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    return fused, bias


def fuse_layer(layer: nn.Module) -> LayerWeights:
    """The fused weights of a transformers ``LlamaDecoderLayer`` / ``Qwen2DecoderLayer``."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if not all(_plain(p) for p in projections):
        return LayerWeights(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                            Concat([attn.q_proj, attn.k_proj, attn.v_proj]), None, attn.o_proj, None,
                            Concat([mlp.gate_proj, mlp.up_proj]), None, mlp.down_proj, None)
    qkv, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
    gate_up, gate_up_bias = _fuse([mlp.gate_proj, mlp.up_proj])
    return LayerWeights(layer.input_layernorm.weight, layer.post_attention_layernorm.weight, qkv, qkv_bias,
                        attn.o_proj.weight, attn.o_proj.bias, gate_up, gate_up_bias, mlp.down_proj.weight,
                        mlp.down_proj.bias)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # transformers' order of operations (fp32 statistics, scale after casting back), so the results match.
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _qkv(x: Tensor, cos: Tensor, sin: Tensor, w: LayerWeights, shape: LayerShape) -> tuple[Tensor, Tensor, Tensor]:
    """Normed input -> q [R, S, heads, d], k and v [R, S, kv_heads, d], with RoPE on q and k."""
    rows, length, _ = x.shape
    q_size, kv_size = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    q, k, v = _linear(rms_norm(x, w.input_norm, shape.eps), w.qkv, w.qkv_bias).split([q_size, kv_size, kv_size], -1)
    q = q.view(rows, length, shape.heads, shape.head_dim)
    k = k.view(rows, length, shape.kv_heads, shape.head_dim)
    v = v.view(rows, length, shape.kv_heads, shape.head_dim)
    cos, sin = cos[:, :, None], sin[:, :, None]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


def _finish(x: Tensor, attended: Tensor, w: LayerWeights, shape: LayerShape) -> Tensor:
    """Output projection and residual, then the SwiGLU MLP and residual."""
    x = x + _linear(attended, w.o, w.o_bias)
    gate, up = _linear(rms_norm(x, w.post_norm, shape.eps), w.gate_up, w.gate_up_bias).chunk(2, dim=-1)
    return x + _linear(F.silu(gate) * up, w.down, w.down_bias)


def prompt_layer(x: Tensor, cos: Tensor, sin: Tensor, w: LayerWeights, shape: LayerShape) -> tuple[Tensor, Tensor, Tensor]:
    """A prompt ``x [1, S, D]`` attending causally to itself; returns it and its keys/values ``[1, kv_heads, S, d]``."""
    rows, length, _ = x.shape
    q, k, v = _qkv(x, cos, sin, w, shape)
    k, v = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    attended = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True, scale=shape.scale,
                                              enable_gqa=shape.groups > 1)
    return _finish(x, attended.transpose(1, 2).reshape(rows, length, -1), w, shape), k, v


def split_kv_attention(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, tail_k: Tensor, tail_v: Tensor,
                       hidden: Tensor, scale: float) -> Tensor:
    """Attention of ``q [R, kv_heads, n, d]`` (n = groups x new tokens, grouped per KV head) over a shared
    prefix ``[1, kv_heads, P, d]`` (all visible) and each row's tail ``[R, kv_heads, T, d]`` minus the slots
    ``hidden [R, 1, n, T]`` marks. Scores are in the model dtype and the softmax in fp32, as in transformers'
    eager attention."""
    rows, kv_heads, n, head_dim = q.shape
    # All rows' queries in one GEMM per KV head: the prefix is read once for the whole batch.
    s_prefix = torch.matmul(q.transpose(0, 1).reshape(kv_heads, rows * n, head_dim), prefix_k[0].transpose(1, 2))
    s_prefix = (s_prefix * scale).view(kv_heads, rows, n, -1).transpose(0, 1)  # [R, kv_heads, n, P]
    s_tail = (torch.matmul(q, tail_k.transpose(2, 3)) * scale).masked_fill(hidden, float("-inf"))
    top = torch.maximum(s_prefix.amax(-1, keepdim=True), s_tail.amax(-1, keepdim=True)).float()
    e_prefix, e_tail = (s_prefix.float() - top).exp(), (s_tail.float() - top).exp()
    total = e_prefix.sum(-1, keepdim=True) + e_tail.sum(-1, keepdim=True)
    p_prefix = (e_prefix / total).to(q.dtype).transpose(0, 1).reshape(kv_heads, rows * n, -1)
    out_prefix = torch.matmul(p_prefix, prefix_v[0]).view(kv_heads, rows, n, head_dim).transpose(0, 1)
    return out_prefix + torch.matmul((e_tail / total).to(q.dtype), tail_v)


def tail_mask(visible: Tensor, groups: int) -> Tensor:
    """``visible [R, S, T]`` (token s of row r may see tail slot t) -> the ``hidden`` mask ``[R, 1, groups S, T]``
    of ``split_kv_attention``; built once per step, shared by every layer."""
    rows, length, window = visible.shape
    return (~visible)[:, None].expand(rows, groups, length, window).reshape(rows, 1, groups * length, window)


def cached_layer(x: Tensor, cos: Tensor, sin: Tensor, w: LayerWeights, shape: LayerShape, prefix_k: Tensor,
                 prefix_v: Tensor, tail_k: Tensor, tail_v: Tensor, slots: Tensor, hidden: Tensor) -> Tensor:
    """New tokens ``x [R, S, D]`` of R rows on the KV buffers of this layer.

    Their keys/values go to ``slots [S]`` of the first R rows of ``tail_k/v [rows, kv_heads, capacity, d]``;
    they attend to the whole prefix and to the first T tail slots of their row except those ``hidden``
    (``tail_mask``) marks.
    """
    rows, length, _ = x.shape
    window = hidden.shape[-1]
    q, k, v = _qkv(x, cos, sin, w, shape)
    tail_k[:rows, :, slots] = k.transpose(1, 2)
    tail_v[:rows, :, slots] = v.transpose(1, 2)
    # [R, S, kv_heads, groups, d] -> [R, kv_heads, groups * S, d]: the query heads that share a KV head.
    q = q.view(rows, length, shape.kv_heads, shape.groups, shape.head_dim).permute(0, 2, 3, 1, 4)
    q = q.reshape(rows, shape.kv_heads, shape.groups * length, shape.head_dim)
    attended = split_kv_attention(q, prefix_k, prefix_v, tail_k[:rows, :, :window], tail_v[:rows, :, :window], hidden,
                                  shape.scale)
    attended = attended.view(rows, shape.kv_heads, shape.groups, length, shape.head_dim).permute(0, 3, 1, 2, 4)
    return _finish(x, attended.reshape(rows, length, -1), w, shape)
