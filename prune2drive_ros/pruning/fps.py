"""T-FPS (Prune2Drive): per-view farthest-point sampling of visual tokens under cosine distance.

The rule, for each view independently:
    S = {argmax_i min_{j != i} d(i, j)}                  the most isolated token first
    repeat until |S| = budget:  S += argmax_{j not in S} min_{s in S} d(s, j)
with ties going to the lowest index. Kept indices are returned in ascending order, so kept tokens keep
their original sequence order (and RoPE positions) in the LLM.

``farthest_point_sampling`` runs all views as one batch: one ``[V, N, N]`` distance matrix, then a
running minimum ``gap[v, j] = min_{s in S_v} d(s, j)`` updated with one row per pick (O(k N) per view)
and no host sync inside the loop. ``reference_tfps_loop`` is the published loop kept as the baseline.
``farthest_point_sampling_static`` is the same selection with no host sync at all, for a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .checks import check_budgets, check_features, check_finite
from .cosine import cosine_distances, cosine_distances_static

OrderKernel = Callable[[Tensor, int], Tensor]


def isolation(dist: Tensor) -> Tensor:
    """``min_{j != i} d(i, j)`` per token of ``dist [..., N, N]`` whose diagonal holds +inf.

    Mutual nearest neighbours tie for "most isolated" in exact arithmetic. Reading both d(i, j) and
    d(j, i) keeps that tie exact (and so resolved to the lower index) even if a matmul returned x x^T
    with last-bit asymmetries.
    """
    return torch.minimum(dist.amin(dim=-1), dist.amin(dim=-2))


def max_min_order(dist: Tensor, steps: int) -> Tensor:
    """First ``steps`` picks of the max-min greedy for each distance matrix in ``dist [B, N, N]`` -> ``[B, steps]``.

    Overwrites the diagonal of ``dist``. Views that need fewer picks simply use a prefix of their row:
    the greedy is prefix-consistent, so the first b picks of a longer run are the b-pick answer.
    """
    batch, n, _ = dist.shape
    diagonal = dist.diagonal(dim1=-2, dim2=-1)
    diagonal.fill_(float("inf"))  # a token is not its own nearest neighbour
    first = isolation(dist).argmax(dim=-1)  # argmax returns the first maximum: ties go to the lowest index
    # With d(s, s) = -inf, taking row s into the running minimum also marks s as picked, so a picked
    # token can never win again, even when every remaining distance is 0 (duplicates).
    diagonal.fill_(float("-inf"))

    def row(pick: Tensor) -> Tensor:
        return dist.gather(1, pick.view(batch, 1, 1).expand(batch, 1, n)).squeeze(1)

    picks = [first]
    gap = row(first)
    for _ in range(steps - 1):
        pick = gap.argmax(dim=-1)
        picks.append(pick)
        gap = torch.minimum(gap, row(pick))
    return torch.stack(picks, dim=-1)


def ascending_prefixes(order: Tensor, budgets: Sequence[int]) -> list[Tensor]:
    """The first ``budgets[v]`` picks of each row of ``order [B, k]``, sorted (budgets are host ints: no sync)."""
    return [order[v, :b].sort().values for v, b in enumerate(budgets)]


def max_min_select(features: Tensor, budgets: Sequence[int], kernel: OrderKernel = max_min_order) -> list[Tensor]:
    """The batched T-FPS with a pluggable order kernel (``torch.compile(max_min_order)`` in the benchmark)."""
    views, tokens, _ = check_features(features)
    budgets = check_budgets(budgets, views, tokens)
    steps = max(budgets, default=0)
    if steps == 0:
        check_finite(features)
        return [torch.empty(0, dtype=torch.long, device=features.device) for _ in budgets]
    return ascending_prefixes(kernel(cosine_distances(features), steps), budgets)


def farthest_point_sampling(features: Tensor, budgets: Sequence[int]) -> list[Tensor]:
    """T-FPS per view: kept token indices (ascending ``LongTensor`` per view) for ``features [V, N, D]``.

    ``budgets`` holds one int per view in [0, N]. Inputs may be fp32, fp16 or bf16 on any device; the
    distances are computed in fp32. NaN or inf features raise ValueError. See ``cosine`` for how zero
    vectors are treated (identical to each other, orthogonal to everything else).
    """
    return max_min_select(features, budgets)


def farthest_point_sampling_static(features: Tensor, budgets: Sequence[int],
                                   precision: str = "fp32") -> tuple[list[Tensor], Tensor]:
    """``farthest_point_sampling`` with no host sync (capturable in a CUDA graph; the budgets are host ints).

    Returns the picks and a device bool that is False when the features hold NaN or inf: instead of
    raising here (a sync), the caller refuses the result once it reads the flag. ``precision="tf32x3"``
    computes the distances with TF32 tensor cores at about fp32 accuracy (``cosine.gram``).
    """
    views, tokens, _ = check_features(features)
    budgets = check_budgets(budgets, views, tokens)
    dist, finite = cosine_distances_static(features, precision)
    steps = max(budgets, default=0)
    if steps == 0:
        return [torch.empty(0, dtype=torch.long, device=features.device) for _ in budgets], finite
    return ascending_prefixes(max_min_order(dist, steps), budgets), finite


def published_loop(dist: Tensor, budget: int) -> list[int]:
    """The published selection on one view's distance matrix ``[N, N]``: picks in order (overwrites the diagonal)."""
    if budget == 0:
        return []
    dist.fill_diagonal_(float("inf"))
    selected = [isolation(dist).argmax().item()]
    while len(selected) < budget:
        gap = dist[selected].min(dim=0).values  # the whole picked set, every step: O(k N) per pick
        gap[selected] = float("-inf")
        selected.append(gap.argmax().item())  # one host sync per pick
    return selected


def reference_tfps_loop(features: Tensor, budgets: Sequence[int]) -> list[Tensor]:
    """The plain published T-FPS loop: the correctness and speed baseline for ``farthest_point_sampling``.

    One view at a time, the minimum recomputed over the whole picked set at every step (O(k^2 N)) and
    one host sync per pick (``.item()``). It starts from the very same distance matrix (bit for bit) and
    uses the same tie rule, so it must return the same indices; timings differ only in the selection.
    """
    views, tokens, _ = check_features(features)
    budgets = check_budgets(budgets, views, tokens)
    dist = cosine_distances(features)
    return [torch.tensor(sorted(published_loop(dist[v], b)), dtype=torch.long, device=features.device)
            for v, b in enumerate(budgets)]
