"""``PrunePlan``: what a pruner will do inside the LLM, described before a frame arrives.

The decoder reads the plan (at which layers tokens are selected, with which budgets, whether the
question or attention is needed, which tokens are kept whatever the input) instead of probing the
pruner. Together with the prompt layout this fixes the number of tokens every layer sees, so the
runtime can size its buffers and capture CUDA graphs ahead of time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Pruners whose choice does not depend on the features: computed once per budget configuration.
_FEATURE_FREE = ("pool", "random")


@dataclass(frozen=True)
class PruneStage:
    layer: int
    kind: str  # "select" (among all of a view's patches) or "reselect" (among the survivors, MVPruner)
    budgets: tuple[int, ...]


@dataclass(frozen=True)
class PrunePlan:
    method: str
    budgets: tuple[int, ...]
    stages: tuple[PruneStage, ...]
    question_dependent: bool
    needs_attention: bool
    attention_queries: str  # "last" or "instruction"

    @classmethod
    def describe(cls, pruner, budgets: Sequence[int], prune_layer: int, num_layers: int,
                 tokens_per_view: int) -> PrunePlan:
        budgets = tuple(int(b) for b in budgets)
        stages: list[PruneStage] = []
        if pruner.name != "none":
            if pruner.two_stage:
                first = tuple(pruner.stage1_budgets(budgets, tokens_per_view))
                stages.append(PruneStage(prune_layer, "select", first))
                stages.append(PruneStage(prune_layer + pruner.stage2_layer_offset, "reselect", budgets))
            else:
                stages.append(PruneStage(prune_layer, "select", budgets))
        if any(s.layer >= num_layers for s in stages):
            raise ValueError(f"prune layer {max(s.layer for s in stages)} is beyond the model's {num_layers} layers")
        if pruner.needs_attention and any(s.layer == 0 for s in stages):
            raise ValueError(f"{pruner.name} ranks tokens by the attention of the layer before pruning: "
                             "prune_layer must be >= 1")
        return cls(pruner.name, budgets, tuple(stages), pruner.question_dependent, pruner.needs_attention,
                   pruner.attention_queries)

    @property
    def prune_layer(self) -> int | None:
        return self.stages[0].layer if self.stages else None

    @property
    def static(self) -> bool:
        """One prefix per frame set, pruned once, with a known token count: the fast path."""
        return not self.question_dependent and len(self.stages) <= 1

    @property
    def feature_free(self) -> bool:
        return self.method in _FEATURE_FREE

    @property
    def graph_selection(self) -> bool:
        """T-FPS runs on the device without a host sync (``farthest_point_sampling_static``): it can be captured."""
        return self.method == "tfps"
