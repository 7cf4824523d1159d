"""The parameters of ``drive_vqa_node``: one table, no ROS.

``PARAMETERS`` is the only place a parameter is defined. It feeds

- the node's declarations (type, default, range, read-only, description),
- the checks of start-up values and of run-time changes (``check_parameter``),
- ``config/drive_vqa.yaml`` (``render_yaml``; a test keeps the file equal to it), and
- the arguments of ``launch/drive_vqa.launch.py``.

Regenerate the parameter file after changing the table::

    python -m prune2drive_ros.ros.parameters > config/drive_vqa.yaml
"""

from __future__ import annotations

import array
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prune2drive_ros.cameras import CAMERA_NAMES, NUM_CAMERAS, default_topics

# Copies of prune2drive_ros.pruning.PRUNER_NAMES and vlm.backends.FALLBACK_CHAIN (a test keeps them equal):
# importing those pulls in torch, and the node should be up and answering lifecycle calls in a blink.
PRUNING_METHODS = ("none", "tfps", "divprune", "fastv", "random", "pool", "mvpruner")
VISION_BACKENDS = ("tensorrt", "onnxruntime", "torch")
DTYPES = ("auto", "float32", "float16", "bfloat16")
TRANSPORTS = ("compressed", "raw")
RELIABILITIES = ("best_effort", "reliable")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

MAX_QUESTION_CHARS = 2000
"""Longer questions are dropped at the door; the runner also bounds the prompt in tokens."""
ERROR_FACTOR = 3.0
"""A camera silent for camera_timeout_s is WARN, for ERROR_FACTOR times that ERROR."""

# ROS parameter kinds (names follow rcl_interfaces/ParameterType without the prefix).
STRING, DOUBLE, INTEGER, BOOL, DOUBLE_ARRAY, STRING_ARRAY = (
    "string", "double", "integer", "bool", "double_array", "string_array")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str
    default: Any
    """None: unset by default (a list that a ROS parameter file cannot type when empty)."""
    description: str
    dynamic: bool = False
    """Applied while the node runs; every other parameter is read-only (takes a restart)."""
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """``low`` itself is excluded (ROS ranges are closed, so the descriptor shows [low, high])."""
    rule: Callable[[Any], str | None] | None = None
    """Further check of a value that has the right type and range; returns the reason it is bad."""
    example: str = ""
    """For an unset parameter: the commented-out example line of the YAML file."""

    def bounds_text(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


def _check_model(value: str) -> str | None:
    return None if value.strip() else "model must name a checkpoint folder or hub id"


def _check_device(value: str) -> str | None:
    return None if DEVICE_PATTERN.match(value) else f"device must be auto, cpu, cuda or cuda:N, got {value!r}"


def _check_view_ratios(value: list[float]) -> str | None:
    if value and len(value) != NUM_CAMERAS:
        return (f"view_ratios needs {NUM_CAMERAS} values in camera order ({', '.join(CAMERA_NAMES)}), "
                f"got {len(value)}")
    return None


def _check_camera_topics(value: list[str]) -> str | None:
    if len(value) != NUM_CAMERAS or not all(t.strip() for t in value):
        return f"camera_topics needs {NUM_CAMERAS} non-empty topics in camera order, got {value}"
    if len(set(value)) != NUM_CAMERAS:
        return f"camera_topics must be distinct, got {value}"
    return None


def _check_questions(value: list[str]) -> str | None:
    for question in value:
        if not question.strip() or len(question) > MAX_QUESTION_CHARS:
            return f"standing questions must be non-empty and at most {MAX_QUESTION_CHARS} characters"
    return None


def _one_of(choices: Sequence[str]) -> str:
    return " | ".join(choices)


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("model", STRING, "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
              "checkpoint: transformers LLaVA-OneVision folder or hub id, or a DriveMM (LLaVA-NeXT) folder",
              rule=_check_model),
    ParamSpec("pruning_method", STRING, "tfps", "visual token pruning method", choices=PRUNING_METHODS),
    ParamSpec("retain", DOUBLE, 0.1, "fraction of visual tokens kept per view", dynamic=True,
              low=0.0, high=1.0, low_open=True),
    ParamSpec("view_ratios", DOUBLE_ARRAY, None,
              "six per-camera kept fractions in DriveMM camera order; unset or empty = use retain", dynamic=True,
              low=0.0, high=1.0, low_open=True, rule=_check_view_ratios,
              example="[0.1, 0.1, 0.1, 0.1, 0.1, 0.1]"),
    ParamSpec("prune_layer", INTEGER, 1, "decoder layer K at which tokens are pruned (0 = before the LLM)",
              low=0, high=256),
    ParamSpec("vision_backend", STRING, "tensorrt",
              "vision encoder backend; falls back tensorrt -> onnxruntime -> torch", choices=VISION_BACKENDS),
    ParamSpec("engine_dir", STRING, "", "TensorRT / ONNX engine cache; empty = ~/.cache/prune2drive/engines"),
    ParamSpec("device", STRING, "auto", "auto | cpu | cuda | cuda:N", rule=_check_device),
    ParamSpec("dtype", STRING, "auto", "model dtype", choices=DTYPES),
    ParamSpec("max_new_tokens", INTEGER, 64, "answer length cap in tokens", low=1, high=4096),
    ParamSpec("camera_topics", STRING_ARRAY, default_topics("compressed"),
              "six image topics in DriveMM camera order; left at these defaults they follow image_transport "
              "(raw -> /CAM_*/image_rect)", rule=_check_camera_topics),
    ParamSpec("image_transport", STRING, "compressed",
              "sensor_msgs/CompressedImage (JPEG/PNG) or sensor_msgs/Image", choices=TRANSPORTS),
    ParamSpec("qos_reliability", STRING, "best_effort", "camera subscription reliability", choices=RELIABILITIES),
    ParamSpec("sync_slop_s", DOUBLE, 0.08,
              "max stamp spread of a synchronized set in s; nuScenes cameras fire over ~50 ms",
              low=0.0, high=10.0, low_open=True),
    ParamSpec("sync_queue_size", INTEGER, 10,
              "synchronizer queue per camera (>= 2: a set is confirmed by the frame after it)", low=2, high=1000),
    ParamSpec("camera_timeout_s", DOUBLE, 1.0,
              f"silence in s before a camera is WARN in /diagnostics (ERROR after {ERROR_FACTOR:g}x)", dynamic=True,
              low=0.0, high=3600.0, low_open=True),
    ParamSpec("questions", STRING_ARRAY, None, "standing questions asked every question_period_s; unset = none",
              dynamic=True, rule=_check_questions, example='["What are the important objects in the current scene?"]'),
    ParamSpec("question_period_s", DOUBLE, 0.0, "period of the standing questions in s; 0 = off",
              low=0.0, high=86400.0),
    ParamSpec("publish_kept_tokens", BOOL, False, "publish the kept-token mosaic on /vlm/kept_tokens", dynamic=True),
    ParamSpec("autostart", BOOL, True, "configure and activate at start-up"),
)

BY_NAME: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}
DYNAMIC_PARAMETERS: tuple[str, ...] = tuple(spec.name for spec in PARAMETERS if spec.dynamic)

_NUMBER_KINDS = {DOUBLE: "a number", INTEGER: "an integer", BOOL: "true or false", STRING: "a string",
                 DOUBLE_ARRAY: "a list of numbers", STRING_ARRAY: "a list of strings"}


def coerce(name: str, value: Any) -> Any:
    """``value`` in the parameter's own type where that loses nothing: an integer for a double
    (``retain:=1``), integers in a double list. Anything else is returned unchanged."""
    spec = BY_NAME.get(name)
    if spec is None:
        return value
    if spec.kind == DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.kind == DOUBLE_ARRAY and isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return value


def _type_ok(kind: str, value: Any) -> bool:
    if kind == STRING:
        return isinstance(value, str)
    if kind == DOUBLE:
        return isinstance(value, float)
    if kind == INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    items = value if isinstance(value, (list, tuple)) else None
    if kind == DOUBLE_ARRAY:
        return items is not None and all(isinstance(v, float) for v in items)
    if kind == STRING_ARRAY:
        return items is not None and all(isinstance(v, str) for v in items)
    return False


def check_parameter(name: str, value: Any) -> str | None:
    """Why ``value`` is invalid for ``name`` (already coerced), or None. None is valid for unset parameters."""
    spec = BY_NAME.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    if value is None:
        return None if spec.default is None else f"{name} must be set"
    if isinstance(value, array.array):  # how rclpy hands over double arrays
        value = list(value)
    if not _type_ok(spec.kind, value):
        return f"{name} must be {_NUMBER_KINDS[spec.kind]}, got {value!r} ({type(value).__name__})"
    if spec.kind in (DOUBLE_ARRAY, STRING_ARRAY):
        value = list(value)
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {_one_of(spec.choices)}, got {value!r}"
    if spec.low is not None:
        numbers = value if isinstance(value, list) else [value]
        for number in numbers:
            too_low = number <= spec.low if spec.low_open else number < spec.low
            if not math.isfinite(number) or too_low or number > spec.high:
                what = "each value of " + name if isinstance(value, list) else name
                return f"{what} must be in {spec.bounds_text()}, got {value!r}"
    if spec.rule is not None:
        return spec.rule(value)
    return None


# -- the parameter file ---------------------------------------------------------------------------

def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _comment(spec: ParamSpec) -> str:
    parts = [spec.description]
    if spec.choices:
        parts.append(_one_of(spec.choices))
    if spec.low is not None:
        parts.append(f"range {spec.bounds_text()}")
    parts.append("run-time changeable" if spec.dynamic else "read-only")
    return "; ".join(parts)


def render_yaml() -> str:
    """config/drive_vqa.yaml, from the table."""
    lines = [
        "# Parameters of drive_vqa_node. Generated from prune2drive_ros/ros/parameters.py; regenerate with",
        "#   python -m prune2drive_ros.ros.parameters > config/drive_vqa.yaml",
        "# Load with:",
        "#   ros2 run prune2drive_ros drive_vqa_node --ros-args --params-file config/drive_vqa.yaml",
        "# Launch arguments of drive_vqa.launch.py override the matching entries here.",
        "/**:",
        "  ros__parameters:",
    ]
    for spec in PARAMETERS:
        lines.append(f"    # {_comment(spec)}")
        if spec.default is None:
            # ROS parameter files cannot type an empty list, so unset lists stay commented out.
            lines.append(f"    # {spec.name}: {spec.example}")
        elif isinstance(spec.default, list):
            lines.append(f"    {spec.name}:")
            lines += [f"      - {item}" for item in spec.default]
        else:
            lines.append(f"    {spec.name}: {_yaml_value(spec.default)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
