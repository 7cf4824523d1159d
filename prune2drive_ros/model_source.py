"""Which checkpoint the node loads when ``model`` is left at its default (no torch, no ROS).

In order: a checkpoint named by ``model``; the default hub id when it is in the local Hugging Face cache
(a car is usually offline, and nothing is downloaded behind the user's back); else the test-bed model
shipped with the package, with one warning that says what it is and how to point at a real one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prune2drive_ros.settings import DEFAULT_MODEL

PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


@dataclass(frozen=True)
class ModelChoice:
    model: str
    warning: str = ""
    """Non-empty when the node runs something other than what ``model`` says."""


def in_hub_cache(repo_id: str) -> bool:
    """Is ``repo_id``'s snapshot (config and weights) in the local Hugging Face cache? Never downloads."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, allow_patterns=PATTERNS, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError and friends), or no huggingface_hub
        return False
    return True


def choose_node_model(model: str) -> ModelChoice:
    """The checkpoint to load for the node's ``model`` parameter (see the module docstring)."""
    if model != DEFAULT_MODEL or in_hub_cache(model):
        return ModelChoice(model)
    from prune2drive_ros.training import shipped_testbed

    testbed = shipped_testbed()
    if testbed is None:
        return ModelChoice(model)  # loading it then fails with the reason and the fix
    return ModelChoice(str(testbed), (
        f"model {DEFAULT_MODEL!r} is not in the local Hugging Face cache; running the shipped test bed "
        f"({testbed}), a small model trained on this package's synthetic street only: its answers fit "
        f"synthetic scenes, not real cameras. For a real model: `hf download {DEFAULT_MODEL}`, or model:=<checkpoint "
        "folder> (DriveMM: see the README)"))


def quiet_progress_bars() -> None:
    """No tqdm bars in a node log (transformers' `Loading weights`, the hub's downloads)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
