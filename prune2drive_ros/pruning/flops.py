"""Prefill FLOPs as the token-pruning papers count them (docs/pruning.md)."""

from __future__ import annotations


def layer_flops(n_tokens: int, *, hidden: int, ffn: int) -> float:
    """One decoder layer over n tokens: ``4 n d^2 + 2 n^2 d + 3 n d m``.

    QKVO projections, attention scores and weighted sum, and a SwiGLU FFN (three d x m matrices);
    multiply-accumulates count as one, as the papers do.
    """
    n, d, m = float(n_tokens), float(hidden), float(ffn)
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def prefill_flops(n_tokens_dense: int, n_tokens_kept: int, *, hidden: int, ffn: int, layers: int,
                  prune_layer: int) -> float:
    """Prefill FLOPs when the sequence shrinks from n_dense to n_kept tokens before layer K of T.

    ``K * F(n_dense) + (T - K) * F(n_kept)``; with ``n_kept == n_dense`` it is the dense cost.
    """
    if not 0 <= prune_layer <= layers:
        raise ValueError(f"prune_layer must be in [0, layers={layers}], got {prune_layer}")
    if not 0 <= n_tokens_kept <= n_tokens_dense:
        raise ValueError(f"n_tokens_kept must be in [0, n_tokens_dense={n_tokens_dense}], got {n_tokens_kept}")
    dense = layer_flops(n_tokens_dense, hidden=hidden, ffn=ffn)
    kept = layer_flops(n_tokens_kept, hidden=hidden, ffn=ffn)
    return prune_layer * dense + (layers - prune_layer) * kept
