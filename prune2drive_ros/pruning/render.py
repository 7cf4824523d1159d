"""Picture of a selection: each camera with its kept patches bright and its pruned patches dimmed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..cameras import CAMERA_NAMES

PRUNED_BRIGHTNESS = 0.3
LABEL_HEIGHT = 28
TILE_WIDTH = 480
COLUMNS = 3


def _kept_mask(kept: Sequence[int], grid: int, view: int) -> np.ndarray:
    index = np.asarray([int(i) for i in kept], dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= grid * grid):
        raise ValueError(f"kept[{view}] has indices outside [0, {grid * grid}) for a {grid}x{grid} grid")
    mask = np.zeros(grid * grid, dtype=bool)
    mask[index] = True
    return mask.reshape(grid, grid)


def render_kept_tokens(images: Sequence[np.ndarray], kept: Sequence[Sequence[int]], grid: int = 27,
                       names: Sequence[str] | None = None) -> np.ndarray:
    """A mosaic (3 columns; 2 x 3 for six cameras, in DriveMM camera order) of the kept tokens per view.

    ``images``: RGB ``uint8 [H, W, 3]`` per view; ``kept``: kept token indices per view (row-major on the
    ``grid x grid`` patch grid the model sees, the whole image squashed to a square). Kept patches keep
    their pixels, pruned ones are dimmed to 30 %. Above each view a label names the camera (``names``, by
    default the DriveMM camera names for six views) and its kept count. Returns an RGB ``uint8`` image.
    """
    import cv2  # rendering only; the pruning algorithms must not need OpenCV

    if len(images) != len(kept) or not images:
        raise ValueError(f"images and kept need one entry per view, got {len(images)} and {len(kept)}")
    if names is None:
        names = CAMERA_NAMES if len(images) == len(CAMERA_NAMES) else [f"view {v}" for v in range(len(images))]
    first = np.asarray(images[0])
    tile_h = max(grid, round(TILE_WIDTH * first.shape[0] / max(first.shape[1], 1)))
    rows = -(-len(images) // COLUMNS)
    mosaic = np.zeros((rows * (tile_h + LABEL_HEIGHT), COLUMNS * TILE_WIDTH, 3), dtype=np.uint8)
    for v, (image, picked) in enumerate(zip(images, kept, strict=True)):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"images[{v}] must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        mask = _kept_mask(picked, grid, v)
        tile = cv2.resize(image, (TILE_WIDTH, tile_h), interpolation=cv2.INTER_AREA).astype(np.float32)
        # Nearest-neighbour upsampling maps each pixel to the patch the model's square resize puts it in.
        pixel_kept = cv2.resize(mask.astype(np.uint8), (TILE_WIDTH, tile_h), interpolation=cv2.INTER_NEAREST)
        tile *= np.where(pixel_kept[..., None] > 0, 1.0, PRUNED_BRIGHTNESS)
        top = (v // COLUMNS) * (tile_h + LABEL_HEIGHT)
        left = (v % COLUMNS) * TILE_WIDTH
        mosaic[top + LABEL_HEIGHT:top + LABEL_HEIGHT + tile_h, left:left + TILE_WIDTH] = tile.round().astype(np.uint8)
        label = f"{names[v]}  kept {int(mask.sum())}/{grid * grid}"
        cv2.putText(mosaic, label, (left + 8, top + LABEL_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return mosaic
