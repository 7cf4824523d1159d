"""``prune2drive bench pruning``: every pruner's selection time vs the published T-FPS loop, side by side.

For each feature width D and retain ratio, all methods run round-robin on the same random features
(one warm-up call each, then ``--repeats`` timed calls), so the ratios compare like with like even on a
busy machine. ``vs loop`` is loop time / method time: above 1 means faster than the published loop.
T-FPS and the loop share the cosine distance matrix (an O(N^2 D) matmul that dominates on CPU at large
D), so a second line times the selection alone, from a given distance matrix.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from .. import settings
from ..pruning import cosine_distances, get_pruner, reference_tfps_loop, view_budgets
from ..pruning.fps import ascending_prefixes, max_min_order, max_min_select, published_loop
from ..settings import PATCHES_PER_VIEW, PRUNING_METHODS

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
METHODS = PRUNING_METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, ("device",))
    # The features' dtype, not the model's: the runner's ``auto`` means nothing for random features.
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="feature dtype (default float32)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per method and setting (default 5 on CPU, 50 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="one timed call per method: a smoke test, not a measurement")
    parser.add_argument("--compile", action="store_true", help="also time T-FPS with torch.compile'd selection loop")
    parser.add_argument("--dims", type=int, nargs="+", default=[1152, 4096], help="feature widths D (default 1152 4096)")
    parser.add_argument("--retain", type=float, nargs="+", default=[0.1, 0.25], help="retain ratios (default 0.1 0.25)")
    parser.add_argument("--views", type=int, default=6, help="views V (default 6)")
    parser.add_argument("--tokens", type=int, default=PATCHES_PER_VIEW,
                        help=f"tokens per view N (default {PATCHES_PER_VIEW}, DriveMM's)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="pruners to time besides the loop (default: all)")
    parser.add_argument("--seed", type=int, default=0)


def _compiled_tfps(device: torch.device) -> Callable:
    # Cloning inside the compiled region keeps its input unmutated, which CUDA graphs require.
    def kernel(dist: torch.Tensor, steps: int) -> torch.Tensor:
        return max_min_order(dist.clone(), steps)

    mode = "reduce-overhead" if device.type == "cuda" else "default"
    compiled = torch.compile(kernel, mode=mode, dynamic=False)
    return lambda features, budgets: max_min_select(features, budgets, kernel=compiled)


def _time_round_robin(calls: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds per call, the methods interleaved so machine noise hits them alike."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for call in calls.values():  # warm-up: allocator, kernels, torch.compile
        call()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(args: argparse.Namespace) -> int:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = DTYPES[args.dtype]
    repeats = 1 if args.quick else args.repeats or (50 if device.type == "cuda" else 5)
    generator = torch.Generator().manual_seed(args.seed)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    print(f"bench pruning: V={args.views} N={args.tokens} dtype={args.dtype} device={device} ({where}) "
          f"torch {torch.__version__}, median of {repeats}")
    print("vs loop = reference_tfps_loop time / method time, measured in the same run (>1: faster)")
    print(f"{'D':>5} {'retain':>6} {'kept/view':>9}  {'method':<14} {'median ms':>10} {'vs loop':>8}")
    tfps_compiled = _compiled_tfps(device) if args.compile else None
    for dim in args.dims:
        for retain in args.retain:
            features = torch.randn(args.views, args.tokens, dim, generator=generator).to(device, dtype)
            attention = torch.rand(args.views, args.tokens, generator=generator).softmax(-1).to(device)
            budgets = view_budgets(args.tokens, retain=retain, num_views=args.views)
            calls: dict[str, Callable[[], object]] = {"loop (ref)": lambda f=features, b=budgets: reference_tfps_loop(f, b)}
            for name in args.methods:
                pruner = get_pruner(name)
                calls[name] = lambda p=pruner, f=features, b=budgets, a=attention: p.select(f, b, attention=a)
            if tfps_compiled is not None:
                calls["tfps compiled"] = lambda f=features, b=budgets: tfps_compiled(f, b)
            medians = _time_round_robin(calls, repeats, device)
            dist = cosine_distances(features)
            steps = max(budgets)
            selection = _time_round_robin({
                "distances": lambda f=features: cosine_distances(f),
                "loop": lambda d=dist, b=budgets: [published_loop(d[v].clone(), k) for v, k in enumerate(b)],
                "tfps": lambda d=dist, b=budgets, s=steps: ascending_prefixes(max_min_order(d.clone(), s), b),
            }, repeats, device)
            same = all(torch.equal(a, b) for a, b in zip(get_pruner("tfps").select(features, budgets),
                                                         reference_tfps_loop(features, budgets), strict=True))
            for i, (name, ms) in enumerate(medians.items()):
                lead = f"{dim:>5} {retain:>6.2f} {budgets[0]:>9}" if i == 0 else " " * 22
                print(f"{lead}  {name:<14} {ms:>10.2f} {medians['loop (ref)'] / ms:>7.2f}x")
            print(f"{'':>22}  selection only, from the shared distances ({selection['distances']:.2f} ms): "
                  f"loop {selection['loop']:.2f} ms, tfps {selection['tfps']:.2f} ms "
                  f"({selection['loop'] / selection['tfps']:.1f}x)")
            print(f"{'':>22}  tfps picks == loop picks: {'yes' if same else 'NO'}")
            if not same:
                return 1
    return 0
