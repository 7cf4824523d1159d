"""Seeing and measuring the selection: render_kept_tokens, the docs picture, the bench CLI, the import rule."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_cli

from prune2drive_ros.pruning import render_kept_tokens
from prune2drive_ros.pruning.render import LABEL_HEIGHT, TILE_WIDTH


def _views(height: int = 90, width: int = 160) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(60, 200, size=(height, width, 3), dtype=np.uint8) for _ in range(6)]


def test_mosaic_shape_and_layout() -> None:
    mosaic = render_kept_tokens(_views(), [[0, 5, 700]] * 6)
    tile_h = round(TILE_WIDTH * 90 / 160)
    assert mosaic.dtype == np.uint8 and mosaic.shape == (2 * (tile_h + LABEL_HEIGHT), 3 * TILE_WIDTH, 3)
    label_strip = mosaic[:LABEL_HEIGHT, :TILE_WIDTH]
    assert label_strip.max() > 200  # the camera name and kept count are written there


def test_kept_patch_is_brighter_than_the_same_patch_pruned() -> None:
    views = _views()
    kept = render_kept_tokens(views, [[0]] * 6)
    pruned = render_kept_tokens(views, [[]] * 6)
    patch_h, patch_w = round(TILE_WIDTH * 90 / 160) // 27, TILE_WIDTH // 27
    # Patch 0 of the third view (top row, last column) and of the fourth (second row, first column).
    for top, left in [(LABEL_HEIGHT, 2 * TILE_WIDTH), (2 * LABEL_HEIGHT + round(TILE_WIDTH * 90 / 160), 0)]:
        region = (slice(top, top + patch_h), slice(left, left + patch_w))
        assert kept[region].mean() > 2 * pruned[region].mean()
    # Elsewhere both renderings dim alike.
    far = (slice(LABEL_HEIGHT + 10 * patch_h, LABEL_HEIGHT + 11 * patch_h), slice(10 * patch_w, 11 * patch_w))
    assert np.array_equal(kept[far], pruned[far])


def test_render_rejects_bad_input() -> None:
    views = _views()
    with pytest.raises(ValueError, match="one entry per view"):
        render_kept_tokens(views, [[0]] * 5)
    with pytest.raises(ValueError, match="RGB uint8"):
        render_kept_tokens([v[..., 0] for v in views], [[0]] * 6)
    with pytest.raises(ValueError, match=r"kept\[1\]"):
        render_kept_tokens(views, [[0], [729], [0], [0], [0], [0]])


def test_fewer_views_and_custom_grid() -> None:
    mosaic = render_kept_tokens(_views()[:2], [[0, 1], [3]], grid=2, names=["a", "b"])
    assert mosaic.shape[1] == 3 * TILE_WIDTH


def test_docs_picture_is_committed_and_regenerates(tmp_path) -> None:
    import cv2

    from prune2drive_ros.pruning.figure import make_figure

    committed = cv2.imread(str(REPO / "docs" / "kept_tokens.png"))
    assert committed is not None and committed.shape[1] == 3 * TILE_WIDTH
    fresh = cv2.imread(str(make_figure(tmp_path / "kept.png")))
    assert fresh.shape == committed.shape


def test_bench_cli_smoke() -> None:
    out = run_cli("bench", "pruning", "--quick", "--dims", "16", "--tokens", "49", "--views", "3", "--retain", "0.25",
                  timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for method in ["loop (ref)", "tfps", "divprune", "fastv", "random", "pool", "mvpruner", "none", "vs loop"]:
        assert method in out.stdout
    assert "tfps picks == loop picks: yes" in out.stdout


def test_pruning_imports_no_ros_transformers_or_opencv() -> None:
    code = ("import sys, prune2drive_ros.pruning; "
            "print(sorted(m for m in ('rclpy', 'transformers', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
