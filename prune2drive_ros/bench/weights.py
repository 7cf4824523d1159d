"""``prune2drive bench decode|prefill --weights bf16 int8 int4``: the precisions side by side, one table.

Each precision gets the same weights (the same checkpoint, or the same seeded random model),
quantized at load, and the same pruning: decode ms per token at batch 1 and 8 (one frame set, the
prefix shared), time to first token on a fresh frame set, the language model's weight memory as
stored, and how the token step ran. Ratios are against the first precision listed.
"""

from __future__ import annotations

import argparse
import gc
import statistics

import torch

from prune2drive_ros.bench.runtime import QUESTION, build_runner, images
from prune2drive_ros.vlm.quantize import WEIGHT_CHOICES, WeightsUnsupported, language_model_bytes


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", nargs="+", choices=WEIGHT_CHOICES, default=None, metavar="W",
                        help=f"compare these language-model precisions in one table ({' | '.join(WEIGHT_CHOICES)})")


def _ttft_ms(runner, frames, repeats: int) -> float:
    keep, runner.max_new_tokens = runner.max_new_tokens, 1
    try:
        runs = [runner.answer(frames, QUESTION, frame_key=("ttft", i))[0] for i in range(repeats + 1)][1:]
    finally:
        runner.max_new_tokens = keep
    return statistics.median(sum(a.timings_ms[k] for k in ("preprocess", "vision", "prune", "prefill")) for a in runs)


def run_weights(args: argparse.Namespace, new_tokens: int, batch: int, retain: float) -> int:
    from prune2drive_ros.bench.decode import _ours as decode_ms  # decode imports this module

    frames = images(0)
    rows, refused = [], []
    for weights in args.weights:
        try:
            runner = build_runner(args, pruning=args.pruning, retain=retain, max_new_tokens=new_tokens, weights=weights)
        except WeightsUnsupported as exc:  # e.g. fp8 below compute capability 8.9: the other rows still run
            refused.append(str(exc))
            continue
        if not rows:
            cfg = runner.model.config.text_config
            print(f"model: {args.model or 'random DriveMM-shaped'}  hidden={cfg.hidden_size} "
                  f"ffn={cfg.intermediate_size} layers={cfg.num_hidden_layers}  device={runner.device} "
                  f"threads={torch.get_num_threads()}  {args.pruning} {retain}  {new_tokens} new tokens")
        b1 = decode_ms(runner, frames, 1, args.repeats)
        bn = decode_ms(runner, frames, batch, args.repeats)
        ttft = _ttft_ms(runner, frames, args.repeats)
        path = runner.answer(frames, QUESTION, frame_key=("weights",))[0].path
        rows.append((weights, str(runner.dtype).removeprefix("torch."), b1, bn, ttft,
                     language_model_bytes(runner.model) / 1e9, path))
        # As each row finishes, so that a time limit still leaves the rows measured so far.
        print(f"measured {weights}: b=1 {b1:.2f} ms/tok, b={batch} {bn:.2f} ms/step, TTFT {ttft:.1f} ms", flush=True)
        runner.close()
        del runner
        gc.collect()
    if not rows:
        print("\n".join(refused))
        return 1
    base = rows[0]
    lines = [f"{'weights':<8}{'compute':>9}{'b=1 ms/tok':>11}{'ratio':>7}{f'b={batch} ms/step':>13}{'ratio':>7}"
             f"{'TTFT ms':>9}{'ratio':>7}{'LLM GB':>8}  path"]
    for w, dtype, b1, bn, ttft, gb, path in rows:
        lines.append(f"{w:<8}{dtype:>9}{b1:>11.2f}{b1 / base[2]:>7.2f}{bn:>13.2f}{bn / base[3]:>7.2f}"
                     f"{ttft:>9.1f}{ttft / base[4]:>7.2f}{gb:>8.3f}  {path}")
    print("\n".join(lines + refused))
    print(f"ratio: this row / the {base[0]} row, same run; LLM GB: embeddings + decoder + lm_head as stored")
    return 0

