"""``prune2drive bench prefill``: time to first token, transformers ``generate`` vs ours dense vs ours pruned.

One table, same weights, one run. Per row: time to first token (TTFT) with preprocess + vision, prune
and prefill (visual prefix + one question) shown separately, the prefill speed-up over ours dense
(prune included) against the ideal the FLOPs allow, the prefix KV-cache size, how the LLM ran (CUDA
graphs or eager) and, on a GPU, the fraction of the answer's wall time the GPU was busy (torch.profiler).
Below the table: whether ours dense produces the same greedy tokens as ``generate`` in this dtype.
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
    fmt,
    gpu_busy,
    images,
    median_ms,
    prefill_flops_ratio,
)

AGREEMENT_TOKENS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--retain", type=float, nargs="+", default=[0.1, 0.25, 0.5])


def _measure(runner, frames, repeats: int) -> dict:
    """Median stage times of fresh-frame answers (nothing reused) with one new token."""
    runs = [runner.answer(frames, QUESTION, frame_key=("bench", runner.plan, i))[0] for i in range(repeats + 1)][1:]
    stages = {k: statistics.median(a.timings_ms[k] for a in runs)
              for k in ("preprocess", "vision", "prune", "prefill", "question")}
    stages["ttft"] = sum(stages.values())
    stages["answer"] = runs[-1]
    return stages


def run(args: argparse.Namespace) -> int:
    # Sized for the agreement check's tokens (the runner's bound); the timed answers ask for one.
    runner = build_runner(args, pruning="none", retain=1.0, max_new_tokens=AGREEMENT_TOKENS)
    runner.max_new_tokens = 1
    cfg = runner.model.config.text_config
    print(f"model: {args.model or 'random DriveMM-shaped'}  hidden={cfg.hidden_size} ffn={cfg.intermediate_size} "
          f"layers={cfg.num_hidden_layers}  device={runner.device} dtype={runner.dtype} threads={torch.get_num_threads()}  "
          f"prompt={runner.layout.length} prefix tokens")
    frames = images(0)
    question_tokens = len(runner.tokenizer(runner.prompt.suffix(QUESTION), add_special_tokens=False).input_ids)
    busy = (lambda fn: None) if args.no_profile else (lambda fn: gpu_busy(fn, runner.device))

    header = (f"{'':<24}{'TTFT ms':>9}{'pre+vis':>9}{'prune':>9}{'prefill':>9}{'speed-up':>9}{'ideal':>8}"
              f"{'of ideal':>9}{'KV MiB':>8}{'GPU busy':>9}  path")
    lines = [header]
    generate = Generate(runner, frames)
    if not args.no_generate:
        generate.tokens(1)  # warm-up
        ttft = median_ms(lambda: generate.tokens(1), args.repeats, runner.device)
        g_busy = busy(lambda: generate.tokens(1))
        lines.append(f"{'transformers generate':<24}{ttft:>9.1f}{'':>9}{'':>9}{'':>9}{'':>9}{'':>8}{'':>9}{'':>8}"
                     f"{fmt(g_busy, '.0%')}  eager")

    dense = _measure(runner, frames, args.repeats)
    dense_work = dense["prune"] + dense["prefill"] + dense["question"]
    kv = runner.prefix.nbytes() / 2**20
    d_busy = busy(lambda: runner.answer(frames, QUESTION, frame_key=("busy", "dense")))
    lines.append(f"{'ours dense':<24}{dense['ttft']:>9.1f}{dense['preprocess'] + dense['vision']:>9.1f}"
                 f"{dense['prune']:>9.1f}{dense['prefill']:>9.1f}{1.0:>9.2f}{1.0:>8.2f}{'':>9}{kv:>8.1f}"
                 f"{fmt(d_busy, '.0%')}  {dense['answer'].path}")
    agreement = None
    if not args.no_generate:
        runner.max_new_tokens = AGREEMENT_TOKENS
        ours = runner.answer(frames, QUESTION, frame_key=("agree",))[0].token_ids
        theirs = generate.tokens(AGREEMENT_TOKENS)[0].tolist()
        agreement = sum(a == b for a, b in zip(ours, theirs))
        first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        runner.max_new_tokens = 1

    runner.set_pruning(args.pruning)
    for retain in args.retain:
        runner.set_budgets(retain=retain)
        pruned = _measure(runner, frames, args.repeats)
        work = pruned["prune"] + pruned["prefill"] + pruned["question"]
        ideal = 1.0 / prefill_flops_ratio(runner, sum(runner.budgets), question_tokens)
        kv = runner.prefix.nbytes() / 2**20
        p_busy = busy(lambda: runner.answer(frames, QUESTION, frame_key=("busy", retain)))  # noqa: B023
        lines.append(f"{f'ours {args.pruning} {retain}':<24}{pruned['ttft']:>9.1f}"
                     f"{pruned['preprocess'] + pruned['vision']:>9.1f}{pruned['prune']:>9.1f}{pruned['prefill']:>9.1f}"
                     f"{dense_work / work:>9.2f}{ideal:>8.2f}{dense_work / work / ideal:>9.0%}{kv:>8.1f}"
                     f"{fmt(p_busy, '.0%')}  {pruned['answer'].path}")
    print("\n".join(lines))
    print("speed-up: (prune + prefill) of ours dense / of this row; ideal: dense / pruned prefill FLOPs")
    if agreement is not None:
        where = "all equal" if first_diff is None else f"first difference at token {first_diff}"
        print(f"ours dense vs generate, greedy, {runner.dtype}: {agreement}/{AGREEMENT_TOKENS} tokens equal ({where})")
    if runner.graphs.capture_ms:
        print(f"CUDA graph capture: {runner.graphs.capture_ms:.0f} ms in all (warm-up, off the answer path)")
    print(f"analytic DriveMM prefill FLOPs at 72 tokens/view, K=1: {drivemm_flops_ratio():.1%} of dense")
    if torch.cuda.is_available():
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0
