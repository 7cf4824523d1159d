"""The question-independent pruners and FastV: none, tfps, divprune, random, pool, fastv."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from .base import Pruner, top_scores
from .fps import farthest_point_sampling, max_min_select


class KeepAll(Pruner):
    """The dense baseline: every token of every view (the budgets are ignored)."""

    name = "none"

    def _select(self, features: Tensor, budgets: list[int], attention: Tensor | None) -> list[Tensor]:
        views, tokens, _ = features.shape
        return [torch.arange(tokens, device=features.device) for _ in range(views)]


class TFPS(Pruner):
    """Prune2Drive's T-FPS: farthest-point sampling per view under cosine distance (``fps.py``)."""

    name = "tfps"

    def _select(self, features: Tensor, budgets: list[int], attention: Tensor | None) -> list[Tensor]:
        return farthest_point_sampling(features, budgets)


class DivPrune(Pruner):
    """DivPrune: the same max-min rule, jointly over all views' tokens, with total budget ``sum(budgets)``.

    A busy view can take more than its share, so per-view counts differ from ``budgets``; only the total
    is kept. The joint distance matrix is (V N) x (V N), so this costs about V times T-FPS.
    """

    name = "divprune"

    def _select(self, features: Tensor, budgets: list[int], attention: Tensor | None) -> list[Tensor]:
        views, tokens, dim = features.shape
        (joint,) = max_min_select(features.reshape(1, views * tokens, dim), [sum(budgets)])
        # joint is ascending, so each view's tokens form one contiguous run of it.
        ends = torch.searchsorted(joint, torch.arange(1, views + 1, device=joint.device) * tokens).tolist()
        starts = [0, *ends[:-1]]
        return [joint[s:e] - v * tokens for v, (s, e) in enumerate(zip(starts, ends, strict=True))]


class FastV(Pruner):
    """FastV: keeps each view's tokens most attended by the last text token at the pruning layer.

    ``attention[v, i]``: the attention weight visual token i of view v receives from the last text token
    (averaged over heads), which needs eager attention at that layer.
    """

    name = "fastv"
    question_dependent = True
    needs_attention = True

    def _select(self, features: Tensor, budgets: list[int], attention: Tensor | None) -> list[Tensor]:
        assert attention is not None  # checked in select()
        return top_scores(attention, budgets)


class RandomPruner(Pruner):
    """Uniformly random tokens per view; the same ``seed`` gives the same tokens on every call."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def _select(self, features: Tensor, budgets: list[int], attention: Tensor | None) -> list[Tensor]:
        tokens = features.shape[1]
        generator = torch.Generator().manual_seed(self.seed)  # CPU generator: same picks on every device
        picks = [torch.randperm(tokens, generator=generator)[:b].sort().values for b in budgets]
        return [p.to(features.device) for p in picks]


@lru_cache(maxsize=256)
def grid_positions(tokens: int, budget: int) -> tuple[int, ...]:
    """``budget`` token indices spread evenly over a row-major square grid of ``tokens`` (1-D if not square).

    Rows are spaced evenly, each row gets floor or ceil of budget / rows tokens, and within a row the
    tokens sit at the centres of equal segments, so the sample covers the whole view.
    """
    if budget == 0:
        return ()
    side = math.isqrt(tokens)
    if side * side != tokens:
        return tuple(sorted({(2 * j + 1) * tokens // (2 * budget) for j in range(budget)}))

    def centres(count: int) -> list[int]:  # distinct, evenly spread positions in range(side)
        return [(2 * j + 1) * side // (2 * count) for j in range(count)]

    rows = min(side, max(math.ceil(budget / side), round(math.sqrt(budget))))
    per_row = [budget // rows + (r < budget % rows) for r in range(rows)]
    # Centre rows first so the longer rows (the remainder) sit mid-image rather than all at the top.
    row_order = sorted(range(rows), key=lambda r: abs(2 * r + 1 - rows))
    counts = dict(zip(row_order, sorted(per_row, reverse=True), strict=True))
    picks = [row * side + col for r, row in enumerate(centres(rows)) for col in centres(counts[r])]
    return tuple(sorted(picks))


class PoolPruner(Pruner):
    """Uniform spatial subsampling: evenly spread positions on each view's 27 x 27 patch grid."""

    name = "pool"

    def _select(self, features: Tensor, budgets: list[int], attention: Tensor | None) -> list[Tensor]:
        tokens = features.shape[1]
        return [torch.tensor(grid_positions(tokens, b), dtype=torch.long, device=features.device) for b in budgets]
