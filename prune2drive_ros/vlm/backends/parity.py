"""Build-time parity: a backend must reproduce the torch path on real preprocessed camera images."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from prune2drive_ros.vlm.backends.export import image_size, module_device_dtype

MIN_COSINE = 0.999


class ParityError(RuntimeError):
    pass


@dataclass(frozen=True)
class ParityReport:
    min_cosine: float
    max_abs_diff: float
    views: int

    def ok(self, threshold: float = MIN_COSINE) -> bool:
        return self.min_cosine >= threshold


@lru_cache(maxsize=2)  # the same frames for every build in a process; callers only read them
def synthetic_views(count: int = 6, height: int = 900, width: int = 1600, seed: int = 0) -> list[np.ndarray]:
    """Camera-sized RGB frames with structure (gradients, blocks) and noise, unlike a flat test pattern."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    views = []
    for v in range(count):
        base = np.stack([xs / width, ys / height, (xs + ys) / (width + height)], axis=-1) * 200 + 20 * v
        for _ in range(8):  # a few "objects"
            y, x = rng.integers(0, height - 100), rng.integers(0, width - 100)
            base[y : y + rng.integers(20, 100), x : x + rng.integers(20, 100)] = rng.integers(0, 256, 3)
        base += rng.normal(0, 12, base.shape)
        views.append(np.clip(base, 0, 255).astype(np.uint8))
    return views


def parity_inputs(encoder: torch.nn.Module, views: int, model_dir: Path | None = None) -> torch.Tensor:
    """Preprocessed pixels exactly as the runner makes them, on the encoder's device and dtype."""
    from prune2drive_ros.vlm.preprocess import ImageSpec, preprocess

    size = image_size(encoder)
    spec = ImageSpec.from_checkpoint(Path(model_dir), size) if model_dir is not None else ImageSpec(size=size)
    device, dtype = module_device_dtype(encoder)
    frames = synthetic_views(6)
    pixels = preprocess(frames, spec, device, dtype)  # validates six views
    return pixels[:views] if views <= len(pixels) else pixels.repeat((views + 5) // 6, 1, 1, 1)[:views]


@torch.inference_mode()
def compare(backend, encoder: torch.nn.Module, pixels: torch.Tensor) -> ParityReport:
    """Per-view cosine similarity (flattened features) and max |diff| of ``backend`` vs the torch encoder."""
    expected = encoder(pixels).double()  # fp64: a fp32 dot product over ~3M values drifts past 1.0
    got = backend(pixels).double().to(expected.device)
    if got.shape != expected.shape:
        raise ParityError(f"backend output shape {tuple(got.shape)} != torch {tuple(expected.shape)}")
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), expected.flatten(1), dim=1)
    return ParityReport(float(cos.min()), float((got - expected).abs().max()), pixels.shape[0])
