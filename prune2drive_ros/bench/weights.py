"""``prune2drive bench decode|prefill --weights bf16 int8 int4``: the precisions side by side, one table.

Each precision gets the same weights (the same checkpoint, or the same seeded random model),
quantized at load, and the same pruning: decode ms per token at batch 1 and 8 (one frame set, the
prefix shared), time to first token on a fresh frame set, the language model's weight memory as
stored, and how the token step ran. Ratios are against the first precision listed.
"""

from __future__ import annotations

import argparse
import gc

import torch

from prune2drive_ros import settings
from prune2drive_ros.bench.runtime import build_runner, decode_step_ms, first_token, images, repeats
from prune2drive_ros.vlm.quantize import WeightsUnsupported, language_model_bytes


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, ("weights",), weights={
        "nargs": "+", "help": "language-model precisions, one table row each, side by side (e.g. bf16 int8 int4); "
                              "default: the model dtype only, in the usual tables"})


def compares_weights(args: argparse.Namespace) -> bool:
    """``--weights`` was given: one row per precision instead of the usual table."""
    return isinstance(args.weights, list)


def run_weights(args: argparse.Namespace, new_tokens: int, batch: int, retain: float) -> int:
    frames = images(0)
    n = repeats(args)
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
                  f"threads={torch.get_num_threads()}  {args.pruning} {retain}  {new_tokens} new tokens, median of {n}")
        b1, answers = decode_step_ms(runner, frames, 1, new_tokens, n)
        bn, _ = decode_step_ms(runner, frames, batch, new_tokens, n)
        ttft = first_token(runner, frames, n, weights).ttft_ms
        rows.append((weights, str(runner.dtype).removeprefix("torch."), b1, bn, ttft,
                     language_model_bytes(runner.model) / 1e9, answers[-1].path))
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

