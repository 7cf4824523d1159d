"""The VLM runtime (no ROS): model loading, the six-view prompt, vision backends, pruned prefill, decode.

``RunnerConfig`` and ``RunnerInfo`` import without torch; ``VLMRunner`` and ``Answer`` load torch when
first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prune2drive_ros.vlm.config import RunnerConfig
from prune2drive_ros.vlm.info import RunnerInfo

if TYPE_CHECKING:
    from prune2drive_ros.vlm.runner import Answer, VLMRunner

__all__ = ["Answer", "RunnerConfig", "RunnerInfo", "VLMRunner"]


def __getattr__(name: str) -> Any:
    if name in ("Answer", "VLMRunner"):
        from prune2drive_ros.vlm import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
