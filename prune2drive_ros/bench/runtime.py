"""What ``bench prefill`` and ``bench decode`` share: the model, the baseline, the measurements.

Every table compares, on the same weights in one run: transformers' own ``generate`` (eager, what a
user would pick instead), our runtime dense (``pruning none``) and our runtime pruned. Without
``--model`` the weights are a random DriveMM-shaped LLaVA-OneVision (Llama text model, a tiny vision
tower); ``--hidden/--ffn/--layers`` shrink it for a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from prune2drive_ros import settings
from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.pruning import layer_flops
from prune2drive_ros.vlm.geometry import TOKENS_PER_VIEW

DRIVEMM = {"hidden": 4096, "ffn": 14336, "layers": 32, "heads": 32, "kv_heads": 8}
CPU_DEFAULTS = {"hidden": 512, "ffn": 1792, "layers": 8}  # the "medium" model of the CPU targets
QUESTION = "What are the important objects in the current scene? Those objects will be considered for the future."


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: random DriveMM-shaped model)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32 on GPU, 8 on CPU)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default: 4096 on GPU, 512 on CPU)")
    parser.add_argument("--ffn", type=int, default=None, help="FFN size (default: 14336 on GPU, 1792 on CPU)")
    parser.add_argument("--vision", choices=["so400m", "tiny"], default=None,
                        help="vision tower: DriveMM's 26-layer SigLIP-so400m or a 2-layer toy (default: so400m on GPU)")
    settings.add_arguments(parser, ("device", "dtype", "pruning"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-generate", action="store_true", help="skip the transformers generate baseline")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler GPU-busy column")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (default: torch's); 1 avoids thread-pool overhead on a busy machine")


def drivemm_shaped_runner(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, device, dtype,
                          vision: str = "tiny", **settings):
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
    if vision == "so400m":  # DriveMM's tower: SigLIP-so400m at 384 px, its last layer removed (26 run)
        v = config.vision_config
        v.hidden_size, v.intermediate_size, v.num_attention_heads = 1152, 4304, 16
        v.num_hidden_layers, v.initializer_range = 26, 0.02
        v._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration(config).to(dtype).eval()
    # No stop token: every run generates exactly the tokens asked for, so times compare.
    runner = VLMRunner(model, tokenizer, ImageSpec(), [], **settings)
    runner.warm_up()
    return runner


def build_runner(args: argparse.Namespace, **settings):
    from prune2drive_ros.vlm import VLMRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available() and (args.device == "auto" or str(args.device).startswith("cuda"))
    if args.model:
        return VLMRunner.from_pretrained(args.model, device=args.device, dtype=args.dtype, **settings)
    size = DRIVEMM if gpu else CPU_DEFAULTS
    hidden = args.hidden or size["hidden"]
    heads = max(1, hidden // 128)
    return drivemm_shaped_runner(hidden=hidden, ffn=args.ffn or size["ffn"], layers=args.layers or size["layers"],
                                 heads=heads, kv_heads=max(1, min(DRIVEMM["kv_heads"], heads)), device=args.device,
                                 dtype=args.dtype, vision=args.vision or ("so400m" if gpu else "tiny"), **settings)


def images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8) for _ in range(6)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def gpu_busy(fn: Callable[[], object], device: torch.device) -> float | None:
    """Fraction of ``fn``'s wall time the GPU spent running kernels (torch.profiler); None off CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        sync(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    try:  # kernels (and copies) are the events that ran on the device
        busy_us = sum(e.time_range.elapsed_us() for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA)
    except (AttributeError, RuntimeError):
        return None
    return min(1.0, busy_us / wall_us) if wall_us else None


@dataclass
class Generate:
    """transformers' own ``generate`` on the runner's prompt and pixels (the baseline)."""

    runner: object
    frames: list[np.ndarray]
    question: str = QUESTION

    def inputs(self, batch: int):
        from prune2drive_ros.vlm.preprocess import preprocess

        r = self.runner
        suffix = r.tokenizer(r.prompt.suffix(self.question), add_special_tokens=False).input_ids
        ids = torch.cat([r.prefix_ids, torch.tensor(suffix, device=r.device)])[None].repeat(batch, 1)
        pixels = preprocess(self.frames, r.image_spec, r.device, r.dtype).repeat(batch, 1, 1, 1)
        size = r.image_spec.size
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
                "image_sizes": torch.tensor([[size, size]] * 6 * batch, device=r.device),
                "batch_num_images": torch.tensor([6] * batch, device=r.device)}

    @torch.inference_mode()
    def tokens(self, new_tokens: int, batch: int = 1) -> torch.Tensor:
        inputs = self.inputs(batch)
        out = self.runner.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False, pad_token_id=self.runner.tokenizer.pad_token_id)
        return out[:, inputs["input_ids"].shape[1]:]


def prefill_flops_ratio(runner, kept_total: int, text_tokens: int) -> float:
    cfg = runner.model.config.text_config
    dims = {"hidden": cfg.hidden_size, "ffn": cfg.intermediate_size}
    dense = runner.layout.length + text_tokens
    kept = dense - runner.layout.patch_positions.numel() + kept_total
    k = runner.config.layer
    layers = cfg.num_hidden_layers
    return (k * layer_flops(dense, **dims) + (layers - k) * layer_flops(kept, **dims)) / (
        layers * layer_flops(dense, **dims))


def drivemm_flops_ratio(kept_per_view: int = 72, text_tokens: int = 80) -> float:
    """Analytic prefill FLOPs of the real DriveMM with ``kept_per_view`` patches kept at K=1."""
    dense = NUM_CAMERAS * TOKENS_PER_VIEW + text_tokens
    kept = NUM_CAMERAS * (kept_per_view + 1) + text_tokens  # + image_newline
    f = {"hidden": DRIVEMM["hidden"], "ffn": DRIVEMM["ffn"]}
    return (layer_flops(dense, **f) + (DRIVEMM["layers"] - 1) * layer_flops(kept, **f)) / (
        DRIVEMM["layers"] * layer_flops(dense, **f))


def fmt(value, spec: str = ".1f", width: int = 9) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"
