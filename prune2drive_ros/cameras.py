"""The nuScenes camera rig: names, order, topics and frame ids.

This module is the single source of truth for the six cameras. DriveMM was trained with the views
in this order (front, front-left, front-right, back, back-left, back-right), so the prompt, the
pruning budgets, the converter and the node all index cameras by position in ``CAMERAS``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Camera:
    name: str
    """nuScenes channel name, e.g. ``CAM_FRONT``."""
    label: str
    """How the DriveMM prompt refers to the view."""
    frame_id: str
    """TF frame of the optical sensor."""
    fire_offset_ms: float
    """Typical delay after the LiDAR sweep stamp at which the camera exposes (nuScenes rig)."""

    @property
    def compressed_topic(self) -> str:
        return f"/{self.name}/image_rect_compressed"

    @property
    def raw_topic(self) -> str:
        return f"/{self.name}/image_rect"

    @property
    def info_topic(self) -> str:
        return f"/{self.name}/camera_info"


CAMERAS: tuple[Camera, ...] = (
    Camera("CAM_FRONT", "front view", "cam_front", 15.0),
    Camera("CAM_FRONT_LEFT", "front left view", "cam_front_left", 7.0),
    Camera("CAM_FRONT_RIGHT", "front right view", "cam_front_right", 22.0),
    Camera("CAM_BACK", "back view", "cam_back", 40.0),
    Camera("CAM_BACK_LEFT", "back left view", "cam_back_left", 49.0),
    Camera("CAM_BACK_RIGHT", "back right view", "cam_back_right", 31.0),
)

CAMERA_NAMES: tuple[str, ...] = tuple(c.name for c in CAMERAS)
NUM_CAMERAS = len(CAMERAS)

QUESTION_TOPIC = "/vlm/question"
ANSWER_TOPIC = "/vlm/answer"
ANSWER_INFO_TOPIC = "/vlm/answer_info"
"""One JSON std_msgs/String per question: answered (with id, question, frame stamp, timings) or dropped (reason)."""
ANSWER_STREAM_TOPIC = "/vlm/answer_stream"
"""Partial answers while they decode, JSON std_msgs/String: id, text so far, tokens, done."""
CANCEL_TOPIC = "/vlm/cancel"
"""std_msgs/String: question ids (``12`` or ``12,13``) or ``all``."""
KEPT_TOKENS_TOPIC = "/vlm/kept_tokens"
DIAGNOSTICS_TOPIC = "/diagnostics"


def default_topics(transport: str = "compressed") -> list[str]:
    """Default image topics in camera order for ``compressed`` or ``raw`` transport."""
    if transport == "compressed":
        return [c.compressed_topic for c in CAMERAS]
    if transport == "raw":
        return [c.raw_topic for c in CAMERAS]
    raise ValueError(f"image transport must be 'compressed' or 'raw', got {transport!r}")


def camera_index(name: str) -> int:
    """Position of a camera in DriveMM order; raises ValueError for an unknown name."""
    try:
        return CAMERA_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown camera {name!r}; expected one of {', '.join(CAMERA_NAMES)}") from None
