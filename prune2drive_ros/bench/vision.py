"""``prune2drive bench vision``: six camera views through each available vision backend, side by side.

Reports the median ms per call (six views, preprocessed, on the device), the ratio against torch
eager measured in the same run, and each backend's build-time parity. Without ``--model`` it builds
a random-weight DriveMM-shaped vision path from a config (SigLIP-so400m at 384 px, the 2-layer GELU
projector into a 4096-wide LLM, image_newline); ``--layers`` shrinks the tower (26 in DriveMM) so it
runs on a CPU. Engines are built into a temporary folder unless ``--engine-dir`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

from prune2drive_ros import settings

SIGLIP_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 26,
                 "patch_size": 14, "image_size": 384}
DRIVEMM_LLM_HIDDEN = 4096


class _VisionOnly(nn.Module):
    """Just the parts of a LLaVA-OneVision model that ``VisionEncoder`` reads (no 8B language model)."""

    def __init__(self, config):
        from transformers import SiglipVisionModel
        from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionMultiModalProjector

        super().__init__()
        self.config = config
        self.model = nn.Module()
        self.model.vision_tower = SiglipVisionModel(config.vision_config)
        self.model.multi_modal_projector = LlavaOnevisionMultiModalProjector(config)
        self.model.image_newline = nn.Parameter(torch.randn(config.text_config.hidden_size) * 0.02)


def drivemm_shaped_encoder(layers: int, device: torch.device, dtype: torch.dtype):
    """A random DriveMM-shaped ``VisionEncoder`` with ``layers`` SigLIP layers (features before post-layernorm)."""
    from transformers import LlamaConfig, LlavaOnevisionConfig, SiglipVisionConfig

    from prune2drive_ros.vlm.vision import VisionEncoder

    vision = SiglipVisionConfig(**(SIGLIP_SO400M | {"num_hidden_layers": layers}), vision_use_head=False)
    vision._attn_implementation = "sdpa"
    text = LlamaConfig(hidden_size=DRIVEMM_LLM_HIDDEN, num_hidden_layers=1, num_attention_heads=32, vocab_size=32)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1)
    torch.manual_seed(0)
    with torch.device(device):
        return VisionEncoder(_VisionOnly(config)).to(dtype).eval()


def _median_ms(fn, pixels: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    sync = torch.cuda.synchronize if pixels.is_cuda else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn(pixels)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(pixels)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: random DriveMM-shaped vision path)")
    parser.add_argument("--layers", type=int, default=None, help="SigLIP layers, no --model (default: 26 GPU, 2 CPU)")
    settings.add_arguments(parser, ("device", "dtype"))
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--backends", default="torch,onnxruntime,tensorrt", help="comma-separated subset")
    parser.add_argument("--engine-dir", default=None, help="engine cache folder (default: a temporary one)")


def run(args: argparse.Namespace) -> int:
    from prune2drive_ros.vlm.backends import resolve_backend_name
    from prune2drive_ros.vlm.backends.build import load_or_build
    from prune2drive_ros.vlm.backends.parity import parity_inputs
    from prune2drive_ros.vlm.backends.torch_backend import TorchVisionBackend
    from prune2drive_ros.vlm.loading import load_checkpoint, resolve_device, resolve_dtype
    from prune2drive_ros.vlm.vision import VisionEncoder

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.model:
        loaded = load_checkpoint(args.model, device, dtype)
        encoder, model_dir, what = VisionEncoder(loaded.model).eval(), loaded.folder, args.model
    else:
        layers = args.layers or (26 if device.type == "cuda" else 2)
        encoder, model_dir = drivemm_shaped_encoder(layers, device, dtype), None
        what = f"DriveMM-shaped, {layers} SigLIP layers"
    pixels = parity_inputs(encoder, args.views, model_dir)
    print(f"vision encoder: {what}; {args.views} views {tuple(pixels.shape[1:])} on {device} {dtype}; "
          f"median of {args.repeats}")

    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: list[tuple[str, float | None, str]] = []
    baseline = None
    with tempfile.TemporaryDirectory(prefix="p2d-engines-") as tmp:
        candidates = [("torch eager", "torch", False)]
        if args.compile:
            candidates.append(("torch.compile", "torch", True))
        candidates += [(name, name, False) for name in ("onnxruntime", "tensorrt") if name in wanted]
        for label, name, compiled in candidates:
            if name != "torch":
                chosen, why = resolve_backend_name(name, str(device))
                if chosen != name:
                    rows.append((label, None, why.removeprefix("fallback: ").split("; ")[0]))
                    continue
                try:
                    started = time.perf_counter()
                    backend = load_or_build(name, encoder, device=device, dtype=dtype, engine_dir=args.engine_dir or tmp,
                                            model_dir=model_dir, max_views=max(6, args.views))
                    build_s = time.perf_counter() - started
                except Exception as exc:  # a failed build is a result to report, not a crash
                    rows.append((label, None, f"build failed: {exc}"))
                    continue
                note = (f"cos {backend.parity['min_cosine']:.6f}, {backend.cache_status} in {build_s:.1f} s"
                        if backend.parity else backend.cache_status)
            else:
                backend, note = TorchVisionBackend(encoder, compile=compiled), "reference" if not compiled else ""
            ms = _median_ms(backend, pixels, args.repeats, warmup=3 if compiled else 2)
            baseline = baseline or ms
            rows.append((label, ms, note))
            backend.close()

    print(f"{'backend':<15} {'median ms':>10} {'vs eager':>9}  notes")
    for label, ms, note in rows:
        if ms is None:
            print(f"{label:<15} {'-':>10} {'-':>9}  unavailable: {note}")
        else:
            print(f"{label:<15} {ms:>10.2f} {baseline / ms:>8.2f}x  {note}")
    return 0
