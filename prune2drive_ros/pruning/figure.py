"""Regenerate ``docs/kept_tokens.png``: T-FPS on a synthetic six-camera street scene.

    python -m prune2drive_ros.pruning.figure [OUTPUT.png]

The scene is drawn with OpenCV (deterministic), the token features are simple patch statistics (mean
colour, contrast, edge strength, coarse layout) standing in for the LLM hidden states, the budgets are
10 % of the tokens re-divided by view diversity (``view_budgets(adaptive=...)``), and the picks are T-FPS.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .budgets import view_budgets
from .fps import farthest_point_sampling
from .render import render_kept_tokens

WIDTH, HEIGHT = 800, 450
OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "kept_tokens.png"


def _car(img: np.ndarray, x: int, y: int, w: int, colour: tuple[int, int, int]) -> None:
    import cv2

    h = w // 2
    cv2.rectangle(img, (x, y - h), (x + w, y), colour, -1)
    cv2.rectangle(img, (x + w // 6, y - h - h // 2), (x + 5 * w // 6, y - h), colour, -1)
    cv2.rectangle(img, (x + w // 5, y - h - h // 3), (x + 4 * w // 5, y - h), (60, 80, 110), -1)  # windows
    for cx in (x + w // 5, x + 4 * w // 5):
        cv2.circle(img, (cx, y), max(3, w // 9), (25, 25, 25), -1)


def _street(img: np.ndarray, lanes: bool) -> None:
    import cv2

    horizon = HEIGHT // 2
    road = np.array([[WIDTH // 2 - 40, horizon], [WIDTH // 2 + 40, horizon], [WIDTH, HEIGHT], [0, HEIGHT]])
    cv2.fillPoly(img, [road], (95, 95, 100))
    if lanes:
        for t in np.linspace(0.05, 0.95, 7):
            y0, y1 = int(horizon + t * (HEIGHT - horizon)), int(horizon + (t + 0.06) * (HEIGHT - horizon))
            cv2.line(img, (WIDTH // 2, y0), (WIDTH // 2, y1), (235, 225, 120), max(1, int(8 * t)))


def synthetic_views(seed: int = 0) -> list[np.ndarray]:
    """Six RGB uint8 views in DriveMM camera order: busy front, quiet back-right."""
    import cv2

    rng = np.random.default_rng(seed)
    views = []
    for cam in range(6):
        img = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        sky = np.linspace(200, 140, HEIGHT // 2)[:, None, None] * np.array([0.75, 0.85, 1.0])
        img[: HEIGHT // 2] = sky.astype(np.uint8)
        img[HEIGHT // 2 :] = (80, 120, 70)  # grass verge
        if cam in (0, 1, 2, 4):  # buildings with windows
            for _ in range(3 if cam == 0 else 5):
                x0 = int(rng.integers(0, WIDTH - 120))
                top = int(rng.integers(60, 170))
                colour = tuple(int(c) for c in rng.integers(120, 200, 3))
                cv2.rectangle(img, (x0, top), (x0 + 110, HEIGHT // 2 + 10), colour, -1)
                for wy in range(top + 15, HEIGHT // 2 - 10, 28):
                    for wx in range(x0 + 12, x0 + 100, 26):
                        cv2.rectangle(img, (wx, wy), (wx + 12, wy + 14), (70, 90, 120), -1)
        _street(img, lanes=cam in (0, 3))
        if cam == 0:
            _car(img, 330, 330, 140, (200, 30, 30))
            _car(img, 560, 300, 90, (30, 60, 200))
            cv2.rectangle(img, (120, 150), (132, 300), (50, 50, 50), -1)  # traffic light
            cv2.rectangle(img, (110, 110), (142, 170), (30, 30, 30), -1)
            cv2.circle(img, (126, 125), 9, (40, 220, 60), -1)
        elif cam == 1:
            cv2.circle(img, (250, 270), 14, (230, 190, 160), -1)  # pedestrian
            cv2.rectangle(img, (238, 284), (262, 350), (40, 40, 160), -1)
            _car(img, 480, 400, 220, (240, 240, 240))
        elif cam == 2:
            cv2.rectangle(img, (200, 170), (620, 360), (230, 180, 20), -1)  # bus
            for wx in range(220, 600, 50):
                cv2.rectangle(img, (wx, 190), (wx + 35, 240), (60, 80, 110), -1)
            for cx in (280, 540):
                cv2.circle(img, (cx, 360), 26, (25, 25, 25), -1)
        elif cam == 3:
            _car(img, 340, 380, 160, (20, 20, 20))
        elif cam == 4:
            for tx in (120, 420, 650):  # trees
                cv2.rectangle(img, (tx - 6, 200), (tx + 6, 280), (90, 60, 30), -1)
                cv2.circle(img, (tx, 190), 40, (40, 130, 50), -1)
        # Smooth lens vignetting: no two flat patches are exactly alike, and the PNG stays small.
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
        vignette = 1.0 - 0.25 * (((xx - WIDTH / 2) / WIDTH) ** 2 + ((yy - HEIGHT / 2) / HEIGHT) ** 2)
        views.append(np.clip(img * vignette[..., None], 0, 255).astype(np.uint8))
    return views


def patch_features(image: np.ndarray, grid: int = 27, patch: int = 8) -> torch.Tensor:
    """``[grid * grid, 12]`` features of the square-resized image (as the vision tower sees it), row-major."""
    import cv2

    side = grid * patch
    img = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    gray = img.mean(axis=-1)
    gx, gy = np.abs(np.diff(gray, axis=1, append=gray[:, -1:])), np.abs(np.diff(gray, axis=0, append=gray[-1:]))
    blocks = img.reshape(grid, patch, grid, patch, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, patch, patch, 3)
    half = patch // 2
    quads = [blocks[:, i:i + half, j:j + half].mean(axis=(1, 2, 3)) for i in (0, half) for j in (0, half)]
    edge = [g.reshape(grid, patch, grid, patch).mean(axis=(1, 3)).reshape(-1) for g in (gx, gy)]
    feats = np.column_stack([blocks.mean(axis=(1, 2)), blocks.std(axis=(1, 2)), *edge, *quads])
    return torch.from_numpy(feats)


def make_figure(output: Path = OUTPUT) -> Path:
    import cv2

    views = synthetic_views()
    raw = torch.stack([patch_features(v) for v in views])  # [6, 729, 12]
    # Centre and whiten over the scene so cosine distance compares structure, not overall brightness.
    flat = raw.reshape(-1, raw.shape[-1])
    features = ((raw - flat.mean(0)) / flat.std(0).clamp_min(1e-6)).float()
    budgets = view_budgets(729, retain=0.1, adaptive=features)
    kept = farthest_point_sampling(features, budgets)
    mosaic = render_kept_tokens(views, [k.tolist() for k in kept])
    output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(output), cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return output


if __name__ == "__main__":
    print(make_figure(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
