"""``prune2drive bench decode``: ms per generated token, transformers ``generate`` vs ours dense vs pruned.

One table, same weights, one run: decode time per token at batch 1 (one question) and per step at
batch 8 (eight questions on one frame set; ours shares the prefix), how the token step ran, and on a
GPU the fraction of a batch-1 answer's wall time the GPU was busy. ``generate``'s per-token time is
``(t(N tokens) - t(1 token)) / (N - 1)``; ours is the decode stage divided by its N - 1 steps.
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
    fmt,
    gpu_busy,
    images,
    median_ms,
)
from prune2drive_ros.bench.weights import add_weights_argument, run_weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_weights_argument(parser)
    parser.add_argument("--retain", type=float, nargs="+", default=[0.1])
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per answer")
    parser.add_argument("--batch", type=int, default=8, help="questions in the batched row")


def _ours(runner, frames, batch: int, repeats: int) -> float:
    questions = [f"{QUESTION} ({i})" for i in range(batch)]
    runner.answer(frames, questions, frame_key=("decode",))  # prefix and graphs ready
    steps = runner.max_new_tokens - 1
    return statistics.median(runner.answer(frames, questions, frame_key=("decode",))[0].timings_ms["decode"] / steps
                             for _ in range(repeats))


def run(args: argparse.Namespace) -> int:
    if args.weights:
        return run_weights(args, args.new_tokens, args.batch, args.retain[0])
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be >= 2")
    runner = build_runner(args, pruning="none", retain=1.0, max_new_tokens=args.new_tokens)
    cfg = runner.model.config.text_config
    print(f"model: {args.model or 'random DriveMM-shaped'}  hidden={cfg.hidden_size} layers={cfg.num_hidden_layers}  "
          f"device={runner.device} dtype={runner.dtype} threads={torch.get_num_threads()}  {args.new_tokens} new tokens")
    frames = images(0)
    busy = (lambda fn: None) if args.no_profile else (lambda fn: gpu_busy(fn, runner.device))
    lines = [f"{'':<24}{'b=1 ms/tok':>11}{f'b={args.batch} ms/step':>13}{'GPU busy':>9}  path"]
    if not args.no_generate:
        generate = Generate(runner, frames)
        per_token = []
        for batch in (1, args.batch):
            generate.tokens(2, batch)  # warm-up
            one = median_ms(lambda b=batch: generate.tokens(1, b), args.repeats, runner.device)
            many = median_ms(lambda b=batch: generate.tokens(args.new_tokens, b), args.repeats, runner.device)
            per_token.append((many - one) / (args.new_tokens - 1))
        g_busy = busy(lambda: generate.tokens(args.new_tokens))
        lines.append(f"{'transformers generate':<24}{per_token[0]:>11.2f}{per_token[1]:>13.2f}{fmt(g_busy, '.0%')}  eager")

    def row(name: str) -> None:
        b1 = _ours(runner, frames, 1, args.repeats)
        b8 = _ours(runner, frames, args.batch, args.repeats)
        answer = runner.answer(frames, QUESTION, frame_key=("decode",))[0]
        o_busy = busy(lambda: runner.answer(frames, QUESTION, frame_key=("decode",)))
        lines.append(f"{name:<24}{b1:>11.2f}{b8:>13.2f}{fmt(o_busy, '.0%')}  {answer.path}")

    row("ours dense")
    runner.set_pruning(args.pruning)
    for retain in args.retain:
        runner.set_budgets(retain=retain)
        row(f"ours {args.pruning} {retain}")
    print("\n".join(lines))
    print("GPU busy: one batch-1 answer on a reused prefix (question prefill + decode)")
    return 0
