"""Input validation and preprocessing of the six camera views.

Every view becomes one 384x384 tile (DriveMM uses no anyres tiling for multi-image input): either
squashed to the square (LLaVA-OneVision's base tile) or first padded to a square with the mean
colour (LLaVA's ``pad`` aspect-ratio mode), then bicubic-resized and normalised on the target
device. Six views of one size (a camera rig) go to the device in one copy from a reused pinned
buffer (``FrameUploader``) and are resized as one batch.
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


class FrameUploader:
    """Copies six same-sized views to ``device`` in one transfer: on CUDA through a pinned staging buffer,
    kept per frame shape, so the copy is asynchronous and no page-locking happens per frame."""

    def __init__(self, device: torch.device):
        self.device = device
        self._staging: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def __call__(self, images) -> torch.Tensor:
        """``[V, H, W, 3]`` uint8 on the device."""
        shape = (len(images), *images[0].shape)
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack(images))
        if self._staging is None or tuple(self._staging.shape) != shape:
            self._staging = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        elif self._copied is not None:
            self._copied.synchronize()  # the previous frame's copy has left the buffer (long since, in practice)
        staging = self._staging.numpy()
        for i, image in enumerate(images):
            staging[i] = image
        frames = self._staging.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return frames


def _pad_to_square(images: torch.Tensor) -> torch.Tensor:
    """``[V, C, H, W]`` -> ``[V, C, S, S]``, the image centred on its own mean colour."""
    views, c, h, w = images.shape
    side = max(h, w)
    mean = images.float().mean(dim=(2, 3), keepdim=True).to(images.dtype)
    canvas = mean.expand(views, c, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, :, top : top + h, left : left + w] = images
    return canvas


def _to_tiles(images: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """uint8 ``[V, H, W, 3]`` -> float ``[V, 3, size, size]`` in [0, 255]."""
    x = images.permute(0, 3, 1, 2)
    if spec.aspect_ratio == "pad":
        x = _pad_to_square(x)
    x = x.float()
    if x.shape[-2:] != (spec.size, spec.size):
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp_(0, 255)


def preprocess(images, spec: ImageSpec, device: torch.device, dtype: torch.dtype,
               upload: FrameUploader | None = None) -> torch.Tensor:
    """Six RGB uint8 arrays -> normalised pixel values ``[6, 3, size, size]`` on ``device``."""
    if len({image.shape for image in images}) == 1:
        frames = upload(images) if upload is not None else torch.from_numpy(np.stack(images)).to(device)
        tiles = _to_tiles(frames, spec)
    else:  # views of different sizes: one at a time
        tiles = torch.cat([_to_tiles(torch.from_numpy(np.ascontiguousarray(image))[None].to(device), spec)
                           for image in images])
    pixels = tiles / 255.0
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
