"""``prune2drive bench load``: how long a start takes, full precision vs quantizing vs the cache.

Writes a random DriveMM-shaped checkpoint (tiny vision tower, ``--hidden/--ffn/--layers`` text
model) to a temporary folder, then times ``VLMRunner.from_pretrained`` in the model dtype, the first
start of each ``--weights`` (quantize and write the cache) and its second start (load the cache).
The target: a second start within 1.5x of the full-precision load.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from prune2drive_ros import settings
from prune2drive_ros.vlm.quantize import QUANTIZED_WEIGHTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, ("weights",), weights={"nargs": "+", "help": "quantized precisions (default: int8 int4)"})
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=3584)
    parser.add_argument("--layers", type=int, default=8)
    settings.add_arguments(parser, ("device", "dtype"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)


def write_checkpoint(folder: Path, hidden: int, ffn: int, layers: int) -> Path:
    """A tiny checkpoint's tokenizer and vision tower with a ``hidden``/``ffn``/``layers`` Llama text model."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from prune2drive_ros.vlm.tiny import make_tiny_model

    make_tiny_model(folder)
    config = LlavaOnevisionConfig.from_pretrained(folder)
    text = config.text_config
    heads = max(1, hidden // 128)
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, ffn, layers
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = heads, max(1, min(8, heads)), hidden // heads
    text.initializer_range = 0.02
    torch.manual_seed(0)
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    return folder


def _start_ms(model: Path, **settings) -> tuple[float, object]:
    from prune2drive_ros.vlm import VLMRunner

    t0 = time.perf_counter()
    runner = VLMRunner.from_pretrained(model, max_new_tokens=2, **settings)
    ms = (time.perf_counter() - t0) * 1000.0
    source = runner.weights_source
    runner.close()
    return ms, source


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="p2d-load-") as tmp:
        model = write_checkpoint(Path(tmp) / "model", args.hidden, args.ffn, args.layers)
        size = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 1e9
        common = {"device": args.device, "dtype": args.dtype}
        _start_ms(model, **common)  # imports and the page cache warm, for every row alike
        full = statistics.median(_start_ms(model, **common)[0] for _ in range(args.repeats))
        print(f"checkpoint: hidden={args.hidden} ffn={args.ffn} layers={args.layers}, {size:.2f} GB safetensors; "
              f"threads={torch.get_num_threads()}")
        lines = [f"{'start':<28}{'ms':>9}{'x full':>8}  weights from", f"{'full precision':<28}{full:>9.0f}{1.0:>8.2f}"]
        for weights in [w for w in (args.weights if isinstance(args.weights, list) else ("int8", "int4"))
                        if w in QUANTIZED_WEIGHTS]:
            cache = Path(tmp) / f"cache-{weights}"
            first, source = _start_ms(model, weights=weights, engine_dir=str(cache), **common)
            lines.append(f"{f'{weights} first (quantize)':<28}{first:>9.0f}{first / full:>8.2f}  {source}")
            runs = [_start_ms(model, weights=weights, engine_dir=str(cache), **common) for _ in range(args.repeats)]
            second = statistics.median(ms for ms, _ in runs)
            lines.append(f"{f'{weights} second (cache)':<28}{second:>9.0f}{second / full:>8.2f}  {runs[-1][1]}")
    print("\n".join(lines))
    print("medians of --repeats starts (VLMRunner.from_pretrained, warm-up included); target: second <= 1.5x full")
    return 0
