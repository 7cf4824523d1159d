"""``prune2drive bench decode``: ms per generated token, transformers ``generate`` vs ours dense vs pruned.

One table, same weights, one run, each row printed as it is measured: decode time per token at
batch 1 (one question) and per step at batch 8 (eight questions on one frame set; ours shares the
prefix), how the stages ran, and on a GPU the fraction of a batch-1 answer's wall time the GPU was
busy, and the weight-streaming floor (weight bytes / the GPU's memory bandwidth). Ours is the
runner's decode stage over its N - 1 steps; ``generate``'s is ``(t(N tokens) - t(1 token)) / (N - 1)``,
so its prompt's prefill cancels.
"""

from __future__ import annotations

import argparse

import torch

from prune2drive_ros.bench.runtime import (
    QUESTION,
    Generate,
    add_model_arguments,
    build_runner,
    decode_step_ms,
    fmt,
    gpu_busy,
    images,
    median_ms,
    repeats,
    streamed_weight_bytes,
)
from prune2drive_ros.bench.targets import identify_gpu
from prune2drive_ros.bench.weights import add_weights_argument, compares_weights, run_weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_weights_argument(parser)
    parser.add_argument("--retain", type=float, nargs="+", default=[0.1])
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per answer")
    parser.add_argument("--batch", type=int, default=8, help="questions in the batched row")


def _line(name: str, cells: str) -> None:
    print(f"{name:<24}{cells}", flush=True)


def run(args: argparse.Namespace) -> int:
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be >= 2")
    if compares_weights(args):
        return run_weights(args, args.new_tokens, args.batch, args.retain[0])
    runner = build_runner(args, pruning="none", retain=1.0, max_new_tokens=args.new_tokens)
    n = repeats(args)
    cfg = runner.model.config.text_config
    print(f"model: {args.model or 'random DriveMM-shaped'}  hidden={cfg.hidden_size} layers={cfg.num_hidden_layers} "
          f"vocab={cfg.vocab_size}  device={runner.device} dtype={runner.dtype} threads={torch.get_num_threads()}  "
          f"{args.new_tokens} new tokens, median of {n}", flush=True)
    if runner.device.type == "cuda":
        name = torch.cuda.get_device_name(runner.device)
        spec = identify_gpu(name, torch.cuda.get_device_properties(runner.device).total_memory / 2**30)
        weights = streamed_weight_bytes(runner.model)
        floor = f"{weights / (spec.bandwidth_gbs * 1e9) * 1e3:.2f} ms/token at {spec.bandwidth_gbs:g} GB/s" if spec \
            else "unknown: the GPU is not in the bandwidth table"
        print(f"weight-streaming floor on {name}: {weights / 1e9:.2f} GB / bandwidth = {floor}", flush=True)
    frames = images(0)
    busy = (lambda fn: None) if args.no_profile else (lambda fn: gpu_busy(fn, runner.device))
    _line("", f"{'b=1 ms/tok':>11}{f'b={args.batch} ms/step':>13}{'GPU busy':>9}  path")
    if not args.no_generate:
        generate = Generate(runner, frames)
        per_token = []
        for batch in (1, args.batch):
            generate.tokens(2, batch)  # warm-up
            one = median_ms(lambda b=batch: generate.tokens(1, b), n, runner.device)
            many = median_ms(lambda b=batch: generate.tokens(args.new_tokens, b), n, runner.device)
            per_token.append((many - one) / (args.new_tokens - 1))
        g_busy = busy(lambda: generate.tokens(args.new_tokens))
        _line("transformers generate", f"{per_token[0]:>11.2f}{per_token[1]:>13.2f}{fmt(g_busy, '.0%')}  eager")

    def row(name: str) -> None:
        b1, _ = decode_step_ms(runner, frames, 1, args.new_tokens, n)
        b8, _ = decode_step_ms(runner, frames, args.batch, args.new_tokens, n)
        answer = runner.answer(frames, QUESTION, frame_key=("decode",))[0]
        o_busy = busy(lambda: runner.answer(frames, QUESTION, frame_key=("decode",)))
        _line(name, f"{b1:>11.2f}{b8:>13.2f}{fmt(o_busy, '.0%')}  {answer.path}")

    row("ours dense")
    runner.set_pruning(args.pruning)
    for retain in args.retain:
        runner.set_budgets(retain=retain)
        row(f"ours {args.pruning} {retain}")
    print("GPU busy: one batch-1 answer on a reused prefix (question prefill + decode)")
    return 0
