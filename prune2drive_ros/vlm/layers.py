"""One Llama / Qwen2 decoder layer, written out for the static runtime (in the style of gpt-fast).

transformers' own layer is the reference: the parity tests compare this one with it and with
``generate``. This one computes the same math with fewer, larger kernels and no cache object:

- q/k/v and gate/up are one GEMM each. ``fuse_layer`` builds the fused ``qkv_proj`` and
  ``gate_up_proj`` linears once, at load time, inside the decoder layer; the stock ``q_proj`` ...
  ``up_proj`` become ``FusedPart`` views of them, so each weight is stored (and quantized, see
  ``quantize``) once and transformers' ``generate`` still runs on the very same weights.
- The caller passes cos/sin, the KV buffers and what each token may see. One function body therefore
  serves every layer, and ``torch.compile`` compiles it once per mode instead of once per layer.
- Two attention modes:

  ``prompt_layer``   a whole prompt attends causally to itself (SDPA without a mask, so CUDA runs
                     flash attention with grouped KV heads); the caller keeps the keys/values.
  ``cached_layer``   R rows of new tokens (questions, or one generated token each) attend to the
                     prefix every row shares and to their own row's tail. The prefix is multiplied
                     with all rows' queries at once, so it is read once per step whatever R is, and
                     it is never copied into the rows. The two parts' scores meet in one softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerWeights(NamedTuple):
    """What a layer function reads: the norms' weights and the four projections (``nn.Linear``, or the
    quantized modules that replace them)."""

    input_norm: Tensor
    post_norm: Tensor
    qkv: nn.Module  # [(heads + 2 kv_heads) head_dim] outputs
    o: nn.Module
    gate_up: nn.Module  # [2 ffn] outputs
    down: nn.Module


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


class FusedPart(nn.Module):
    """One of the projections fused into ``parent.<fused>`` (q, k or v of qkv; gate or up of gate_up).

    transformers' own forward keeps calling ``q_proj(x)`` and gets its slice of the fused output; the
    weight lives in the fused linear only. The fused module is looked up by name on each call, so it can
    be replaced (by a quantized one) after fusing.
    """

    def __init__(self, parent: nn.Module, fused: str, start: int, stop: int):
        super().__init__()
        self._parent = (parent,)  # a tuple: not a submodule, or the module tree would hold a cycle
        self.fused, self.start, self.stop = fused, start, stop
        self.in_features, self.out_features = getattr(parent, fused).in_features, stop - start

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self._parent[0], self.fused)(x)[..., self.start : self.stop]

    @property
    def weight(self) -> Tensor:
        return getattr(self._parent[0], self.fused).weight[self.start : self.stop]

    @property
    def bias(self) -> Tensor | None:
        bias = getattr(self._parent[0], self.fused).bias
        return None if bias is None else bias[self.start : self.stop]


def _fuse(parent: nn.Module, fused: str, parts: tuple[str, ...]) -> None:
    """Replace the linears ``parts`` of ``parent`` (which read the same input) by one linear ``fused``."""
    if hasattr(parent, fused):  # a second runner on the same model
        return
    linears = [getattr(parent, name) for name in parts]
    weight = torch.cat([lin.weight.detach() for lin in linears])
    bias = None if linears[0].bias is None else torch.cat([lin.bias.detach() for lin in linears])
    linear = nn.Linear(linears[0].in_features, weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    setattr(parent, fused, linear)
    start = 0
    for name, lin in zip(parts, linears, strict=True):
        setattr(parent, name, FusedPart(parent, fused, start, start + lin.out_features))
        start += lin.out_features


def fuse_layer(layer: nn.Module) -> None:
    """Fuse q/k/v and gate/up of a transformers ``LlamaDecoderLayer`` / ``Qwen2DecoderLayer`` in place."""
    _fuse(layer.self_attn, "qkv_proj", ("q_proj", "k_proj", "v_proj"))
    _fuse(layer.mlp, "gate_up_proj", ("gate_proj", "up_proj"))


def layer_weights(layer: nn.Module) -> LayerWeights:
    """The modules a fused layer runs with (read again after quantization replaced some of them)."""
    attn, mlp = layer.self_attn, layer.mlp
    return LayerWeights(layer.input_layernorm.weight, layer.post_attention_layernorm.weight, attn.qkv_proj,
                        attn.o_proj, mlp.gate_up_proj, mlp.down_proj)


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
    """Normed input -> q [R, S, heads, d], k and v [R, S, kv_heads, d], with RoPE on q and k (in one pass)."""
    rows, length, _ = x.shape
    qkv = w.qkv(rms_norm(x, w.input_norm, shape.eps)).view(rows, length, shape.heads + 2 * shape.kv_heads, -1)
    qk, v = qkv.split([shape.heads + shape.kv_heads, shape.kv_heads], dim=2)
    cos, sin = cos[:, :, None], sin[:, :, None]
    qk = qk * cos + rotate_half(qk) * sin
    return qk[:, :, : shape.heads], qk[:, :, shape.heads :], v


def _finish(x: Tensor, attended: Tensor, w: LayerWeights, shape: LayerShape) -> Tensor:
    """Output projection and residual, then the SwiGLU MLP and residual."""
    x = x + w.o(attended)
    gate, up = w.gate_up(rms_norm(x, w.post_norm, shape.eps)).chunk(2, dim=-1)
    return x + w.down(F.silu(gate) * up)


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
    ``hidden [R, 1, n, T]`` marks. The softmax runs in fp32 over both parts' scores at once, as in
    transformers' eager attention; only scores are concatenated, never keys or values."""
    rows, kv_heads, n, head_dim = q.shape
    q = q * scale
    # All rows' queries in one GEMM per KV head: the prefix is read once for the whole batch.
    s_prefix = torch.matmul(q.transpose(0, 1).reshape(kv_heads, rows * n, head_dim), prefix_k[0].transpose(1, 2))
    length = s_prefix.shape[-1]
    s_prefix = s_prefix.view(kv_heads, rows, n, length).transpose(0, 1)  # [R, kv_heads, n, P]
    s_tail = torch.matmul(q, tail_k.transpose(2, 3)).masked_fill(hidden, float("-inf"))
    p = torch.cat([s_prefix, s_tail], dim=-1).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    p_prefix = p[..., :length].transpose(0, 1).reshape(kv_heads, rows * n, length)
    out_prefix = torch.matmul(p_prefix, prefix_v[0]).view(kv_heads, rows, n, head_dim).transpose(0, 1)
    return out_prefix + torch.matmul(p[..., length:], tail_v)


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
