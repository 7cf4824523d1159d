"""Input validation and preprocessing of the six camera views.

Every view becomes one 384x384 tile (DriveMM uses no anyres tiling for multi-image input): either
squashed to the square (LLaVA-OneVision's base tile) or first padded to a square with the mean
colour (LLaVA's ``pad`` aspect-ratio mode), then bicubic-resized and normalised on the target
device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.vlm.geometry import VIEW_SIZE

DEFAULT_MAX_IMAGE_SIDE = 4096


@dataclass(frozen=True)
class ImageSpec:
    size: int = VIEW_SIZE
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    aspect_ratio: str = "square"  # "square" (resize) or "pad" (pad to square, then resize)

    @classmethod
    def from_checkpoint(cls, folder: Path, image_size: int) -> ImageSpec:
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return cls(size=image_size)
        cfg = json.loads(path.read_text())
        aspect = cfg.get("image_aspect_ratio", "square")
        if aspect not in ("square", "pad"):
            raise ValueError(f"{path}: image_aspect_ratio must be 'square' or 'pad', got {aspect!r}")
        return cls(
            size=image_size,
            mean=tuple(cfg.get("image_mean", cls.mean)),
            std=tuple(cfg.get("image_std", cls.std)),
            aspect_ratio=aspect,
        )


def validate_images(images, max_side: int = DEFAULT_MAX_IMAGE_SIDE) -> None:
    """Raise ValueError naming the problem if ``images`` is not six HxWx3 uint8 arrays within bounds."""
    if not isinstance(images, (list, tuple)) or len(images) != NUM_CAMERAS:
        count = len(images) if hasattr(images, "__len__") else type(images).__name__
        raise ValueError(f"expected {NUM_CAMERAS} images in camera order, got {count}")
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image {i} must be an HxWx3 uint8 RGB array, got {desc}")
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise ValueError(f"image {i} is empty ({h}x{w})")
        if max(h, w) > max_side:
            raise ValueError(f"image {i} is {w}x{h}; the bound is {max_side} px per side")


def _pad_to_square(image: torch.Tensor) -> torch.Tensor:
    c, h, w = image.shape
    side = max(h, w)
    mean = image.float().mean(dim=(1, 2), keepdim=True).to(image.dtype)
    canvas = mean.expand(c, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, top : top + h, left : left + w] = image
    return canvas


def preprocess(images, spec: ImageSpec, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Six RGB uint8 arrays -> normalised pixel values ``[6, 3, size, size]`` on ``device``."""
    tiles = []
    for image in images:
        x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)
        if spec.aspect_ratio == "pad":
            x = _pad_to_square(x)
        x = x[None].float()
        if x.shape[-2:] != (spec.size, spec.size):
            x = F.interpolate(x, size=(spec.size, spec.size), mode="bicubic", align_corners=False, antialias=True)
        tiles.append(x.clamp_(0, 255))
    pixels = torch.cat(tiles) / 255.0
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return ((pixels - mean) / std).to(dtype)


def preprocessor_config(aspect_ratio: str = "square") -> dict:
    """SigLIP preprocessing at 384 px, plus the aspect-ratio mode the runtime reads."""
    return {
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "size": {"height": VIEW_SIZE, "width": VIEW_SIZE},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_aspect_ratio": aspect_ratio,
    }
