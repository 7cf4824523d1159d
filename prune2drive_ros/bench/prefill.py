"""``prune2drive bench prefill``: dense vs pruned prefill, side by side in one run.

Reports, per retain ratio: median prefill time (visual prefix + one question, pruning included),
the analytic FLOPs ratio, the measured speed-up against the ideal one the FLOPs allow, and the
KV-cache bytes of the prefix. Then "8 questions on one frame set" with and without prefix reuse, and
the analytic FLOPs of the real DriveMM at 72 tokens per view.

Without ``--model`` it builds a random-weight DriveMM-shaped model in memory (Llama dims; on a CPU
use ``--hidden``/``--ffn``/``--layers`` to shrink it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from prune2drive_ros.pruning import get_pruner, layer_flops

DRIVEMM = {"hidden": 4096, "ffn": 14336, "layers": 32, "heads": 32, "kv_heads": 8}
QUESTION = "What are the important objects in the current scene? Those objects will be considered for the future."


def drivemm_shaped_runner(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, device, dtype, **kwargs):
    """A random DriveMM-shaped LLaVA-OneVision (tiny vision tower, Llama text model) wrapped in a runner."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from prune2drive_ros.vlm import VLMRunner
    from prune2drive_ros.vlm.loading import resolve_device, resolve_dtype
    from prune2drive_ros.vlm.preprocess import ImageSpec
    from prune2drive_ros.vlm.tiny import build_tokenizer, tiny_config

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, "llama")
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, ffn, layers
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = heads, kv_heads, hidden // heads
    text.initializer_range = 0.02
    text._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration(config).to(dtype).eval()
    eos = [tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    return VLMRunner(model, tokenizer, ImageSpec(), eos, **kwargs)


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8) for _ in range(6)]


def _prefill_ms(runner, images, repeats: int) -> tuple[float, object]:
    times, answer = [], None
    for i in range(repeats):
        answer = runner.answer(images, QUESTION, frame_key=("bench", time.perf_counter_ns(), i))[0]
        times.append(answer.timings_ms["prefill"] + answer.timings_ms["prune"])
    return statistics.median(times), answer


def drivemm_flops_ratio(kept_per_view: int = 72, text_tokens: int = 80) -> float:
    """Analytic prefill FLOPs of the real DriveMM with ``kept_per_view`` patches kept at K=1."""
    dense = 6 * 730 + text_tokens
    kept = 6 * (kept_per_view + 1) + text_tokens
    f = {"hidden": DRIVEMM["hidden"], "ffn": DRIVEMM["ffn"]}
    return (layer_flops(dense, **f) + (DRIVEMM["layers"] - 1) * layer_flops(kept, **f)) / (
        DRIVEMM["layers"] * layer_flops(dense, **f))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: random DriveMM-shaped model)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32 on GPU, 4 on CPU)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default: 4096 on GPU, 1024 on CPU)")
    parser.add_argument("--ffn", type=int, default=None, help="FFN size (default: 14336 on GPU, 3584 on CPU)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--pruning", default="tfps")
    parser.add_argument("--retain", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--questions", type=int, default=8, help="questions for the prefix-reuse comparison")
    parser.add_argument("--max-new-tokens", type=int, default=8)


def run(args: argparse.Namespace) -> int:
    from prune2drive_ros.vlm import VLMRunner

    gpu = torch.cuda.is_available() and (args.device is None or str(args.device).startswith("cuda"))
    common = {"max_new_tokens": args.max_new_tokens}

    if args.model:
        runner = VLMRunner.from_pretrained(args.model, pruning="none", retain=1.0, device=args.device,
                                           dtype=args.dtype, **common)
    else:
        runner = drivemm_shaped_runner(
            hidden=args.hidden or (DRIVEMM["hidden"] if gpu else 1024),
            ffn=args.ffn or (DRIVEMM["ffn"] if gpu else 3584),
            layers=args.layers or (DRIVEMM["layers"] if gpu else 4),
            heads=DRIVEMM["heads"] if gpu or (args.hidden or 1024) % 32 == 0 else 8,
            kv_heads=DRIVEMM["kv_heads"], device=args.device, dtype=args.dtype,
            pruning="none", retain=1.0, **common)
    cfg = runner.model.config.text_config
    print(f"model: {args.model or 'random DriveMM-shaped'}  hidden={cfg.hidden_size} ffn={cfg.intermediate_size} "
          f"layers={cfg.num_hidden_layers}  device={runner.device} dtype={runner.dtype}")
    images = _images(0)
    runner.answer(images, QUESTION)  # warm-up
    dense_ms, _ = _prefill_ms(runner, images, args.repeats)
    print(f"\n{'setting':<22}{'prefill ms':>12}{'FLOPs':>9}{'speed-up':>10}{'ideal':>8}{'of ideal':>10}{'KV MiB':>9}")
    kv_dense = runner._prefix[2].cache.nbytes() / 2**20
    print(f"{'dense':<22}{dense_ms:>12.1f}{1.0:>9.3f}{1.0:>10.2f}{1.0:>8.2f}{'':>10}{kv_dense:>9.1f}")
    for retain in args.retain:
        runner.pruner = get_pruner(args.pruning)  # same weights, so dense and pruned differ only in pruning
        runner.set_budgets(retain=retain)
        runner.answer(images, QUESTION)  # warm-up at this size
        ms, answer = _prefill_ms(runner, images, args.repeats)
        ideal = 1.0 / answer.flops_ratio
        kv = runner._prefix[2].cache.nbytes() / 2**20
        print(f"{args.pruning + f' retain={retain}':<22}{ms:>12.1f}{answer.flops_ratio:>9.3f}{dense_ms / ms:>10.2f}"
              f"{ideal:>8.2f}{dense_ms / ms / ideal:>10.0%}{kv:>9.1f}")

    questions = [f"{QUESTION} ({i})" for i in range(args.questions)]
    runner.set_budgets(retain=args.retain[0])
    t0 = time.perf_counter()
    runner.answer(images, questions[0], frame_key="one")
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.answer(images, questions, frame_key="shared")
    shared = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, q in enumerate(questions):
        runner.answer(images, q, frame_key=("alone", i))
    alone = time.perf_counter() - t0
    print(f"\n{args.questions} questions on one frame set (retain {args.retain[0]}, {args.max_new_tokens} new tokens):")
    print(f"  one question              {one * 1000:10.1f} ms")
    print(f"  {args.questions} with prefix reuse     {shared * 1000:10.1f} ms  ({shared / one:.2f}x one question)")
    print(f"  {args.questions} without reuse         {alone * 1000:10.1f} ms  ({alone / one:.2f}x one question)")
    print(f"\nanalytic DriveMM prefill FLOPs at 72 tokens/view, K=1: {drivemm_flops_ratio():.1%} of dense")
    return 0
