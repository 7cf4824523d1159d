"""Per-camera token budgets: equal, per-camera ratios (the Prune2Drive search output), explicit, adaptive."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from ..cameras import NUM_CAMERAS
from ..settings import PATCHES_PER_VIEW
from .checks import check_features
from .cosine import view_diversity


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def apportion(total: int, weights: Sequence[float], low: Sequence[int], high: Sequence[int]) -> list[int]:
    """Split ``total`` integer units across views in proportion to ``weights``, view v within [low_v, high_v].

    The total is met exactly. Continuous shares ``clip(t * w_v, low_v, high_v)`` grow with the water level
    t, so t is found by bisection; floors plus the largest remainders then give integers. Negative or
    non-finite weights count as zero; when every weight is zero the split is even.
    """
    lo, hi = np.asarray(low, dtype=np.int64), np.asarray(high, dtype=np.int64)
    if not lo.sum() <= total <= hi.sum() or (lo > hi).any():
        raise ValueError(f"cannot split {total} units within bounds {list(lo)}..{list(hi)}")
    w = np.asarray(weights, dtype=np.float64)
    w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
    # A tiny floor keeps zero-weight views reachable when the others are all capped.
    w = np.full_like(w, 1.0) if w.sum() == 0 else np.maximum(w / w.sum(), 1e-9)

    def shares(t: float) -> np.ndarray:
        return np.clip(t * w, lo, hi)

    t_low, t_high = 0.0, float((hi / w).max())
    for _ in range(200):
        t_mid = (t_low + t_high) / 2
        t_low, t_high = (t_mid, t_high) if shares(t_mid).sum() < total else (t_low, t_mid)
    exact = shares(t_high)
    alloc = np.floor(exact).astype(np.int64)
    remainder = exact - alloc
    # Bisection leaves sum(exact) within rounding of total; settle the last few units one at a time.
    for v in np.argsort(-remainder, kind="stable"):
        if alloc.sum() >= total:
            break
        alloc[v] += alloc[v] < hi[v]
    for v in np.argsort(remainder, kind="stable"):
        if alloc.sum() <= total:
            break
        alloc[v] -= alloc[v] > lo[v]
    while alloc.sum() < total:  # only reachable through float ties; any view with room will do
        alloc[np.flatnonzero(alloc < hi)[0]] += 1
    return [int(a) for a in alloc]


def _check_ratio(value: object, what: str) -> float:
    try:
        ratio = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < ratio <= 1.0:  # also rejects NaN
        raise ValueError(f"{what} must be in (0, 1], got {value!r}")
    return ratio


def _sequence(values: object, what: str, views: int) -> list:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{what} must be a sequence of {views} values (one per camera), got {values!r}")
    values = list(values)  # type: ignore[call-overload]
    if len(values) != views:
        raise ValueError(f"{what} must have {views} values (one per camera, DriveMM order), got {len(values)}")
    return values


def view_budgets(
    tokens_per_view: int = PATCHES_PER_VIEW,
    *,
    retain: float | None = None,
    view_ratios: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
    adaptive: Tensor | None = None,
    num_views: int | None = None,
) -> list[int]:
    """Tokens to keep per view, in camera order. Give exactly one of ``retain``, ``view_ratios``, ``counts``.

    - ``retain``: one ratio in (0, 1] for every view -> ``round(tokens_per_view * retain)``, at least 1;
    - ``view_ratios``: one ratio in (0, 1] per camera (DriveMM order) -> ``round(tokens_per_view * r_v)``, at least 1;
    - ``counts``: explicit budgets, integers in [0, tokens_per_view].
    ``adaptive`` (features ``[V, tokens_per_view, D]``) keeps the resulting total but re-divides it across views
    in proportion to each view's diversity (mean pairwise cosine distance, ``cosine.view_diversity``), each
    view within [1, tokens_per_view] (or [0, ...] when the total is below one per view).
    Rounding is half-up. ``num_views`` defaults to the six cameras, or to ``adaptive``'s view count.
    """
    n = tokens_per_view
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"tokens_per_view must be a positive integer, got {tokens_per_view!r}")
    if adaptive is not None:
        if not isinstance(adaptive, Tensor) or adaptive.dim() != 3 or adaptive.shape[1] != n:
            shape = tuple(adaptive.shape) if isinstance(adaptive, Tensor) else type(adaptive).__name__
            raise ValueError(f"adaptive must be features [views, {n}, dim], got {shape}")
        check_features(adaptive, "adaptive")
    views = num_views if num_views is not None else (adaptive.shape[0] if adaptive is not None else NUM_CAMERAS)
    if adaptive is not None and adaptive.shape[0] != views:
        raise ValueError(f"adaptive has {adaptive.shape[0]} views but num_views is {views}")

    given = [name for name, value in (("retain", retain), ("view_ratios", view_ratios), ("counts", counts))
             if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of retain, view_ratios, counts (got {', '.join(given) or 'none'})")
    if retain is not None:
        budgets = [max(1, _round_half_up(n * _check_ratio(retain, "retain")))] * views
    elif view_ratios is not None:
        ratios = [_check_ratio(r, f"view_ratios[{v}]") for v, r in enumerate(_sequence(view_ratios, "view_ratios", views))]
        budgets = [max(1, _round_half_up(n * r)) for r in ratios]
    else:
        budgets = []
        for v, c in enumerate(_sequence(counts, "counts", views)):
            try:
                budget = operator.index(c)
            except TypeError:
                raise ValueError(f"counts[{v}] must be an integer, got {c!r}") from None
            if not 0 <= budget <= n:
                raise ValueError(f"counts[{v}] must be in [0, {n}], got {budget}")
            budgets.append(budget)

    if adaptive is None:
        return budgets
    total = sum(budgets)
    floor = 1 if total >= views else 0
    diversity = view_diversity(adaptive).tolist()
    return apportion(total, diversity, [floor] * views, [n] * views)
