"""The language model run layer by layer, with visual tokens pruned inside it.

1. ``prefill`` runs the prompt. Layers before the plan's pruning layer K see every token; at K the
   pruner picks each view's tokens and only the kept ones (plus all text and ``image_newline``
   tokens) run on, at their *original* RoPE positions. A two-stage plan (MVPruner) prunes again
   deeper in. The result is a ``Prefix``: every layer's keys and values hold exactly the tokens that
   layer saw.
2. ``run_cached`` runs new tokens (questions, then generated tokens) of a batch of rows on top of a
   ``StaticKVCache``: every row reads the one shared prefix and its own tail (``decode.DecodeBatch``
   owns the layout and the masks).

The layers are ``layers.prompt_layer`` / ``layers.cached_layer`` on weights fused at load time from
transformers' own modules (which keep working, as views of the fused weights). The static prefill
(one frame set, a known number of kept tokens) is split into a head (layers < K), the selection and
the tail (layers >= K), each replayed as a CUDA graph (``prefill.StaticPrefill``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prune2drive_ros.vlm.kv_cache import StaticKVCache
from prune2drive_ros.vlm.layers import LayerShape, cached_layer, fuse_layer, layer_weights, prompt_layer, rms_norm
from prune2drive_ros.vlm.plan import PrunePlan

SUPPORTED_TEXT_ARCHS = ("llama", "qwen2")


@dataclass
class VisualLayout:
    """Where the views sit in the prompt prefix."""

    patch_positions: Tensor  # [V, N] long: view v's patch-token positions
    length: int  # prefix length

    def is_patch(self, length: int) -> Tensor:
        """Patch-token mask over a prompt of ``length`` tokens that starts with this layout's prefix."""
        mask = torch.zeros(length, dtype=torch.bool, device=self.patch_positions.device)
        mask[self.patch_positions.flatten()] = True
        return mask

    def text_positions(self) -> Tensor:
        """Prefix positions that are never pruned: text and ``image_newline`` tokens."""
        return (~self.is_patch(self.length)).nonzero().flatten()


@dataclass
class Prefix:
    """A prefilled prompt: per-layer keys/values of the tokens each layer saw, and what was kept."""

    keys: list[Tensor]  # per layer [1, kv_heads, n_layer, head_dim]
    values: list[Tensor]
    last_hidden: Tensor  # [1, D]: the last prompt token before the final norm
    kept: list[Tensor]  # per view, kept patch indices (ascending) in 0..N-1
    prompt_length: int  # dense length: the next token's RoPE position
    key: object = None  # what the runner reuses it for (frame set, plan)

    @property
    def tokens_per_layer(self) -> list[int]:
        return [k.shape[2] for k in self.keys]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in zip(self.keys, self.values))


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class PrunedLanguageModel(nn.Module):
    def __init__(self, llava_model: nn.Module):
        super().__init__()
        text = llava_model.config.text_config
        if text.model_type not in SUPPORTED_TEXT_ARCHS:
            raise ValueError(f"unsupported text architecture {text.model_type!r}; supported: "
                             f"{', '.join(SUPPORTED_TEXT_ARCHS)}")
        if getattr(text, "use_sliding_window", False):
            raise ValueError("sliding-window attention is not supported; DriveMM's text models attend to the whole prompt")
        lm = llava_model.model.language_model
        self.embed_tokens = lm.embed_tokens
        self.layers = lm.layers  # transformers' modules: the attention probes of FastV/MVPruner read them
        self.norm = lm.norm
        self.rotary_emb = lm.rotary_emb
        self.lm_head = llava_model.lm_head
        self.kv_heads = text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.shape = LayerShape(text.num_attention_heads, self.kv_heads, self.head_dim, self.norm.variance_epsilon)
        for layer in self.layers:
            fuse_layer(layer)
        self.refresh()
        shape = self.shape

        # Closures over the layer shape: the shape is a compile-time constant, the tensors are inputs, so
        # torch.compile builds one kernel set per mode that every layer shares.
        def prompt(x, cos, sin, w):
            return prompt_layer(x, cos, sin, w, shape)

        def cached(x, cos, sin, w, prefix_k, prefix_v, tail_k, tail_v, slots, hidden):
            return cached_layer(x, cos, sin, w, shape, prefix_k, prefix_v, tail_k, tail_v, slots, hidden)

        self.prompt_layer: Callable = prompt
        self.cached_layer: Callable = cached

    def refresh(self) -> None:
        """Read the layers' modules again (quantization replaces some of them after fusing)."""
        self.weights = [layer_weights(layer) for layer in self.layers]

    def compile_layers(self, wrap: Callable[[Callable, str], Callable]) -> None:
        """Replace the two layer functions by ``wrap(fn, name)`` (``graphs.Compiler`` compiles them)."""
        self.prompt_layer = wrap(self.prompt_layer, "prompt layer")
        self.cached_layer = wrap(self.cached_layer, "cached layer")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(rms_norm(hidden, self.norm.weight, self.shape.eps)).float()

    def rope(self, like: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin ``[R, S, head_dim]`` for ``positions [R, S]`` (transformers' own rotary module: RoPE scaling included)."""
        return self.rotary_emb(like, positions)

    def run_prompt(self, hidden: Tensor, positions: Tensor, start: int, stop: int,
                   keep: Callable[[int, Tensor, Tensor], None]) -> Tensor:
        """Layers ``[start, stop)`` over a prompt ``[1, S, D]`` at ``positions [1, S]``; ``keep(layer, k, v)``
        receives each layer's keys and values."""
        cos, sin = self.rope(hidden, positions)
        for index in range(start, stop):
            hidden, k, v = self.prompt_layer(hidden, cos, sin, self.weights[index])
            keep(index, k, v)
        return hidden

    def run_cached(self, hidden: Tensor, positions: Tensor, cache: StaticKVCache, slots: Tensor,
                   hidden_mask: Tensor) -> Tensor:
        """Every layer over new tokens ``[R, S, D]`` of the first R rows of ``cache``; ``hidden_mask`` (the
        ``layers.tail_mask`` of the tail slots each token may see) is the same for every layer, since the
        whole prefix is visible whatever its length."""
        cos, sin = self.rope(hidden, positions)
        for index, w in enumerate(self.weights):
            hidden = self.cached_layer(hidden, cos, sin, w, cache.prefix_k[index], cache.prefix_v[index],
                                       cache.tail_k[index], cache.tail_v[index], slots, hidden_mask)
        return hidden

    # -- attention probes for attention-guided pruners -----------------------------------------
    def _query_attention(self, layer: nn.Module, hidden_in: Tensor, keys: Tensor, rows: Tensor, cos, sin) -> Tensor:
        """Mean attention (over heads and query rows) that ``rows`` pay to every earlier token."""
        attn = layer.self_attn
        x = layer.input_layernorm(hidden_in[:, rows])
        q = attn.q_proj(x).view(1, len(rows), -1, attn.head_dim).transpose(1, 2)
        c, s = cos[:, rows].unsqueeze(1), sin[:, rows].unsqueeze(1)
        q = q * c + _rotate_half(q) * s
        k = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling
        future = torch.arange(k.shape[2], device=q.device)[None, :] > rows[:, None]
        scores.masked_fill_(future[None, None], float("-inf"))
        return scores.softmax(-1).mean(dim=(0, 1, 2))

    # -- the prompt, any plan (eager) -----------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, embeds: Tensor, layout: VisualLayout, plan: PrunePlan, pruner,
                query_rows: Tensor | None = None, timer=None) -> Prefix:
        """Run ``embeds`` ([1, L, D]) through every layer, pruning visual tokens as ``plan`` says.

        ``query_rows``: prompt positions whose attention guides ``instruction`` pruners (MVPruner).
        ``timer.stage("prune")``, if given, is entered around each selection.
        """
        device = embeds.device
        n_views, n_patches = layout.patch_positions.shape
        stages = {s.layer: s for s in plan.stages}
        keep = torch.arange(embeds.shape[1], device=device)  # original positions of the rows that run
        kept = [torch.arange(n_patches, device=device) for _ in range(n_views)]
        is_patch = layout.is_patch(embeds.shape[1])
        keys: list[Tensor] = []
        values: list[Tensor] = []
        hidden, attention = embeds, None
        for index in range(self.num_layers):
            if index in stages:
                with timer.stage("prune") if timer is not None else nullcontext():
                    hidden, keep, kept = self._prune(hidden, keep, kept, layout, is_patch, pruner, stages[index],
                                                     attention)
            positions = keep[None]
            cos, sin = self.rope(hidden, positions)
            hidden_in = hidden
            hidden, k, v = self.prompt_layer(hidden, cos, sin, self.weights[index])
            keys.append(k)
            values.append(v)
            if plan.needs_attention and index + 1 in stages:
                rows = self._query_rows(keep, query_rows)
                attention = (keep, self._query_attention(self.layers[index], hidden_in, k, rows, cos, sin))
        return Prefix(keys, values, hidden[:, -1], kept, embeds.shape[1])

    @staticmethod
    def _query_rows(keep: Tensor, query_positions: Tensor | None) -> Tensor:
        if query_positions is None:  # FastV: the last token of the prompt
            return keep.new_tensor([keep.shape[0] - 1])
        return torch.searchsorted(keep, query_positions)

    @staticmethod
    def _prune(hidden, keep, kept, layout: VisualLayout, is_patch: Tensor, pruner, stage, attention):
        rows_of = [torch.searchsorted(keep, layout.patch_positions[v][kept[v]]) for v in range(len(kept))]
        per_view_attention = None
        if attention is not None:
            att_keep, scores = attention
            per_view_attention = [scores[torch.searchsorted(att_keep, layout.patch_positions[v][kept[v]])]
                                  for v in range(len(kept))]
        if stage.kind == "select":
            features = hidden[0, torch.stack(rows_of)]  # [V, N, D]
            att = torch.stack(per_view_attention) if per_view_attention is not None else None
            picks = pruner.select(features, list(stage.budgets), attention=att)
        else:
            features = [hidden[0, r] for r in rows_of]
            picks = pruner.reselect(features, list(stage.budgets), attention=per_view_attention)
        kept = [k[p.to(k.device)] for k, p in zip(kept, picks)]
        visual = torch.cat([layout.patch_positions[v][kept[v]] for v in range(len(kept))])
        new_keep = torch.cat([keep[~is_patch[keep]], visual]).sort().values
        return hidden[:, torch.searchsorted(keep, new_keep)], new_keep, kept
