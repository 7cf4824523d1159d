"""The fast prefill for question-independent plans: the visual prefix, pruned once per frame set.

The plan and the prompt layout fix every shape before a frame arrives: layers below K see the L
prompt tokens, layers from K on see the text tokens plus the budgets' sum. So the work splits into

    head     layers [0, K) over all L tokens; their KV written into the cache's prefix     graph
    select   per-view picks from the hidden state after layer K - 1, and the positions    graph (T-FPS, fixed picks)
             that run on (``keep``)
    tail     gather the kept rows, layers [K, T) at their original positions; KV into     graph
             the prefix

Each part is captured once per plan and replayed per frame set, reading the previous part's outputs
in place. T-FPS runs on the device without a host sync (``farthest_point_sampling_static``): its
finiteness check becomes a flag the runner reads with the answer. DivPrune's joint picks are split
per view on the host, so its selection runs eagerly between the graphs. With graphs off (CPU, or a
capture failed) the same functions run eagerly, so both paths compute the same thing.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from prune2drive_ros.pruning.fps import farthest_point_sampling_static
from prune2drive_ros.vlm.graphs import GraphSet, StagePaths
from prune2drive_ros.vlm.kv_cache import StaticKVCache
from prune2drive_ros.vlm.plan import PrunePlan
from prune2drive_ros.vlm.pruned_llm import Prefix, PrunedLanguageModel, VisualLayout


def prefix_lengths(plan: PrunePlan, layout: VisualLayout, num_layers: int) -> list[int]:
    """Tokens each layer's prefix holds under a static plan."""
    if not plan.stages:
        return [layout.length] * num_layers
    kept = layout.length - layout.patch_positions.numel() + sum(plan.budgets)
    return [layout.length] * plan.prune_layer + [kept] * (num_layers - plan.prune_layer)


class StaticPrefill:
    def __init__(self, llm: PrunedLanguageModel, layout: VisualLayout, plan: PrunePlan, pruner, graphs: GraphSet,
                 cache: StaticKVCache, tfps_precision: str = "fp32"):
        if not plan.static:
            raise ValueError(f"{plan.method}: the static prefill needs a question-independent single-stage plan")
        self.llm, self.layout, self.plan, self.pruner, self.graphs = llm, layout, plan, pruner, graphs
        self.cache, self.tfps_precision = cache, tfps_precision
        self.prune_layer = plan.prune_layer if plan.stages else 0
        device = layout.patch_positions.device
        self.positions = torch.arange(layout.length, device=device)[None]
        self.text_positions = layout.text_positions()
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # the last frame's features were finite
        n_views, n_patches = layout.patch_positions.shape
        self._fixed: tuple[list[Tensor], Tensor] | None = None
        if not plan.stages:  # nothing pruned
            picks = [torch.arange(n_patches, device=device)] * n_views
            self._fixed = (picks, self.keep(picks))
        elif plan.feature_free:  # pool / random: the same tokens whatever the frame
            picks = pruner.select(torch.zeros((n_views, n_patches, 1), device=device), list(plan.budgets))
            self._fixed = (picks, self.keep(picks))
        self._calls: dict[str, object] = {}

    # -- the three parts (each captured as it is) --------------------------------------------------
    def _keep_kv(self, layer: int, k: Tensor, v: Tensor) -> None:
        self.cache.prefix_k[layer].copy_(k)
        self.cache.prefix_v[layer].copy_(v)

    def head(self, embeds: Tensor) -> Tensor:
        return self.llm.run_prompt(embeds, self.positions, 0, self.prune_layer, self._keep_kv)

    def select(self, hidden: Tensor) -> tuple[list[Tensor], Tensor]:
        features = hidden[0, self.layout.patch_positions]  # [V, N, D]: integer positions, no mask
        picks, finite = farthest_point_sampling_static(features, list(self.plan.budgets), self.tfps_precision)
        self.finite.copy_(finite)
        return picks, self.keep(picks)

    def keep(self, picks: list[Tensor]) -> Tensor:
        """Prompt positions that run from layer K on: text tokens and the kept patches, in order."""
        visual = torch.cat([self.layout.patch_positions[v][p] for v, p in enumerate(picks)])
        return torch.cat([self.text_positions, visual]).sort().values

    def tail(self, hidden: Tensor, keep: Tensor) -> Tensor:
        out = self.llm.run_prompt(hidden[:, keep], keep[None], self.prune_layer, self.llm.num_layers, self._keep_kv)
        return out[:, -1]

    # -- all together ---------------------------------------------------------------------------------
    def _part(self, name: str, fn, inputs: list[Tensor], paths: StagePaths | None):
        if name not in self._calls:
            self._calls[name] = self.graphs.capture(name, fn, inputs)
        call = self._calls[name]
        if paths is not None:
            paths.note("prefix", call is not None, self.graphs.eager_reason(name))
        return call(*inputs) if call is not None else fn(*inputs)

    @torch.inference_mode()
    def __call__(self, embeds: Tensor, timer=None, paths: StagePaths | None = None) -> Prefix:
        stage = timer.stage if timer is not None else (lambda name: nullcontext())
        with stage("prefill"):
            hidden = self._part("head", self.head, [embeds], paths) if self.prune_layer else embeds
        with stage("prune"):
            if self._fixed is not None:
                picks, keep = self._fixed
            elif self.plan.graph_selection:
                picks, keep = self._part("select", self.select, [hidden], paths)
            else:  # DivPrune: per-view counts come from the host
                picks = self.pruner.select(hidden[0, self.layout.patch_positions], list(self.plan.budgets))
                keep = self.keep(picks)
                if paths is not None:
                    paths.note("prefix", False, f"{self.plan.method} picks on the host")
        with stage("prefill"):
            last = self._part("tail", self.tail, [hidden, keep], paths)
        return Prefix(self.cache.prefix_k, self.cache.prefix_v, last, list(picks), self.layout.length)
