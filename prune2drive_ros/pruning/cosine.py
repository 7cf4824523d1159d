"""Cosine geometry of token features: distance matrices and per-view diversity, in fp32.

Every pruner measures tokens with the cosine distance ``d(i, j) = 1 - cos(x_i, x_j)``, computed in fp32
whatever the input dtype (fp16 rounding would turn near-ties into ties and change the selection).

A zero vector has no direction, so its cosine is defined here: all zero vectors point along one extra
axis orthogonal to every real feature. They are therefore identical to each other (distance 0) and at
distance 1 from every other token, so they behave like any other group of duplicate tokens.

Distances are snapped to a grid of 2^-20 (about 1e-6, a few fp32 ulps). fp32 rounding would otherwise
make mathematically equal distances (parallel vectors, zero vectors, orthogonal axes) differ in the last
bit, and "ties go to the lowest index" would depend on the summation order of the matmul.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_finite

RESOLUTION = 2.0**-20

# Norms in this range keep every fp32 product x_ik * x_jk and every Gram entry far from over/underflow.
_SAFE_NORMS = (1e-12, 1e12)


def fp32_norms(features: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x, norms, zero)``: fp32 features, their norms (1 for zero vectors) and the zero-vector mask.

    Raises ValueError on NaN or inf. Tokens are rescaled by their largest component only when some norm is
    outside the safe range (huge, tiny or zero vectors), so the common case costs one pass over ``x``.
    ``zero`` is None when no token is a zero vector.
    """
    x = features.float()
    norms = torch.linalg.vector_norm(x, dim=-1)
    if bool(((norms >= _SAFE_NORMS[0]) & (norms <= _SAFE_NORMS[1])).all()):  # False for NaN/inf norms too
        return x, norms, None
    check_finite(x)
    x = x / x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    norms = torch.linalg.vector_norm(x, dim=-1)
    zero = norms == 0
    return x, norms.masked_fill(zero, 1.0), zero if bool(zero.any()) else None


@torch.no_grad()  # selection is not differentiable; skip autograd bookkeeping on N x N tensors
def cosine_distances(features: Tensor) -> Tensor:
    """Pairwise cosine distances ``[..., N, N]`` in fp32 for features ``[..., N, D]``, clamped to [0, 2]."""
    x, norms, zero = fp32_norms(features)
    inv = norms.reciprocal()
    # Normalizing the N x N Gram matrix is cheaper than normalizing the N x D features when D > N.
    # inv_i * inv_j is symmetric, so d(i, j) == d(j, i) wherever the matmul is (CPU BLAS is: tested).
    sim = (x @ x.transpose(-1, -2)).mul_(inv.unsqueeze(-1) * inv.unsqueeze(-2))
    if zero is not None:
        sim += (zero.unsqueeze(-1) & zero.unsqueeze(-2)).to(sim.dtype)
    dist = sim.neg_().add_(1.0).clamp_(0.0, 2.0)
    # Scaling by a power of two is exact, so the snap is a pure rounding: equal-in-math becomes equal.
    return dist.div_(RESOLUTION).round_().mul_(RESOLUTION)


@torch.no_grad()
def view_diversity(features: Tensor) -> Tensor:
    """Mean pairwise cosine distance between the tokens of each view: ``[V, N, D] -> [V]`` (0 for N = 1).

    For unit vectors ``sum_{i != j} cos(x_i, x_j) = |sum_i x_i|^2 - N``, so this costs O(N D), not O(N^2 D).
    """
    x, norms, zero = fp32_norms(features)
    n = x.shape[-2]
    if n < 2:
        return x.new_zeros(x.shape[:-2])
    direction_sum = (norms.reciprocal().unsqueeze(-2) @ x).squeeze(-2)
    norm2 = direction_sum.square().sum(dim=-1)
    if zero is not None:  # the zero vectors' shared extra axis
        norm2 = norm2 + zero.sum(dim=-1).float().square()
    mean_cos = (norm2 - n) / (n * (n - 1))
    return (1.0 - mean_cos).clamp(0.0, 2.0)
