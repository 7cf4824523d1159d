"""Argument checks shared by the pruners: clear ValueErrors before any selection work starts."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor


def check_finite(values: Tensor, what: str = "features") -> None:
    """Raise ValueError when ``values`` hold NaN or inf (one host sync, before any selection work)."""
    if not values.is_floating_point():
        return
    # A row norm is NaN/inf whenever one of its elements is, and it is far cheaper than an elementwise
    # isfinite pass; only when it trips (huge finite values can overflow it too) is the exact test run.
    if values.dim() > 0 and bool(torch.isfinite(torch.linalg.vector_norm(values.float(), dim=-1)).all()):
        return
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{what} contain NaN or inf values; token pruning needs finite {what}")


def check_features(features: Tensor, what: str = "features") -> tuple[int, int, int]:
    """Check a ``[V, N, D]`` floating-point feature tensor and return its shape.

    Finiteness is left to the code that reads the values (``cosine.fp32_norms`` checks it on the way).
    """
    if not isinstance(features, Tensor) or features.dim() != 3:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{what} must be a tensor [views, tokens, dim], got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"{what} must be floating point (fp32, fp16 or bf16), got {features.dtype}")
    views, tokens, dim = features.shape
    return views, tokens, dim


def check_budgets(budgets: Sequence[int], views: int, tokens: int | None, what: str = "budgets") -> list[int]:
    """Return ``budgets`` as Python ints after checking one entry per view, each in [0, tokens] (or >= 0)."""
    try:
        values = [operator.index(b) for b in budgets]
    except TypeError:
        raise ValueError(f"{what} must be a sequence of integers, got {budgets!r}") from None
    if len(values) != views:
        raise ValueError(f"{what} must have one entry per view ({views}), got {len(values)}: {values}")
    if any(b < 0 or (tokens is not None and b > tokens) for b in values):
        bounds = "be >= 0" if tokens is None else f"lie in [0, {tokens}] (the tokens per view)"
        raise ValueError(f"{what} must {bounds}, got {values}")
    return values


def check_attention(attention: Tensor | None, views: int, tokens: int, pruner: str) -> Tensor:
    """Check the ``[V, N]`` attention a question-dependent pruner ranks tokens by."""
    if attention is None:
        raise ValueError(f"pruner {pruner!r} needs attention weights [views, tokens]; got attention=None")
    if not isinstance(attention, Tensor) or tuple(attention.shape) != (views, tokens):
        shape = tuple(attention.shape) if isinstance(attention, Tensor) else type(attention).__name__
        raise ValueError(f"attention for pruner {pruner!r} must be [views, tokens] = ({views}, {tokens}), got {shape}")
    check_finite(attention, "attention")
    return attention.float()
