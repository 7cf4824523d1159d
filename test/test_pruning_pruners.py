"""get_pruner: every method's contract, DivPrune vs T-FPS, attention-driven pruners, MVPruner's two stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prune2drive_ros.pruning import PRUNER_NAMES, MVPruner, Pruner, farthest_point_sampling, get_pruner
from prune2drive_ros.pruning.pruners import grid_positions

SETTINGS = settings(max_examples=25, deadline=None)
BUDGET_METHODS = ("tfps", "fastv", "random", "pool")  # those that keep exactly budgets[v] per view


def _inputs(views: int = 6, tokens: int = 729, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(views, tokens, dim, generator=g), torch.rand(views, tokens, generator=g).softmax(-1)


def _ascending_unique_in_range(kept: torch.Tensor, tokens: int) -> bool:
    return kept.dtype == torch.long and torch.equal(kept, kept.unique(sorted=True)) and (
        kept.numel() == 0 or (int(kept.min()) >= 0 and int(kept.max()) < tokens))


def test_names_flags_and_unknown_name() -> None:
    assert PRUNER_NAMES == ("none", "tfps", "divprune", "fastv", "random", "pool", "mvpruner")
    for name in PRUNER_NAMES:
        p = get_pruner(name)
        assert isinstance(p, Pruner) and p.name == name
        assert p.question_dependent == p.needs_attention == (name in ("fastv", "mvpruner"))
        assert p.two_stage == (name == "mvpruner")
    with pytest.raises(ValueError, match=r"unknown pruner 'fps'.*tfps.*mvpruner"):
        get_pruner("fps")


@pytest.mark.parametrize("name", PRUNER_NAMES)
def test_every_pruner_on_drivemm_shapes(name: str) -> None:
    features, attention = _inputs()
    budgets = [73, 146, 73, 36, 73, 73]
    kept = get_pruner(name).select(features, budgets, attention=attention)
    assert len(kept) == 6 and all(_ascending_unique_in_range(k, 729) for k in kept)
    counts = [len(k) for k in kept]
    if name == "none":
        assert counts == [729] * 6
    elif name in BUDGET_METHODS:
        assert counts == budgets
    else:  # divprune and mvpruner stage 1 share the total across views
        assert sum(counts) == sum(budgets)
    again = get_pruner(name).select(features, budgets, attention=attention)
    assert all(torch.equal(a, b) for a, b in zip(kept, again, strict=True))  # deterministic


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 30), st.integers(0, 2**32 - 1), st.data())
def test_budgets_respected_for_every_method(views: int, tokens: int, seed: int, data) -> None:
    features, attention = _inputs(views, tokens, 5, seed)
    budgets = [data.draw(st.integers(0, tokens)) for _ in range(views)]
    for name in PRUNER_NAMES:
        kept = get_pruner(name).select(features, budgets, attention=attention)
        assert all(_ascending_unique_in_range(k, tokens) for k in kept)
        if name in BUDGET_METHODS:
            assert [len(k) for k in kept] == budgets
        elif name != "none":
            assert sum(len(k) for k in kept) == sum(budgets)


@SETTINGS
@given(st.integers(1, 40), st.integers(0, 2**32 - 1), st.data())
def test_divprune_equals_tfps_for_one_view(tokens: int, seed: int, data) -> None:
    features, _ = _inputs(1, tokens, 6, seed)
    budget = [data.draw(st.integers(0, tokens))]
    assert torch.equal(get_pruner("divprune").select(features, budget)[0], farthest_point_sampling(features, budget)[0])


def test_divprune_is_joint_over_views() -> None:
    # View 0 holds four distinct directions, view 1 four copies of one: the joint max-min rule
    # spends the shared budget of 4 on the diverse view, T-FPS gives each view its own 2.
    features = torch.stack([torch.eye(4), torch.ones(4, 4) / 2 + torch.eye(4) * 1e-3])
    assert [len(k) for k in get_pruner("divprune").select(features, [2, 2])] != [2, 2]
    assert [len(k) for k in get_pruner("tfps").select(features, [2, 2])] == [2, 2]


@pytest.mark.parametrize("name", ["fastv", "mvpruner"])
def test_attention_pruners_need_attention(name: str) -> None:
    features, attention = _inputs(2, 16, 4)
    with pytest.raises(ValueError, match="needs attention"):
        get_pruner(name).select(features, [4, 4])
    with pytest.raises(ValueError, match=r"\[views, tokens\]"):
        get_pruner(name).select(features, [4, 4], attention=attention[:, :8])
    bad = attention.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        get_pruner(name).select(features, [4, 4], attention=bad)


def test_fastv_keeps_the_most_attended_tokens_lowest_index_on_ties() -> None:
    features = torch.randn(2, 6, 3)
    attention = torch.tensor([[0.1, 0.5, 0.2, 0.5, 0.0, 0.3], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    kept = get_pruner("fastv").select(features, [3, 2], attention=attention)
    assert [k.tolist() for k in kept] == [[1, 3, 5], [0, 1]]


def test_random_is_seeded() -> None:
    features, _ = _inputs(3, 100, 4)
    a = get_pruner("random", seed=7).select(features, [10, 20, 30])
    b = get_pruner("random", seed=7).select(features, [10, 20, 30])
    c = get_pruner("random", seed=8).select(features, [10, 20, 30])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_pool_spreads_evenly_over_the_grid() -> None:
    for budget in [1, 9, 36, 72, 73, 182, 364, 700, 728, 729]:
        picks = np.array(grid_positions(729, budget))
        assert len(picks) == budget == len(set(picks.tolist()))
        rows, cols = picks // 27, picks % 27
        if budget >= 9:  # covers every third of the image in both directions
            assert {r // 9 for r in rows} == {0, 1, 2} and {c // 9 for c in cols} == {0, 1, 2}
            assert abs(rows.mean() - 13) < 1.5 and abs(cols.mean() - 13) < 1.5  # centred
    assert grid_positions(729, 9) == tuple(r * 27 + c for r in (4, 13, 22) for c in (4, 13, 22))
    assert len(grid_positions(50, 7)) == 7  # not a square: even spacing in raster order


def test_mvpruner_two_stages() -> None:
    pruner = get_pruner("mvpruner", stage2_layer_offset=3)
    assert isinstance(pruner, MVPruner) and pruner.stage2_layer_offset == 3
    features, attention = _inputs(6, 729, 32)
    # View 1 is nearly one repeated token: low diversity, so stage 1 gives it less than the others.
    features[1] = features[1, :1] + 0.01 * features[1]
    budgets = [72] * 6
    stage1 = pruner.stage1_budgets(budgets, 729)
    assert stage1 == [144] * 6 and pruner.stage1_budgets([500], 729) == [729]
    kept = pruner.select(features, stage1, attention=attention)
    counts = [len(k) for k in kept]
    assert sum(counts) == sum(stage1) and counts[1] == min(counts) and min(counts) >= 1

    # Stage 2: view 3 receives most of the instruction's attention, so it gets most of the final total.
    survivors = [features[v, k] for v, k in enumerate(kept)]
    stage2_attention = [torch.full((len(k),), 0.01) for k in kept]
    stage2_attention[3] = torch.linspace(1.0, 2.0, len(kept[3]))
    final = pruner.reselect(survivors, budgets, attention=stage2_attention)
    assert sum(len(k) for k in final) == sum(budgets)
    assert all(_ascending_unique_in_range(k, len(s)) for k, s in zip(final, survivors, strict=True))
    assert len(final[3]) == max(len(k) for k in final) and all(len(k) >= 1 for k in final)
    assert final[3].tolist() == list(range(len(kept[3])))[-len(final[3]):]  # its most attended tokens
    with pytest.raises(ValueError, match="needs attention"):
        pruner.reselect(survivors, budgets, attention=None)
    with pytest.raises(ValueError, match="one attention vector per view"):
        pruner.reselect(survivors, budgets, attention=stage2_attention[:2])


def test_mvpruner_constructor_checks() -> None:
    with pytest.raises(ValueError, match="stage2_layer_offset"):
        get_pruner("mvpruner", stage2_layer_offset=0)


def test_select_keeps_the_device_and_accepts_half_precision() -> None:
    features, attention = _inputs(2, 49, 8)
    for name in PRUNER_NAMES:
        for dtype in (torch.float16, torch.bfloat16):
            kept = get_pruner(name).select(features.to(dtype), [5, 7], attention=attention.to(dtype))
            assert all(k.device == features.device and k.dtype == torch.long for k in kept)


def test_token_diversity_is_mean_distance_to_the_other_tokens() -> None:
    from prune2drive_ros.pruning.mvpruner import token_diversity

    x = torch.randn(2, 9, 4)
    x[0, 3] = x[0, 5] = 0.0
    unit = torch.nn.functional.normalize(x, dim=-1)
    cos = unit @ unit.transpose(1, 2)
    cos[0, 3, 5] = cos[0, 5, 3] = cos[0, 3, 3] = cos[0, 5, 5] = 1.0  # zero vectors coincide
    expected = ((1 - cos).sum(-1)) / 8  # the self-distance is 0
    assert torch.allclose(token_diversity(x), expected, atol=1e-5)
