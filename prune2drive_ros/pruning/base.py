"""What every pruner looks like to the runtime: a name, two capability flags and ``select``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .checks import check_attention, check_budgets, check_features


class Pruner:
    """Chooses which visual tokens of each view to keep.

    ``select(features [V, N, D], budgets, *, attention [V, N] | None)`` returns, per view, the kept token
    indices as an ascending ``LongTensor`` on the features' device. ``features`` are the view's grid tokens
    only (the ``image_newline`` token is never pruned, so the runtime leaves it out).

    ``question_dependent``: the selection changes with the question, so the runtime cannot reuse one
    pruned visual prefix for several questions. ``needs_attention``: ``select`` must be given the
    attention each visual token receives from the text (it raises ValueError without it).
    ``two_stage``: the pruner also re-selects deeper in the LLM (see ``MVPruner``).
    ``attention_queries``: whose attention counts, ``"last"`` (the last prompt token, FastV) or
    ``"instruction"`` (every question token, averaged).
    """

    name: ClassVar[str]
    question_dependent: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False
    two_stage: ClassVar[bool] = False
    attention_queries: ClassVar[str] = "last"

    def select(self, features: Tensor, budgets: Sequence[int], *, attention: Tensor | None = None) -> list[Tensor]:
        views, tokens, _ = check_features(features)
        budgets = check_budgets(budgets, views, tokens)
        if self.needs_attention:
            attention = check_attention(attention, views, tokens, self.name)
        return self._select(features, budgets, attention)

    def _select(self, features: Tensor, budgets: list[int], attention: Tensor | None) -> list[Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def top_scores(scores: Tensor, budgets: Sequence[int]) -> list[Tensor]:
    """Indices of the ``budgets[v]`` highest ``scores [V, N]`` per view, ascending; ties go to the lowest index."""
    # A stable descending sort keeps equal scores in index order, which topk does not promise.
    ranked = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return [ranked[v, :b].sort().values for v, b in enumerate(budgets)]
