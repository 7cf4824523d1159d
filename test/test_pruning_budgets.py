"""Per-camera budgets (equal, per-camera ratios, explicit, adaptive), apportioning and the FLOPs formula."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prune2drive_ros.pruning import apportion, prefill_flops, view_budgets, view_diversity
from prune2drive_ros.pruning.flops import layer_flops

SETTINGS = settings(max_examples=60, deadline=None)


def test_global_retain_gives_equal_budgets() -> None:
    assert view_budgets(729, retain=0.1) == [73] * 6  # round(72.9)
    assert view_budgets(729, retain=1.0) == [729] * 6
    assert view_budgets(729, retain=1e-6) == [1] * 6  # at least one token per view
    assert view_budgets(100, retain=0.125) == [13] * 6  # halves round up
    assert view_budgets(729, retain=0.25, num_views=2) == [182, 182]


def test_per_camera_ratios_and_counts_in_camera_order() -> None:
    ratios = [0.3, 0.1, 0.1, 0.2, 0.1, 0.15]
    assert view_budgets(729, view_ratios=ratios) == [round(729 * r) for r in ratios]
    assert view_budgets(729, view_ratios=(1.0,) * 6) == [729] * 6
    assert view_budgets(729, counts=[0, 1, 72, 100, 729, 5]) == [0, 1, 72, 100, 729, 5]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({}, "retain, view_ratios, counts"),
        ({"retain": 0.1, "counts": [1] * 6}, "retain, counts"),
        ({"retain": 0.0}, "retain"),
        ({"retain": 1.5}, "retain"),
        ({"retain": -0.1}, "retain"),
        ({"retain": float("nan")}, "retain"),
        ({"retain": "half"}, "retain"),
        ({"view_ratios": [0.1] * 5}, "view_ratios"),
        ({"view_ratios": [0.1] * 7}, "view_ratios"),
        ({"view_ratios": [0.1, 0.1, 0.0, 0.1, 0.1, 0.1]}, r"view_ratios\[2\]"),
        ({"view_ratios": [0.1, 0.1, 0.1, 1.01, 0.1, 0.1]}, r"view_ratios\[3\]"),
        ({"view_ratios": [0.1, float("nan"), 0.1, 0.1, 0.1, 0.1]}, r"view_ratios\[1\]"),
        ({"view_ratios": 0.1}, "view_ratios"),
        ({"counts": [1] * 5}, "counts"),
        ({"counts": [1, 2, 3, 4, 5, 730]}, r"counts\[5\]"),
        ({"counts": [1, 2, 3, -1, 5, 6]}, r"counts\[3\]"),
        ({"counts": [1, 2.5, 3, 4, 5, 6]}, r"counts\[1\]"),
        ({"retain": 0.1, "adaptive": torch.randn(6, 100, 8)}, "adaptive"),
        ({"retain": 0.1, "adaptive": torch.randn(729, 8)}, "adaptive"),
        ({"retain": 0.1, "adaptive": torch.randn(5, 729, 8), "num_views": 6}, "adaptive"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        view_budgets(729, **kwargs)


def test_bad_tokens_per_view() -> None:
    with pytest.raises(ValueError, match="tokens_per_view"):
        view_budgets(0, retain=0.1)


def test_adaptive_gives_busy_views_more_and_keeps_the_total() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, 729, 64, generator=g)
    features[2] = features[2, :1] + 0.05 * features[2]  # a nearly uniform view (e.g. empty road)
    features[5] = features[5, :1] + 0.2 * features[5]
    base = view_budgets(729, retain=0.1)
    adaptive = view_budgets(729, retain=0.1, adaptive=features)
    assert sum(adaptive) == sum(base)
    assert adaptive[2] == min(adaptive) and adaptive[2] < adaptive[5] < adaptive[0]
    diversity = view_diversity(features)
    assert diversity[2] < diversity[5] < diversity[0]
    with pytest.raises(ValueError, match="NaN or inf"):
        view_budgets(729, retain=0.1, adaptive=torch.full((6, 729, 4), float("nan")))


@SETTINGS
@given(st.lists(st.integers(0, 729), min_size=6, max_size=6), st.integers(0, 2**32 - 1))
def test_adaptive_bounds_and_exact_total(counts: list[int], seed: int) -> None:
    features = torch.randn(6, 729, 4, generator=torch.Generator().manual_seed(seed))
    budgets = view_budgets(729, counts=counts, adaptive=features)
    assert sum(budgets) == sum(counts)
    floor = 1 if sum(counts) >= 6 else 0
    assert all(floor <= b <= 729 for b in budgets)


def test_view_diversity_matches_pairwise_mean() -> None:
    x = torch.randn(3, 20, 5)
    x[1, 4] = 0.0
    unit = torch.nn.functional.normalize(x, dim=-1)
    cos = unit @ unit.transpose(1, 2)
    cos[1, 4, 4] = 1.0  # the zero vector coincides with itself (the documented convention)
    off_diagonal = ~torch.eye(20, dtype=torch.bool)
    expected = torch.stack([(1 - cos[v])[off_diagonal].mean() for v in range(3)])
    assert torch.allclose(view_diversity(x), expected, atol=1e-5)
    assert view_diversity(torch.randn(2, 1, 3)).tolist() == [0.0, 0.0]


@SETTINGS
@given(
    st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8),
    st.integers(0, 5000),
)
def test_apportion_is_exact_bounded_and_proportional(weights: list[float], total: int) -> None:
    views = len(weights)
    high = [total] * views
    alloc = apportion(total, weights, [0] * views, high)
    assert sum(alloc) == total and all(0 <= a <= total for a in alloc)
    if sum(weights) > 0:
        # No bound binds here, so every view gets its proportional share rounded up or down.
        share = [total * w / sum(weights) for w in weights]
        assert all(abs(a - s) < 1 + 1e-6 for a, s in zip(alloc, share, strict=True))


@SETTINGS
@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 20), st.integers(0, 40)), min_size=1, max_size=6),
       st.data())
def test_apportion_respects_bounds(spec, data) -> None:
    weights = [w for w, _, _ in spec]
    low = [lo for _, lo, _ in spec]
    high = [lo + extra for _, lo, extra in spec]
    total = data.draw(st.integers(sum(low), sum(high)))
    alloc = apportion(total, weights, low, high)
    assert sum(alloc) == total and all(lo <= a <= hi for a, lo, hi in zip(alloc, low, high, strict=True))
    with pytest.raises(ValueError, match="cannot split"):
        apportion(sum(high) + 1, weights, low, high)


# -- FLOPs ------------------------------------------------------------------------------------------
DRIVEMM = {"hidden": 4096, "ffn": 14336, "layers": 32}
TEXT_TOKENS = 60  # chat template + camera sentence + a short question, as the Llama-3 tokenizer counts them


def test_layer_flops_formula() -> None:
    assert layer_flops(10, hidden=4, ffn=8) == 4 * 10 * 16 + 2 * 100 * 4 + 3 * 10 * 4 * 8


def test_drivemm_72_tokens_per_view_is_at_most_13_4_percent_of_dense() -> None:
    dense = 6 * 730 + TEXT_TOKENS  # 729 patches + image_newline per view
    kept = 6 * (72 + 1) + TEXT_TOKENS  # the newline is never pruned
    ratio = prefill_flops(dense, kept, prune_layer=1, **DRIVEMM) / prefill_flops(dense, dense, prune_layer=1, **DRIVEMM)
    assert ratio <= 0.134
    assert math.isclose(ratio, 0.1274, abs_tol=5e-4)


def test_prefill_flops_edges() -> None:
    f = layer_flops(100, hidden=64, ffn=256)
    assert prefill_flops(100, 100, hidden=64, ffn=256, layers=4, prune_layer=2) == 4 * f
    assert prefill_flops(100, 10, hidden=64, ffn=256, layers=4, prune_layer=4) == 4 * f
    assert prefill_flops(100, 10, hidden=64, ffn=256, layers=4, prune_layer=0) == 4 * layer_flops(10, hidden=64, ffn=256)
    with pytest.raises(ValueError, match="prune_layer"):
        prefill_flops(100, 10, hidden=64, ffn=256, layers=4, prune_layer=5)
    with pytest.raises(ValueError, match="n_tokens_kept"):
        prefill_flops(100, 101, hidden=64, ffn=256, layers=4, prune_layer=1)
