"""T-FPS: equality with a brute-force max-min greedy and the published loop, ties, degenerate input, dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from prune2drive_ros.pruning import farthest_point_sampling, reference_tfps_loop
from prune2drive_ros.pruning.cosine import RESOLUTION, cosine_distances, cosine_distances_static
from prune2drive_ros.pruning.fps import ascending_prefixes, farthest_point_sampling_static, max_min_order
from prune2drive_ros.vlm.graph_rules import HostSyncGuard

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- an independent brute force, in float64 ------------------------------------------------------------
def brute_distances(x: np.ndarray) -> np.ndarray:
    """1 - cos with the documented zero-vector convention: zero vectors coincide, and are orthogonal to the rest."""
    n = len(x)
    d = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
            if ni == 0 or nj == 0:
                d[i, j] = 0.0 if ni == nj else 1.0
            else:
                d[i, j] = 1.0 - float(x[i] @ x[j]) / (ni * nj)
    return np.clip(d, 0.0, 2.0)


TIE = 1e-9  # float64 noise is ~1e-16: closer scores are equal in exact arithmetic


def brute_force_max_min(x: np.ndarray, budget: int) -> tuple[list[int], float]:
    """The greedy written literally; also the smallest gap between a pick and a runner-up that is not a tie."""
    n = len(x)
    d = brute_distances(x)
    margin = math.inf

    def pick(scores: dict[int, float]) -> int:
        nonlocal margin
        best = max(scores.values())
        others = [s for s in scores.values() if s < best - TIE]
        if others:
            margin = min(margin, best - max(others))
        return min(i for i, s in scores.items() if s >= best - TIE)  # ties: the lowest index

    if budget == 0:
        return [], margin
    order = [pick({i: min((d[i, j] for j in range(n) if j != i), default=math.inf) for i in range(n)})]
    while len(order) < budget:
        order.append(pick({j: min(d[s, j] for s in order) for j in range(n) if j not in order}))
    return order, margin


@st.composite
def token_sets(draw, max_views: int = 3, max_tokens: int = 12):
    """Random features with, sometimes, duplicated rows and zero rows, plus a budget per view."""
    views = draw(st.integers(1, max_views))
    tokens = draw(st.integers(1, max_tokens))
    dim = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(views, tokens, dim)) * rng.choice([1e-3, 1.0, 1e3], size=(views, tokens, 1))
    if draw(st.booleans()) and tokens > 1:
        x[:, rng.integers(0, tokens, tokens // 2)] = x[:, rng.integers(0, tokens, tokens // 2)]  # duplicates
    if draw(st.booleans()):
        x[:, rng.integers(0, tokens, 2)] = 0.0  # zero vectors
    budgets = [draw(st.integers(0, tokens)) for _ in range(views)]
    return torch.from_numpy(x).float(), budgets


def _check_kept(kept: list[torch.Tensor], budgets: list[int], tokens: int) -> None:
    assert len(kept) == len(budgets)
    for k, b in zip(kept, budgets, strict=True):
        assert k.dtype == torch.long and k.dim() == 1 and len(k) == b
        assert torch.equal(k, k.unique(sorted=True))  # unique and ascending
        assert b == 0 or (0 <= int(k.min()) and int(k.max()) < tokens)


# -- properties --------------------------------------------------------------------------------------------
@SETTINGS
@given(token_sets())
def test_budgets_respected_unique_sorted_in_range_deterministic(case) -> None:
    x, budgets = case
    kept = farthest_point_sampling(x, budgets)
    _check_kept(kept, budgets, x.shape[1])
    assert all(torch.equal(a, b) for a, b in zip(kept, farthest_point_sampling(x, budgets), strict=True))


@SETTINGS
@given(token_sets())
def test_equals_brute_force_max_min_greedy(case) -> None:
    x, budgets = case
    kept = farthest_point_sampling(x, budgets)
    for v, budget in enumerate(budgets):
        order, margin = brute_force_max_min(x[v].double().numpy(), budget)
        # fp32 cannot order candidates closer than its rounding (~1e-6); exact ties are still compared.
        assume(margin > 1e-5)
        assert kept[v].tolist() == sorted(order)


@SETTINGS
@given(token_sets())
def test_equals_published_loop(case) -> None:
    x, budgets = case
    fast, loop = farthest_point_sampling(x, budgets), reference_tfps_loop(x, budgets)
    assert all(torch.equal(a, b) for a, b in zip(fast, loop, strict=True))


@SETTINGS
@given(token_sets())
def test_views_are_independent(case) -> None:
    x, budgets = case
    together = farthest_point_sampling(x, budgets)
    for v, budget in enumerate(budgets):
        assert torch.equal(together[v], farthest_point_sampling(x[v : v + 1], [budget])[0])


@SETTINGS
@given(token_sets(max_views=1))
def test_first_pick_is_the_most_isolated_token(case) -> None:
    x, _ = case
    n = x.shape[1]
    d = brute_distances(x[0].double().numpy())
    isolation = [min((d[i, j] for j in range(n) if j != i), default=math.inf) for i in range(n)]
    best = max(isolation)
    runner_up = max((s for s in isolation if s < best - TIE), default=-math.inf)
    assume(best - runner_up > 1e-5)
    first = min(i for i, s in enumerate(isolation) if s >= best - TIE)
    assert farthest_point_sampling(x, [1])[0].tolist() == [first]


@SETTINGS
@given(st.integers(2, 6), st.integers(0, 2**32 - 1), st.data())
def test_identical_tokens_never_both_kept_while_a_distinct_one_remains(distinct: int, seed: int, data) -> None:
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(distinct, 8))
    group = rng.integers(0, distinct, size=distinct * 3)
    group[:distinct] = np.arange(distinct)  # every prototype occurs at least once
    rng.shuffle(group)
    x = torch.from_numpy(prototypes[group]).float()[None]
    budget = data.draw(st.integers(1, len(group)))
    kept_groups = group[farthest_point_sampling(x, [budget])[0].numpy()]
    if budget <= distinct:
        assert len(set(kept_groups.tolist())) == budget  # no duplicate while a distinct token remains
    else:
        assert set(kept_groups.tolist()) == set(range(distinct))  # every distinct token before any repeat


# -- ties, degenerate input, errors --------------------------------------------------------------------
def test_exact_ties_go_to_the_lowest_index() -> None:
    x = torch.eye(7)[None]  # every pair at distance exactly 1
    assert farthest_point_sampling(x, [3])[0].tolist() == [0, 1, 2]
    same = torch.ones(1, 5, 4)  # every distance 0: picked tokens must still never repeat
    assert farthest_point_sampling(same, [5])[0].tolist() == [0, 1, 2, 3, 4]
    assert farthest_point_sampling(same, [2])[0].tolist() == [0, 1]


def test_degenerate_budgets_and_sizes() -> None:
    x = torch.randn(3, 10, 5)
    kept = farthest_point_sampling(x, [0, 10, 4])
    assert kept[0].dtype == torch.long and kept[0].numel() == 0
    assert kept[1].tolist() == list(range(10))
    assert len(kept[2]) == 4
    assert [k.numel() for k in farthest_point_sampling(x, [0, 0, 0])] == [0, 0, 0]
    assert farthest_point_sampling(torch.randn(2, 1, 5), [1, 0])[0].tolist() == [0]


def test_zero_vectors_behave_like_one_duplicate_group() -> None:
    assert farthest_point_sampling(torch.zeros(1, 4, 3), [3])[0].tolist() == [0, 1, 2]
    x = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    # The real token is at distance 1 from every zero vector, so it is the most isolated; then one zero.
    assert farthest_point_sampling(x, [2])[0].tolist() == [0, 2]


def test_huge_and_tiny_finite_values() -> None:
    x = torch.tensor([[[3e38, 0.0], [1e-40, 1e-40], [0.0, -2e38], [1.0, 1.0]]])
    assert farthest_point_sampling(x, [4])[0].tolist() == [0, 1, 2, 3]
    assert farthest_point_sampling(x, [2])[0].tolist() == reference_tfps_loop(x, [2])[0].tolist()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_is_a_clear_error(bad: float) -> None:
    x = torch.randn(2, 6, 4)
    x[1, 3, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        farthest_point_sampling(x, [2, 2])
    with pytest.raises(ValueError, match="NaN or inf"):
        farthest_point_sampling(x, [0, 0])


@pytest.mark.parametrize(
    ("features", "budgets", "message"),
    [
        (torch.randn(6, 4), [1], "views, tokens, dim"),
        (torch.ones(1, 4, 2, dtype=torch.long), [1], "floating point"),
        (torch.randn(2, 4, 3), [1], "one entry per view"),
        (torch.randn(2, 4, 3), [1, 5], r"\[0, 4\]"),
        (torch.randn(2, 4, 3), [1, -1], r"\[0, 4\]"),
        (torch.randn(2, 4, 3), [1, 1.5], "integers"),
    ],
)
def test_bad_arguments(features, budgets, message) -> None:
    with pytest.raises(ValueError, match=message):
        farthest_point_sampling(features, budgets)


# -- dtypes and devices --------------------------------------------------------------------------------
def _well_separated_cases(count: int) -> list[tuple[torch.Tensor, list[int]]]:
    """Random cases whose greedy choices all win by a wide margin (so fp16 rounding cannot flip them)."""
    cases = []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(1, 12, 16)) * rng.uniform(0.05, 50.0, size=(1, 12, 1))
        if brute_force_max_min(x[0], 6)[1] > 0.02:
            cases.append((torch.from_numpy(x).float(), [6]))
        if len(cases) == count:
            return cases
    raise AssertionError("not enough well-separated cases")


def test_fp16_selects_the_same_as_fp32_on_well_separated_data() -> None:
    cases = _well_separated_cases(8)
    x = torch.cat([c[0] for c in cases])
    budgets = [6] * len(cases)
    reference = farthest_point_sampling(x, budgets)
    half = farthest_point_sampling(x.half(), budgets)
    assert all(torch.equal(a, b) for a, b in zip(reference, half, strict=True))


def test_bf16_runs() -> None:
    x = torch.randn(6, 40, 32, dtype=torch.bfloat16)
    kept = farthest_point_sampling(x, [4, 5, 6, 7, 8, 40])
    _check_kept(kept, [4, 5, 6, 7, 8, 40], 40)


def test_selection_loop_never_reads_values_on_the_host() -> None:
    # On the meta device any .item(), bool() or data-dependent branch raises: the loop must run anyway.
    order = max_min_order(torch.empty(6, 729, 729, device="meta"), 73)
    assert order.shape == (6, 73) and order.device.type == "meta"
    kept = ascending_prefixes(order, [73, 10, 0, 73, 73, 5])
    assert [k.shape[0] for k in kept] == [73, 10, 0, 73, 73, 5]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_without_syncs_in_the_loop() -> None:
    x = torch.randn(6, 729, 1152)
    budgets = [73, 73, 146, 73, 50, 73]
    cpu = farthest_point_sampling(x, budgets)
    gpu = farthest_point_sampling(x.cuda(), budgets)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu, strict=True))
    from prune2drive_ros.pruning.cosine import cosine_distances

    dist = cosine_distances(x.cuda())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ascending_prefixes(max_min_order(dist, 146), budgets)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_distances_are_exactly_symmetric_and_snapped() -> None:
    from prune2drive_ros.pruning.cosine import RESOLUTION, cosine_distances

    for shape in [(6, 729, 96), (1, 50, 3), (2, 9, 1)]:
        d = cosine_distances(torch.randn(*shape) * 10)
        assert torch.equal(d, d.transpose(-1, -2))  # mutual nearest neighbours must tie exactly
        assert torch.equal(d, (d / RESOLUTION).round() * RESOLUTION)
        assert float(d.min()) >= 0.0 and float(d.max()) <= 2.0
    parallel = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 6.0, 9.0], [-0.1, -0.2, -0.3]]])
    assert cosine_distances(parallel)[0].tolist() == [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [2.0, 2.0, 0.0]]


def test_mutual_nearest_neighbours_tie_even_if_the_matrix_is_not_bit_symmetric() -> None:
    # Tokens 0 and 1 are each other's nearest neighbour and the most isolated pair; a last-bit
    # asymmetry in d(1, 0) must not turn their exact tie into a win for token 1.
    d = torch.tensor([[0.0, 1.0, 1.5, 1.5], [1.0, 0.0, 1.5, 1.5], [1.5, 1.5, 0.0, 0.2], [1.5, 1.5, 0.2, 0.0]])
    d[1, 0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert max_min_order(d[None].clone(), 1).tolist() == [[0]]


# -- without host syncs (CUDA graphs) -------------------------------------------------------------------
@SETTINGS
@given(token_sets())
def test_static_tfps_equals_tfps_bit_for_bit_without_a_host_sync(case) -> None:
    x, budgets = case
    with HostSyncGuard():
        kept, finite = farthest_point_sampling_static(x, budgets)
        dist, _ = cosine_distances_static(x)
    assert bool(finite)
    assert torch.equal(dist, cosine_distances(x))  # both rescaling branches, chosen on the device
    assert all(torch.equal(a, b) for a, b in zip(kept, farthest_point_sampling(x, budgets), strict=True))


def test_static_tfps_flags_nan_or_inf_instead_of_raising() -> None:
    x = torch.randn(2, 6, 4)
    assert bool(farthest_point_sampling_static(x, [2, 2])[1])
    for bad in (float("nan"), float("inf")):
        x[1, 3, 2] = bad
        kept, finite = farthest_point_sampling_static(x, [2, 2])
        assert not bool(finite) and [len(k) for k in kept] == [2, 2]  # valid indices, refused by the caller
    huge = torch.tensor([[[3e38, 3e38], [1.0, 0.0], [0.0, 1.0]]])  # its norm overflows; the values are finite
    assert bool(farthest_point_sampling_static(huge, [2])[1])


def test_tf32x3_distances_match_fp32_and_pick_the_same() -> None:
    cases = _well_separated_cases(8)
    x = torch.cat([c[0] for c in cases])
    fp32 = cosine_distances(x)
    split, _ = cosine_distances_static(x, "tf32x3")
    assert float((split - fp32).abs().max()) <= 4 * RESOLUTION
    kept, _ = farthest_point_sampling_static(x, [6] * len(cases), "tf32x3")
    assert all(torch.equal(a, b) for a, b in zip(kept, farthest_point_sampling(x, [6] * len(cases)), strict=True))
    with pytest.raises(ValueError, match="precision"):
        cosine_distances_static(x, "bf16")


def _driving_like_features(seed: int, dim: int = 4096) -> torch.Tensor:
    """Six views of 729 tokens at DriveMM's width: a few dozen clusters (road, sky, cars) with noise, bf16."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 40, dim, generator=g) * 4
    members = torch.randint(0, 40, (6, 729), generator=g)
    x = centres.gather(1, members[..., None].expand(-1, -1, dim)) + torch.randn(6, 729, dim, generator=g)
    return x.bfloat16()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("seed", [0, 1])
def test_cuda_tf32x3_picks_equal_fp32_picks_in_one_captured_graph(seed) -> None:
    features = _driving_like_features(seed).cuda()
    budgets = [73, 73, 146, 73, 50, 73]
    reference, _ = farthest_point_sampling_static(features, budgets, "fp32")
    fp32 = cosine_distances_static(features, "fp32")[0]
    split = cosine_distances_static(features, "tf32x3")[0]
    assert float((split - fp32).abs().max()) <= 4 * RESOLUTION
    # The whole selection as one graph per frame: captured once, replayed on new features.
    static_in = features.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        farthest_point_sampling_static(static_in, budgets, "tf32x3")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kept, finite = farthest_point_sampling_static(static_in, budgets, "tf32x3")
    static_in.copy_(features)
    graph.replay()
    assert bool(finite)
    assert all(torch.equal(a, b) for a, b in zip(kept, reference, strict=True))
    matmul = torch.backends.cuda.matmul  # TF32 was switched on only inside the distance computation
    assert matmul.fp32_precision in ("none", "ieee") if hasattr(matmul, "fp32_precision") else not matmul.allow_tf32
