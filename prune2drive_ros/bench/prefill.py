"""``prune2drive bench prefill``: time to first token, transformers ``generate`` vs ours dense vs ours pruned.

One table, same weights, one run, each row printed as it is measured. Per row: time to first token
(TTFT) on fresh frames, and its parts: preprocess + vision (the runner's stage times), the visual
prefix (its layers and the prune, the question excluded) and the question (prefill and first token
on the prefix already built). Then the prefix speed-up over ours dense, the FLOPs ratio of one layer
from the prune layer K on ("ideal"), and the fraction of that ideal the layers from K on reach ("of
ideal", as the GPU targets count it), the prefix KV-cache size, how the stages ran and, on a GPU, the
fraction of the answer's wall time the GPU was busy (torch.profiler). Below the table: whether ours
dense produces the same greedy tokens as ``generate`` in this dtype.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from prune2drive_ros.bench.runtime import (
    QUESTION,
    Generate,
    add_model_arguments,
    build_runner,
    drivemm_flops_ratio,
    first_token,
    fmt,
    gpu_busy,
    images,
    repeats,
    tail_flops_ratio,
    times_ms,
)
from prune2drive_ros.bench.targets import tail_of_ideal
from prune2drive_ros.bench.weights import add_weights_argument, compares_weights, run_weights

AGREEMENT_TOKENS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_weights_argument(parser)
    parser.add_argument("--retain", type=float, nargs="+", default=[0.1, 0.25, 0.5])


def _line(name: str, cells: str) -> None:
    print(f"{name:<24}{cells}", flush=True)


def run(args: argparse.Namespace) -> int:
    if compares_weights(args):
        return run_weights(args, 8, 8, args.retain[0])
    # Sized for the agreement check's tokens once; every timed answer asks for one.
    runner = build_runner(args, pruning="none", retain=1.0, max_new_tokens=AGREEMENT_TOKENS)
    runner.max_new_tokens = 1
    n = repeats(args)
    cfg = runner.model.config.text_config
    print(f"model: {args.model or 'random DriveMM-shaped'}  hidden={cfg.hidden_size} ffn={cfg.intermediate_size} "
          f"layers={cfg.num_hidden_layers} vocab={cfg.vocab_size}  device={runner.device} dtype={runner.dtype} "
          f"threads={torch.get_num_threads()}  prompt={runner.layout.length} prefix tokens  median of {n}", flush=True)
    frames = images(0)
    busy = (lambda fn: None) if args.no_profile else (lambda fn: gpu_busy(fn, runner.device))
    _line("", f"{'TTFT ms':>9}{'pre+vis':>9}{'prefix':>9}{'question':>9}{'speed-up':>9}{'ideal':>8}{'of ideal':>9}"
              f"{'KV MiB':>8}{'GPU busy':>9}  path")
    generate = Generate(runner, frames)
    if not args.no_generate:
        ttft = statistics.median(times_ms(lambda _: generate.tokens(1), n, runner.device))
        g_busy = busy(lambda: generate.tokens(1))
        _line("transformers generate", f"{ttft:>9.1f}{'':>9}{'':>9}{'':>9}{'':>9}{'':>8}{'':>9}{'':>8}"
                                       f"{fmt(g_busy, '.0%')}  eager")

    dense = first_token(runner, frames, n, "dense")
    d_busy = busy(lambda: runner.answer(frames, QUESTION, frame_key=("busy", "dense")))
    _line("ours dense", f"{dense.ttft_ms:>9.1f}{dense.pre_vision_ms:>9.1f}{dense.prefix_ms:>9.1f}"
                        f"{dense.question_ms:>9.1f}{1.0:>9.2f}{1.0:>8.2f}{'':>9}{runner.prefix.nbytes() / 2**20:>8.1f}"
                        f"{fmt(d_busy, '.0%')}  {dense.answers[-1].path}")
    agreement = None
    if not args.no_generate:
        runner.max_new_tokens = AGREEMENT_TOKENS
        ours = runner.answer(frames, QUESTION, frame_key=("agree",))[0].token_ids
        runner.max_new_tokens = 1
        theirs = generate.tokens(AGREEMENT_TOKENS)[0].tolist()
        agreement = sum(a == b for a, b in zip(ours, theirs))
        first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)

    head = runner.config.prune_layer / cfg.num_hidden_layers
    runner.set_pruning(args.pruning)
    for retain in args.retain:
        runner.set_budgets(retain=retain)
        pruned = first_token(runner, frames, n, f"pruned {retain}")
        ideal = tail_flops_ratio(runner, pruned.answers[0].kept_per_view)
        try:
            of_ideal = tail_of_ideal(dense.prefix_ms, pruned.prefix_ms, head, ideal)
        except ValueError:  # a prefix too short to split from noise
            of_ideal = None
        p_busy = busy(lambda: runner.answer(frames, QUESTION, frame_key=("busy", retain)))  # noqa: B023
        _line(f"ours {args.pruning} {retain}",
              f"{pruned.ttft_ms:>9.1f}{pruned.pre_vision_ms:>9.1f}{pruned.prefix_ms:>9.1f}{pruned.question_ms:>9.1f}"
              f"{dense.prefix_ms / pruned.prefix_ms:>9.2f}{ideal:>8.2f}{fmt(of_ideal, '.0%')}"
              f"{runner.prefix.nbytes() / 2**20:>8.1f}{fmt(p_busy, '.0%')}  {pruned.answers[-1].path}")
    print("prefix: the visual prefix's layers and prune, question excluded; speed-up: dense prefix / this prefix;\n"
          "ideal: dense / pruned FLOPs of one layer from K on; of ideal: the speed-up of layers K.. / ideal")
    if agreement is not None:
        where = "all equal" if first_diff is None else f"first difference at token {first_diff}"
        print(f"ours dense vs generate, greedy, {runner.dtype}: {agreement}/{AGREEMENT_TOKENS} tokens equal ({where})")
    print(f"capture + warm-up at the last configure: {runner.warmup_ms:.0f} ms (off the answer path)")
    print(f"analytic DriveMM prefill FLOPs at 72 tokens/view, K=1: {drivemm_flops_ratio():.1%} of dense")
    if torch.cuda.is_available():
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0
