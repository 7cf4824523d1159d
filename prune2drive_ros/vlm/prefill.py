"""The fast prefill for question-independent plans: the visual prefix, pruned once per frame set.

The plan and the prompt layout fix every shape before a frame arrives: layers below K see the L
prompt tokens, layers from K on see the text tokens plus the budgets' sum. So the work splits into

    head       layers [0, K) over all L tokens                          eager (K = 1: one layer)
    select     per-view picks from the hidden state after layer K - 1   T-FPS: distances eager, picks graphed
    tail       gather the kept rows, layers [K, T)                      one CUDA graph per kept count

With graphs off (CPU, or capture failed) the same functions run eagerly, so both paths compute the
same thing with the same kernels.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from prune2drive_ros.vlm.graphs import GraphSet
from prune2drive_ros.vlm.kv_cache import PrefixRecorder
from prune2drive_ros.vlm.plan import PrunePlan, tfps_distances, tfps_picks
from prune2drive_ros.vlm.pruned_llm import Prefix, PrunedLanguageModel, VisualLayout


class StaticPrefill:
    def __init__(self, llm: PrunedLanguageModel, layout: VisualLayout, plan: PrunePlan, pruner, graphs: GraphSet):
        if not plan.static:
            raise ValueError(f"{plan.method}: the static prefill needs a question-independent single-stage plan")
        self.llm, self.layout, self.plan, self.pruner, self.graphs = llm, layout, plan, pruner, graphs
        self.prune_layer = plan.prune_layer if plan.stages else 0
        self.text_positions = layout.text_positions()
        self._fixed_picks: list[Tensor] | None = None
        self._select_graph = None
        self._tail_graphs: dict[int, object] = {}
        self.graphed: set[str] = set()  # which parts ran as graphs in the last call
        self.failures: dict[str, str] = {}

    # -- the three parts -----------------------------------------------------------------------
    def head(self, embeds: Tensor) -> Tensor:
        if self.prune_layer == 0:
            return embeds
        positions = torch.arange(embeds.shape[1], device=embeds.device)[None]
        self._head_recorder = PrefixRecorder(self.llm.num_layers)
        return self.llm.run_layers(embeds, positions, self._head_recorder, 0, self.prune_layer)

    def select(self, hidden: Tensor) -> list[Tensor]:
        budgets = list(self.plan.budgets)
        if self.plan.feature_free:
            if self._fixed_picks is None:  # pool / random: the same tokens whatever the frame
                n_views, n_patches = self.layout.patch_positions.shape
                dummy = torch.zeros((n_views, n_patches, 1), device=hidden.device)
                self._fixed_picks = self.pruner.select(dummy, budgets)
            return self._fixed_picks
        features = hidden[0, self.layout.patch_positions]  # [V, N, D]
        if not self.plan.graph_selection:
            return self.pruner.select(features, budgets)
        distances = tfps_distances(features)
        if self._select_graph is None and self.graphs.enabled and "select" not in self.failures:
            self._select_graph = self._capture("select", lambda d: tfps_picks(d, budgets), [distances])
        if self._select_graph is not None:
            self.graphed.add("select")
            return self._select_graph(distances)
        return tfps_picks(distances, budgets)

    def keep(self, picks: list[Tensor]) -> Tensor:
        """Prompt positions that run from layer K on: text tokens and the kept patches, in order."""
        visual = torch.cat([self.layout.patch_positions[v][p] for v, p in enumerate(picks)])
        return torch.cat([self.text_positions, visual]).sort().values

    def _tail(self, hidden: Tensor, keep: Tensor):
        recorder = PrefixRecorder(self.llm.num_layers)
        out = self.llm.run_layers(hidden[:, keep], keep[None], recorder, self.prune_layer)
        k0 = self.prune_layer
        return out[:, -1], recorder.keys[k0:], recorder.values[k0:]

    def tail(self, hidden: Tensor, keep: Tensor):
        n = keep.shape[0]
        if n not in self._tail_graphs and self.graphs.enabled and f"tail{n}" not in self.failures:
            self._tail_graphs[n] = self._capture(f"tail{n}", self._tail, [hidden, keep])
        graph = self._tail_graphs.get(n)
        if graph is not None:
            self.graphed.add("tail")
            return graph(hidden, keep)
        return self._tail(hidden, keep)

    # -- all together ---------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, embeds: Tensor, timer=None) -> Prefix:
        self.graphed = set()
        stage = timer.stage if timer is not None else (lambda name: nullcontext())
        with stage("prefill"):
            hidden = self.head(embeds)
        with stage("prune"):
            if self.plan.stages:
                picks = self.select(hidden)
            else:
                n_views, n_patches = self.layout.patch_positions.shape
                picks = [torch.arange(n_patches, device=embeds.device)] * n_views
            keep = self.keep(picks)
        with stage("prefill"):
            last, keys, values = self.tail(hidden, keep)
        if self.prune_layer:
            keys = [*self._head_recorder.keys[: self.prune_layer], *keys]
            values = [*self._head_recorder.values[: self.prune_layer], *values]
        return Prefix(list(keys), list(values), last, list(picks), embeds.shape[1])

    def _capture(self, name: str, fn, inputs):
        call = self.graphs.capture(fn, inputs)
        if call is None:
            self.failures[name] = self.graphs.failure
        return call
