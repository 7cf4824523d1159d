"""MVPruner-style two-stage multi-view pruning (our implementation, following the paper's abstract).

This is not the authors' code. It implements the two ideas the MVPruner abstract describes:

- stage 1, at the pruning layer K: each view's budget follows its information diversity (the
  ``view_budgets(adaptive=...)`` measure), and within a view the kept tokens are those that score high
  on both diversity (mean cosine distance to the view's other tokens) and the instruction's attention,
  so the tokens that survive are ones that stay important;
- stage 2, ``stage2_layer_offset`` layers deeper: the final total is re-allocated across views by the
  text-to-vision attention mass each view still receives, and each view keeps its most attended tokens.

Stage 1 keeps more than the final budget (``stage1_budgets``) so that stage 2 has something to choose from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Pruner, top_scores
from .budgets import apportion
from .checks import check_budgets, check_finite
from .cosine import fp32_norms, view_diversity


def _goodness(scores: Tensor) -> Tensor:
    """Each score's standing within its view, in (0, 1]: 1 for the best; equal scores favour the lower index."""
    position = torch.sort(scores, dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
    return 1.0 - position.float() / scores.shape[-1]


@torch.no_grad()
def token_diversity(features: Tensor) -> Tensor:
    """Mean cosine distance of each token to the other tokens of its view: ``[V, N, D] -> [V, N]``."""
    x, norms, zero = fp32_norms(features)
    n = x.shape[-2]
    if n < 2:
        return x.new_zeros(x.shape[:-1])
    direction_sum = norms.reciprocal().unsqueeze(-2) @ x  # [V, 1, D]: the sum of the unit vectors
    # Each token's cosines to all tokens, itself included (its self-cosine is 1, zero vectors too).
    cos_sum = (x @ direction_sum.transpose(-1, -2)).squeeze(-1) / norms
    if zero is not None:  # the zero vectors' shared extra axis
        cos_sum = cos_sum + zero.float() * zero.sum(dim=-1, keepdim=True).float()
    return 1.0 - (cos_sum - 1.0) / (n - 1)


class MVPruner(Pruner):
    """Two-stage, question-dependent pruner (see the module docstring for what is ours vs the paper's).

    At layer K the runtime calls ``select(features, stage1_budgets(budgets, N), attention=...)``: stage 1
    keeps ``sum`` of those intermediate budgets, divided across views by diversity. At layer
    K + ``stage2_layer_offset`` it calls ``reselect`` on the survivors with the final ``budgets``.
    ``attention`` in both stages: the text-to-vision attention of the instruction tokens, averaged.
    """

    name = "mvpruner"
    question_dependent = True
    needs_attention = True
    two_stage = True
    attention_queries = "instruction"

    def __init__(self, stage2_layer_offset: int = 2, stage1_factor: int = 2) -> None:
        if stage2_layer_offset < 1:
            raise ValueError(f"stage2_layer_offset must be >= 1, got {stage2_layer_offset}")
        if stage1_factor < 1:
            raise ValueError(f"stage1_factor must be >= 1, got {stage1_factor}")
        self.stage2_layer_offset = int(stage2_layer_offset)
        self.stage1_factor = int(stage1_factor)

    def stage1_budgets(self, budgets: Sequence[int], n_tokens: int) -> list[int]:
        """Intermediate budgets for ``select``: ``min(N, stage1_factor * b)`` per view."""
        return [min(n_tokens, self.stage1_factor * int(b)) for b in budgets]

    def _select(self, features: Tensor, budgets: list[int], attention: Tensor | None) -> list[Tensor]:
        assert attention is not None  # checked in select()
        views, tokens, _ = features.shape
        total = sum(budgets)
        floor = 1 if total >= views else 0
        per_view = apportion(total, view_diversity(features).tolist(), [floor] * views, [tokens] * views)
        # High on both: the product of the two standings is large only when neither is small.
        score = _goodness(token_diversity(features)) * _goodness(attention)
        return top_scores(score, per_view)

    def reselect(self, features: Sequence[Tensor], budgets: Sequence[int], *,
                 attention: Sequence[Tensor]) -> list[Tensor]:
        """Stage 2: indices into each view's stage-1 survivors (ascending), ``sum(budgets)`` in total.

        ``features[v]`` is ``[n_v, D]`` and ``attention[v]`` is ``[n_v]`` for view v's n_v survivors. The total
        is split across views by their attention mass (at least one token per non-empty view when the total
        allows), and each view keeps its most attended tokens.
        """
        if attention is None:
            raise ValueError("pruner 'mvpruner' needs attention weights for reselect; got attention=None")
        if len(features) != len(attention):
            raise ValueError(f"reselect needs one attention vector per view: {len(features)} features, "
                             f"{len(attention)} attention")
        sizes = []
        for v, (f, a) in enumerate(zip(features, attention, strict=True)):
            if f.dim() != 2 or a.dim() != 1 or a.shape[0] != f.shape[0]:
                raise ValueError(f"reselect view {v}: features must be [n, dim] and attention [n], "
                                 f"got {tuple(f.shape)} and {tuple(a.shape)}")
            check_finite(a, "attention")
            sizes.append(f.shape[0])
        budgets = check_budgets(budgets, len(features), None)  # a final b_v may exceed its view's n_v
        total = min(sum(budgets), sum(sizes))
        floors = [min(1, n) for n in sizes]
        if sum(floors) > total:
            floors = [0] * len(sizes)
        mass = [float(a.float().clamp_min(0).sum()) for a in attention]
        per_view = apportion(total, mass, floors, sizes)
        return [top_scores(a.float().unsqueeze(0), [b])[0] for a, b in zip(attention, per_view, strict=True)]
