"""The language model run layer by layer, with visual tokens pruned at layer K.

One flow, in the spirit of a transformers modeling file:

1. ``prefill`` runs the prompt (the visual prefix, or the whole prompt for question-dependent
   pruners). Layers before K see every token. Entering layer K, the pruner picks visual tokens per
   view from the hidden states; from then on only kept tokens (plus text and ``image_newline``
   tokens) run, at their *original* RoPE positions. A two-stage pruner (MVPruner) prunes again
   deeper in. Each layer's KV cache therefore holds exactly the tokens that layer saw.
2. ``extend`` runs new tokens (questions, then generated tokens) for a batch of sequences on top of
   that cache: each sequence attends to the shared prefix plus its own valid tail tokens.

The decoder layers are transformers' own modules; only the order of calls, the positions and the
masks are ours.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prune2drive_ros.vlm.kv_cache import PrunedKVCache

SUPPORTED_TEXT_ARCHS = ("llama", "qwen2")


@dataclass
class VisualLayout:
    """Where the views sit in the prompt: ``patch_positions[v]`` are view v's patch-token positions."""

    patch_positions: torch.Tensor  # [V, N] long
    length: int  # prompt length the layout belongs to

    def is_patch(self, length: int, device: torch.device) -> torch.Tensor:
        """Patch-token mask over a prompt of ``length`` tokens that starts with this layout."""
        mask = torch.zeros(length, dtype=torch.bool, device=device)
        mask[self.patch_positions.flatten()] = True
        return mask


@dataclass
class PrefillResult:
    cache: PrunedKVCache
    last_hidden: torch.Tensor  # [1, D], final-norm input of the last prompt token
    kept: list[torch.Tensor]  # per view, kept patch indices (ascending) in 0..N-1
    tokens_per_layer: list[int]
    prompt_length: int  # dense length: the next token's RoPE position
    prune_ms: float = 0.0
    selection_stages: list[int] = field(default_factory=list)


def _unwrap(output):
    return output[0] if isinstance(output, tuple) else output


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class PrunedLanguageModel(nn.Module):
    def __init__(self, llava_model: nn.Module):
        super().__init__()
        arch = llava_model.config.text_config.model_type
        if arch not in SUPPORTED_TEXT_ARCHS:
            raise ValueError(f"unsupported text architecture {arch!r}; supported: {', '.join(SUPPORTED_TEXT_ARCHS)}")
        lm = llava_model.model.language_model
        self.embed_tokens = lm.embed_tokens
        self.layers = lm.layers
        self.norm = lm.norm
        self.rotary_emb = lm.rotary_emb
        self.lm_head = llava_model.lm_head
        # SDPA applies the causal mask itself when none is given; eager attention needs one.
        self.implicit_causal = llava_model.config.text_config._attn_implementation == "sdpa"

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden)).float()

    # -- masks ---------------------------------------------------------------------------------
    def _causal_mask(self, n: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.implicit_causal:
            return None
        mask = torch.full((n, n), torch.finfo(like.dtype).min, dtype=like.dtype, device=like.device)
        return mask.triu_(1)[None, None]

    @staticmethod
    def _tail_mask(prefix_len: int, tail_valid: torch.Tensor, q: int, like: torch.Tensor) -> torch.Tensor:
        """[B, 1, q, prefix + tail]: the prefix is always visible; a tail key only if valid and not in the future."""
        b, t = tail_valid.shape
        start = t - q
        rows = torch.arange(start, t, device=like.device)[:, None]
        cols = torch.arange(t, device=like.device)[None, :]
        allowed = tail_valid[:, None, :] & (cols <= rows)[None]
        tail = torch.zeros((b, q, t), dtype=like.dtype, device=like.device)
        tail.masked_fill_(~allowed, torch.finfo(like.dtype).min)
        prefix = torch.zeros((b, q, prefix_len), dtype=like.dtype, device=like.device)
        return torch.cat([prefix, tail], dim=-1)[:, None]

    # -- attention probes for attention-guided pruners -----------------------------------------
    def _query_attention(
        self, layer: nn.Module, hidden_in: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, cos, sin
    ) -> torch.Tensor:
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

    # -- the prompt ----------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(
        self,
        embeds: torch.Tensor,
        layout: VisualLayout,
        pruner=None,
        budgets: Sequence[int] | None = None,
        prune_layer: int = 1,
        query_rows: torch.Tensor | None = None,
        reserve: int = 0,
    ) -> PrefillResult:
        """Run ``embeds`` ([1, L, D]) through every layer, pruning visual tokens per ``pruner``."""
        device = embeds.device
        n_views, n_patches = layout.patch_positions.shape
        keep = torch.arange(embeds.shape[1], device=device)  # original positions of the rows that run
        kept = [torch.arange(n_patches, device=device) for _ in range(n_views)]
        stages: dict[int, str] = {}
        if pruner is not None and pruner.name != "none":
            stages[prune_layer] = "select"
            if getattr(pruner, "two_stage", False):
                stages[prune_layer + pruner.stage2_layer_offset] = "reselect"
        if any(layer >= self.num_layers for layer in stages):
            raise ValueError(f"prune layer {max(stages)} is beyond the model's {self.num_layers} layers")
        needs_attention = pruner is not None and pruner.needs_attention
        if needs_attention and 0 in stages:
            raise ValueError(f"{pruner.name} ranks tokens by the attention of the layer before pruning: "
                             "prune_layer must be >= 1")

        cache = PrunedKVCache(self.num_layers, reserve=reserve)
        hidden = embeds
        attention = None
        prune_s = 0.0
        tokens_per_layer = []
        for index, layer in enumerate(self.layers):
            if index in stages:
                t0 = time.perf_counter()
                hidden, keep, kept = self._prune(
                    hidden, keep, kept, layout, pruner, budgets, attention, stage=stages[index]
                )
                prune_s += time.perf_counter() - t0
            positions = keep[None]
            cos, sin = self.rotary_emb(hidden, positions)
            hidden_in = hidden
            hidden = _unwrap(
                layer(
                    hidden,
                    attention_mask=self._causal_mask(hidden.shape[1], hidden),
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    position_embeddings=(cos, sin),
                )
            )
            tokens_per_layer.append(hidden.shape[1])
            if needs_attention and index + 1 in stages:
                rows = self._query_rows(keep, query_rows)
                keys = cache.keys[index][:, :, : cache.lengths[index]]
                attention = (keep, self._query_attention(layer, hidden_in, keys, rows, cos, sin))
        cache.seal_prefix()
        return PrefillResult(
            cache=cache,
            last_hidden=hidden[:, -1],
            kept=kept,
            tokens_per_layer=tokens_per_layer,
            prompt_length=embeds.shape[1],
            prune_ms=prune_s * 1000.0,
            selection_stages=sorted(stages),
        )

    @staticmethod
    def _query_rows(keep: torch.Tensor, query_positions: torch.Tensor | None) -> torch.Tensor:
        if query_positions is None:  # FastV: the last token of the prompt
            return keep.new_tensor([keep.shape[0] - 1])
        return torch.searchsorted(keep, query_positions)

    def _prune(self, hidden, keep, kept, layout, pruner, budgets, attention, stage: str):
        rows_of = [torch.searchsorted(keep, layout.patch_positions[v][kept[v]]) for v in range(len(kept))]
        per_view_attention = None
        if attention is not None:
            att_keep, scores = attention
            per_view_attention = [scores[torch.searchsorted(att_keep, layout.patch_positions[v][kept[v]])]
                                  for v in range(len(kept))]
        if stage == "select":
            features = hidden[0, torch.stack(rows_of)]  # [V, N, D]
            stage_budgets = pruner.stage1_budgets(budgets, features.shape[1]) if getattr(
                pruner, "two_stage", False) else budgets
            att = torch.stack(per_view_attention) if per_view_attention is not None else None
            picks = pruner.select(features, stage_budgets, attention=att)
        else:
            features = [hidden[0, r] for r in rows_of]
            picks = pruner.reselect(features, budgets, attention=per_view_attention)
        kept = [k[p.to(k.device)] for k, p in zip(kept, picks)]
        visual = torch.cat([layout.patch_positions[v][kept[v]] for v in range(len(kept))])
        is_patch = layout.is_patch(int(keep[-1]) + 1, hidden.device)
        text_keep = keep[~is_patch[keep]]
        new_keep = torch.cat([text_keep, visual]).sort().values
        rows = torch.searchsorted(keep, new_keep)
        return hidden[:, rows], new_keep, kept

    # -- tokens after the prompt ---------------------------------------------------------------
    @torch.inference_mode()
    def extend(
        self, cache: PrunedKVCache, embeds: torch.Tensor, positions: torch.Tensor, tail_valid: torch.Tensor
    ) -> torch.Tensor:
        """Run ``embeds`` [B, q, D] at ``positions`` [B, q]; ``tail_valid`` [B, tail] covers the new tokens too."""
        q = embeds.shape[1]
        cos, sin = self.rotary_emb(embeds, positions)
        masks: dict[int, torch.Tensor] = {}
        hidden = embeds
        for index, layer in enumerate(self.layers):
            prefix_len = cache.prefix_lengths[index]
            if prefix_len not in masks:
                masks[prefix_len] = self._tail_mask(prefix_len, tail_valid, q, embeds)
            hidden = _unwrap(
                layer(
                    hidden,
                    attention_mask=masks[prefix_len],
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    position_embeddings=(cos, sin),
                )
            )
        return hidden
