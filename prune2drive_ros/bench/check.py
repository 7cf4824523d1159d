"""``prune2drive bench targets``: every measure of the GPU targets, then the table that decides.

At DriveMM size (32 layers, hidden 4096, FFN 14336, 32/8 heads, 26-layer SigLIP-so400m at 384 px,
six 729-token views, a 128k vocabulary, random bf16 weights) with ``cuda_graphs="on"``. Each row is
printed, and appended to ``--rows-out``, the moment it is measured, so a run cut short by a timeout
still leaves what it measured; the table is then computed from the rows (``bench.targets``), and
``--rows FILE`` computes it again from a recorded file without measuring. The exit code is non-zero
when any target fails (an answer with a stage that did not run captured fails its rows).

    prune2drive bench targets            # DriveMM size on the GPU (what scripts/gpu-check.sh runs)
    prune2drive bench targets --quick    # a reduced model: a dry run of the whole flow in about a minute
    prune2drive bench targets --device cpu   # the same flow on a tiny model; every target "n/a (no GPU)"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from dataclasses import dataclass

import torch

from prune2drive_ros import settings
from prune2drive_ros.bench.runtime import (
    DRIVEMM,
    NUSCENES_FRAME,
    QUESTION,
    SIGLIP_SO400M_LAYERS,
    Generate,
    decode_step_ms,
    drivemm_shaped_model,
    first_token,
    images,
    streamed_weight_bytes,
    tail_flops_ratio,
    times_ms,
)
from prune2drive_ros.bench.targets import Row, RowLog, context, evaluate, junit_row, read_rows, render, uncaptured

AGREEMENT_TOKENS = 8
RETAIN = 0.1
TFPS_VIEWS, TFPS_TOKENS = 6, 729


@dataclass(frozen=True)
class Preset:
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vision: str
    vision_layers: int
    vocab: int
    repeats: int
    new_tokens: int
    tfps_dim: int
    frame: tuple[int, int] = NUSCENES_FRAME


PRESETS = {
    "full": Preset(DRIVEMM["hidden"], DRIVEMM["ffn"], DRIVEMM["layers"], DRIVEMM["heads"], DRIVEMM["kv_heads"],
                   "so400m", SIGLIP_SO400M_LAYERS, DRIVEMM["vocab"], repeats=10, new_tokens=32, tfps_dim=4096),
    "quick": Preset(1024, 3584, 4, 8, 2, "so400m", 4, DRIVEMM["vocab"], repeats=10, new_tokens=16, tfps_dim=4096),
    # A tiny model whose vocabulary still outgrows its tokenizer's, as DriveMM's 128k one does the test tokenizer.
    # Frames at the views' own size: a loaded CPU spends most of a tiny model's answer resizing.
    "cpu": Preset(64, 128, 2, 1, 1, "tiny", 2, 4096, repeats=1, new_tokens=3, tfps_dim=64, frame=(384, 384)),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a reduced model (4 layers, hidden 1024): a dry run; only T-FPS and the tests are judged")
    settings.add_arguments(parser, ("device",),
                           device={"help": "cuda or cpu (auto: cuda when available; cpu runs a tiny model)"})
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default: 10 on GPU, 1 on CPU)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per answer in the decode rows")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: 128256 on GPU)")
    parser.add_argument("--rows-out", default=None, help="append each row, as measured, to this JSON-lines file")
    parser.add_argument("--rows", default=None, help="measure nothing: compute the table from this recorded file")
    parser.add_argument("--measure-only", action="store_true",
                        help="record the rows, print no table (scripts/gpu-check.sh computes it with --rows)")
    parser.add_argument("--junit", default=None,
                        help="pytest's JUnit XML of the gpu-marked tests: adds their row to the table")


def run(args: argparse.Namespace) -> int:
    if args.rows:
        rows = read_rows(args.rows)
    else:
        log = RowLog(args.rows_out)
        try:
            measure(args, log)
        except Exception as exc:  # a crash is a result: the rows so far stay, the table says what is missing
            traceback.print_exc()
            log.add(Row("error", type(exc).__name__, note=str(exc).splitlines()[0][:300] if str(exc) else "",
                        problem="the benchmark stopped"))
        rows = log.rows
        if args.measure_only:
            return 1 if "error" in rows else 0
    if args.junit:
        rows = {**rows, "gpu_tests": junit_row(args.junit, on_gpu=context(rows).on_gpu)}
    ctx, values, verdicts = evaluate(rows, with_tests=bool(args.junit))
    print(render(ctx, values, verdicts), flush=True)
    stopped = rows.get("error")
    if stopped is not None:
        print(f"the benchmark stopped early: {stopped.value}: {stopped.note}", file=sys.stderr)
    return 1 if any(v.failed for v in verdicts) or stopped is not None else 0


def _problem(answers, gpu: bool) -> str:
    """Why these answers' rows do not count: a stage that did not run captured (on a GPU)."""
    if not gpu:
        return ""
    return "; ".join(dict.fromkeys(p for p in (uncaptured(a.paths) for a in answers) if p))


def copy_bandwidth_gbs(device: torch.device, mib: int = 1024, repeats: int = 10) -> float:
    """Device-to-device copy, bytes read + written per second (a lower bound on the memory bandwidth)."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(times_ms(lambda _: dst.copy_(src), repeats, device, warmup=2))
    return 2 * src.numel() / (ms / 1e3) / 1e9


def tfps_ms(device: torch.device, dtype: torch.dtype, dim: int, repeats: int) -> tuple[float, str]:
    """Median ms of T-FPS over six 729-token views at ``dim`` (captured as a CUDA graph when it can be)."""
    from prune2drive_ros.pruning import get_pruner, view_budgets

    pruner = get_pruner("tfps")
    budgets = view_budgets(TFPS_TOKENS, retain=RETAIN, num_views=TFPS_VIEWS)
    features = torch.randn(TFPS_VIEWS, TFPS_TOKENS, dim, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    call, how = (lambda _: pruner.select(features, budgets)), "eager"
    if device.type == "cuda":
        try:
            graph = _capture(lambda: pruner.select(features, budgets))
            call, how = (lambda _: graph.replay()), "graph"
        except Exception as exc:  # the eager time is still a measurement; the note says why
            how = f"eager (capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    return statistics.median(times_ms(call, repeats, device, warmup=2)), how


def _capture(fn) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    finally:
        torch.cuda.synchronize()
    return graph


def measure(args: argparse.Namespace, log: RowLog) -> None:
    """Measure every row, cheapest and most telling first, printing each as it comes."""
    from prune2drive_ros.vlm import VLMRunner
    from prune2drive_ros.vlm.preprocess import ImageSpec

    gpu = torch.cuda.is_available() and (args.device == "auto" or str(args.device).startswith("cuda"))
    device = torch.device("cuda" if args.device == "auto" else args.device) if gpu else torch.device("cpu")
    name = ("quick" if args.quick else "full") if gpu else "cpu"
    preset = PRESETS[name]
    repeats = args.repeats or preset.repeats
    new_tokens = args.new_tokens or preset.new_tokens
    dtype = torch.bfloat16 if gpu else torch.float32
    log.add(Row("preset", name, note=f"hidden {preset.hidden}, {preset.layers} layers, FFN {preset.ffn}, "
                f"heads {preset.heads}/{preset.kv_heads}, vision {preset.vision} x{preset.vision_layers}, "
                f"vocab {args.vocab or preset.vocab}, {dtype}, {repeats} repeats, "
                f"frames {preset.frame[0]}x{preset.frame[1]}, torch {torch.__version__}"))
    if gpu:
        props = torch.cuda.get_device_properties(device)
        log.add(Row("device", torch.cuda.get_device_name(device), note=f"sm_{props.major}{props.minor}, "
                    f"{props.multi_processor_count} SMs, CUDA {torch.version.cuda}"))
        log.add(Row("memory_gib", props.total_memory / 2**30, "GiB"))
        log.add(Row("copy_gbs", copy_bandwidth_gbs(device), "GB/s", "device-to-device copy, read + write"))
    else:
        log.add(Row("device", "cpu", note=f"{torch.get_num_threads()} threads; absolute times mean little here"))

    ms, how = tfps_ms(device, torch.bfloat16 if gpu else torch.float32, preset.tfps_dim, 5 * repeats if gpu else repeats)
    log.add(Row("tfps_ms", ms, "ms", f"{TFPS_VIEWS} x {TFPS_TOKENS} x {preset.tfps_dim}, retain {RETAIN}, {how}"))

    model, tokenizer = drivemm_shaped_model(preset.hidden, preset.ffn, preset.layers, preset.heads, preset.kv_heads,
                                            device, dtype, preset.vision, args.vocab or preset.vocab,
                                            preset.vision_layers)
    weights = streamed_weight_bytes(model)
    log.add(Row("weights_bytes", float(weights), "B", f"{weights / 1e9:.2f} GB read per decode step "
                "(decoder layers + LM head)"))
    log.add(Row("weights_gib", sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, "GiB",
                f"all weights on the device, {dtype}"))

    t0 = time.perf_counter()
    runner = VLMRunner(model, tokenizer, ImageSpec(), [], pruning="tfps", retain=RETAIN, max_new_tokens=new_tokens,
                       cuda_graphs="on" if gpu else "auto")  # "on": a failed capture raises instead of running eager
    runner.warm_up()
    log.add(Row("configure_s", time.perf_counter() - t0, "s", "runner built and warmed up: every capture and compile"))
    log.add(Row("prompt_tokens", float(runner.layout.length), "tokens", "the visual prefix: six 729-token views + text"))
    frames = images(0, preset.frame)

    pruned = first_token(runner, frames, repeats, "pruned")
    problem = _problem(pruned.answers, gpu)
    log.add(Row("ttft_ms", pruned.ttft_ms, "ms", f"fresh frames, tfps retain {RETAIN}, vision included", problem))
    log.add(Row("question_ms", pruned.question_ms, "ms", "same question on the built prefix", problem))
    log.add(Row("pre_vision_ms", pruned.pre_vision_ms, "ms", "the runner's preprocess + vision stages", problem))
    layers = model.config.text_config.num_hidden_layers
    log.add(Row("prune_layer", float(runner.config.prune_layer), "", f"of {layers} layers"))
    log.add(Row("layers", float(layers)))
    kept = pruned.answers[0].kept_per_view
    log.add(Row("tail_flops_ratio", tail_flops_ratio(runner, kept), "x", f"one layer, dense / {sum(kept)} patches kept"))

    for batch in (1, 8):
        step, answers = decode_step_ms(runner, frames, batch, new_tokens, repeats)
        log.add(Row(f"decode_b{batch}_ms", step, "ms/step", f"{batch} question(s) on one prefix, {new_tokens} tokens",
                    _problem(answers, gpu)))

    runner.set_budgets(retain=1.0, warm_up=False)
    runner.set_pruning("none")  # captures again, once
    dense = first_token(runner, frames, repeats, "dense")
    problem = _problem(dense.answers, gpu)
    log.add(Row("dense_ttft_ms", dense.ttft_ms, "ms", "fresh frames, nothing pruned, vision included", problem))
    log.add(Row("dense_question_ms", dense.question_ms, "ms", "same question on the built prefix", problem))
    log.add(Row("dense_pre_vision_ms", dense.pre_vision_ms, "ms", "the runner's preprocess + vision stages", problem))

    generate = Generate(runner, frames)
    ttft = statistics.median(times_ms(lambda _: generate.tokens(1), repeats, device))
    log.add(Row("generate_ttft_ms", ttft, "ms", "transformers generate, one new token, dense, eager"))

    count = min(AGREEMENT_TOKENS, new_tokens)
    runner.max_new_tokens = count
    ours = runner.answer(frames, QUESTION, frame_key=("agreement",))[0].token_ids
    theirs = generate.tokens(count)[0].tolist()
    equal = sum(a == b for a, b in zip(ours, theirs))
    log.add(Row("agreement", f"{equal}/{count}", "tokens", f"ours dense vs generate, greedy, {dtype}"))

    runner.close()
    generate = runner = model = None  # free the bf16 model before the quantized ones are built
    measure_weights(log, preset, args, device, dtype, frames, repeats, new_tokens, gpu)


# Issue 19's rows: each precision on a fresh model of the same shape (quantizing is in place).
QUANTIZED_ROWS = ("int4", "int8")


def measure_weights(log: RowLog, preset: Preset, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                    frames, repeats: int, new_tokens: int, gpu: bool) -> None:
    """Decode at batch 1 and the language model's stored bytes with int4 and int8 weights."""
    import gc

    from prune2drive_ros.vlm import VLMRunner
    from prune2drive_ros.vlm.preprocess import ImageSpec
    from prune2drive_ros.vlm.quantize import language_model_bytes, weights_problem

    for weights in QUANTIZED_ROWS:
        problem = weights_problem(weights, device, dtype)
        if problem is not None:
            log.add(Row(f"{weights}_decode_b1_ms", None, "ms/token", problem, "refused on this device"))
            continue
        model, tokenizer = drivemm_shaped_model(preset.hidden, preset.ffn, preset.layers, preset.heads,
                                                preset.kv_heads, device, dtype, preset.vision,
                                                args.vocab or preset.vocab, preset.vision_layers)
        runner = VLMRunner(model, tokenizer, ImageSpec(), [], pruning="tfps", retain=RETAIN, max_new_tokens=new_tokens,
                           cuda_graphs="on" if gpu else "auto", weights=weights)
        runner.warm_up()
        log.add(Row(f"{weights}_llm_gb", language_model_bytes(model) / 1e9, "GB",
                    "embeddings (bf16) + decoder linears + lm_head (int8) as stored"))
        step, answers = decode_step_ms(runner, frames, 1, new_tokens, repeats)
        log.add(Row(f"{weights}_decode_b1_ms", step, "ms/token", f"{weights} weights, 1 question, {new_tokens} tokens",
                    _problem(answers, gpu)))
        runner.close()
        del runner, model
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
