"""The VLM runtime (no ROS): model loading, the six-view prompt, vision backends, pruned prefill, decode."""

from prune2drive_ros.vlm.config import RunnerConfig
from prune2drive_ros.vlm.runner import Answer, VLMRunner

__all__ = ["Answer", "RunnerConfig", "VLMRunner"]
