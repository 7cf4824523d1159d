"""Cosine geometry of token features: distance matrices and per-view diversity, in fp32.

Every pruner measures tokens with the cosine distance ``d(i, j) = 1 - cos(x_i, x_j)``, computed in fp32
whatever the input dtype (fp16 rounding would turn near-ties into ties and change the selection).

A zero vector has no direction, so its cosine is defined here: all zero vectors point along one extra
axis orthogonal to every real feature. They are therefore identical to each other (distance 0) and at
distance 1 from every other token, so they behave like any other group of duplicate tokens.

Distances are snapped to a grid of 2^-20 (about 1e-6, a few fp32 ulps). fp32 rounding would otherwise
make mathematically equal distances (parallel vectors, zero vectors, orthogonal axes) differ in the last
bit, and "ties go to the lowest index" would depend on the summation order of the matmul.

``cosine_distances_static`` computes the same distances without a host sync, for CUDA graphs: both
rescaling branches are taken on the device and the finiteness check becomes a flag the caller reads
later. On a GPU its Gram matrix can run as 3xTF32 (``precision="tf32x3"``): tensor-core speed with
about fp32 accuracy, so its picks are checked equal to the fp32 ones.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from .checks import check_finite

RESOLUTION = 2.0**-20

# Norms in this range keep every fp32 product x_ik * x_jk and every Gram entry far from over/underflow.
_SAFE_NORMS = (1e-12, 1e12)
PRECISIONS = ("fp32", "tf32x3")
_TF32_HIGH_BITS = -(1 << 13)  # int32 mask: keeps sign, exponent and the 10 mantissa bits TF32 has


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


def fp32_norms_static(features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``fp32_norms`` without a host sync: ``(x, norms, zero, finite)``, ``finite`` a device bool.

    Both branches are computed and one is chosen on the device, so the results equal ``fp32_norms``'s
    bit for bit (``zero`` is all False where ``fp32_norms`` returns None).
    """
    x = features.float()
    norms = torch.linalg.vector_norm(x, dim=-1)
    safe = ((norms >= _SAFE_NORMS[0]) & (norms <= _SAFE_NORMS[1])).all()
    scaled = x / x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    x = torch.where(safe, x, scaled)
    norms = torch.where(safe, norms, torch.linalg.vector_norm(scaled, dim=-1))
    zero = norms == 0
    return x, norms.masked_fill(zero, 1.0), zero, torch.isfinite(features).all()


@contextmanager
def _tf32_matmuls():
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):  # before torch 2.9
        before, matmul.allow_tf32 = matmul.allow_tf32, True
        try:
            yield
        finally:
            matmul.allow_tf32 = before
        return
    before, matmul.fp32_precision = matmul.fp32_precision, "tf32"  # the legacy flag must not be mixed in
    try:
        yield
    finally:
        matmul.fp32_precision = before


def gram(x: Tensor, precision: str = "fp32") -> Tensor:
    """``x @ x^T`` in fp32, or as 3xTF32: x = hi + lo with hi exact in TF32, and ``hi hi^T + (hi lo^T + lo hi^T)``
    keeps about 21 mantissa bits (the dropped ``lo lo^T`` is 2^-22 relative) at tensor-core speed."""
    if precision == "fp32":
        return x @ x.transpose(-1, -2)
    if precision != "tf32x3":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    hi = (x.view(torch.int32) & _TF32_HIGH_BITS).view(torch.float32)
    lo = x - hi  # exact in fp32
    with _tf32_matmuls():
        cross = hi @ lo.transpose(-1, -2)
        square = hi @ hi.transpose(-1, -2)
    return square + (cross + cross.transpose(-1, -2))  # lo hi^T is the transpose: one GEMM saved


def _distances(x: Tensor, norms: Tensor, zero: Tensor | None, precision: str) -> Tensor:
    inv = norms.reciprocal()
    # Normalizing the N x N Gram matrix is cheaper than normalizing the N x D features when D > N.
    # inv_i * inv_j is symmetric, so d(i, j) == d(j, i) wherever the matmul is (CPU BLAS is: tested).
    sim = gram(x, precision).mul_(inv.unsqueeze(-1) * inv.unsqueeze(-2))
    if zero is not None:
        sim += (zero.unsqueeze(-1) & zero.unsqueeze(-2)).to(sim.dtype)
    dist = sim.neg_().add_(1.0).clamp_(0.0, 2.0)
    # Scaling by a power of two is exact, so the snap is a pure rounding: equal-in-math becomes equal.
    return dist.div_(RESOLUTION).round_().mul_(RESOLUTION)


@torch.no_grad()  # selection is not differentiable; skip autograd bookkeeping on N x N tensors
def cosine_distances(features: Tensor) -> Tensor:
    """Pairwise cosine distances ``[..., N, N]`` in fp32 for features ``[..., N, D]``, clamped to [0, 2]."""
    x, norms, zero = fp32_norms(features)
    return _distances(x, norms, zero, "fp32")


@torch.no_grad()
def cosine_distances_static(features: Tensor, precision: str = "fp32") -> tuple[Tensor, Tensor]:
    """``cosine_distances`` with no host sync: the distances and a device bool, False when a feature is NaN or
    inf (the distances are then meaningless and the caller must refuse them once it reads the flag)."""
    x, norms, zero, finite = fp32_norms_static(features)
    return _distances(x, norms, zero, precision), finite


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
