"""Training the test-bed model (``prune2drive train-testbed``) and finding the shipped checkpoint.

This module stays import-light (no torch), so the demo can look for the shipped checkpoint cheaply.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "prune2drive_ros"
TESTBED_MARKER = "prune2drive_testbed"
"""Key in a checkpoint's config.json that marks a model trained by ``train-testbed`` (holds its record)."""


def testbed_locations() -> list[Path]:
    """Where an install keeps ``models/testbed``, in the order they are tried."""
    candidates = [Path(__file__).resolve().parents[2] / "models" / "testbed"]
    prefixes = [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]
    return candidates + [Path(p) / "share" / PACKAGE / "models" / "testbed" for p in prefixes if p]


def shipped_testbed() -> Path | None:
    """The test-bed checkpoint shipped with the package, or None if this install has none.

    Looked for in the source tree (``models/testbed`` next to the package: a checkout or an editable
    install) and in the installed share folder (``<prefix>/share/prune2drive_ros/models/testbed``, where
    ``pip install`` and colcon put data files).
    """
    for folder in testbed_locations():
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    return None
