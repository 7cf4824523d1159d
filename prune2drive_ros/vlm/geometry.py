"""DriveMM's visual token geometry, defined once: 384-px views cut into 14-px patches.

Each camera view is one 384 x 384 tile: a 27 x 27 grid = 729 patch tokens, plus one ``image_newline``
embedding appended to the view = 730 tokens in the prompt. The tiny test model, the benchmarks and the
converter all take these numbers from here.
"""

from __future__ import annotations

VIEW_SIZE = 384
PATCH_SIZE = 14
GRID = VIEW_SIZE // PATCH_SIZE  # 27
PATCHES_PER_VIEW = GRID * GRID  # 729
TOKENS_PER_VIEW = PATCHES_PER_VIEW + 1  # + image_newline
