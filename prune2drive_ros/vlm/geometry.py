"""DriveMM's visual token geometry (defined in ``prune2drive_ros.settings``): 384-px views, 14-px patches.

Each camera view is one 384 x 384 tile: a 27 x 27 grid = 729 patch tokens, plus one ``image_newline``
embedding appended to the view = 730 tokens in the prompt. The tiny test model, the benchmarks and the
converter all take these numbers from here.
"""

from __future__ import annotations

from prune2drive_ros.settings import GRID, PATCH_SIZE, PATCHES_PER_VIEW, VIEW_SIZE

TOKENS_PER_VIEW = PATCHES_PER_VIEW + 1  # + image_newline

__all__ = ["GRID", "PATCHES_PER_VIEW", "PATCH_SIZE", "TOKENS_PER_VIEW", "VIEW_SIZE"]
