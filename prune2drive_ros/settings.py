"""Every setting of the runtime and the node, defined once (no torch, no ROS).

One ``Setting`` per entry of ``SETTINGS``: its type, its one default, its range or choices and its
description. Everything else is built from this table:

- ``RunnerConfig`` (``vlm/config.py``): one field per setting with ``runner=True``;
- the node's parameters (``ros/node.py`` declares every setting with ``node=True``, under ``param``),
  ``config/drive_vqa.yaml`` and the arguments of ``launch/drive_vqa.launch.py``;
- the command-line flags of ``eval``, ``optimize``, ``demo``, ``bench`` and ``study`` (``add_arguments``:
  every setting with ``cli=True``);
- the README's parameter table (``readme_table``).

Adding a setting is one entry here. ``test/test_settings.py`` fails when an entry point states a
default of its own. Regenerate the files built from the table after a change::

    python -m prune2drive_ros.settings yaml > config/drive_vqa.yaml
    python -m prune2drive_ros.settings readme     # the table for README.md's "Parameters" section
"""

from __future__ import annotations

import argparse
import array
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prune2drive_ros.cameras import CAMERA_NAMES, NUM_CAMERAS, default_topics

# -- names and constants the settings refer to --------------------------------------------------

PRUNING_METHODS = ("none", "tfps", "divprune", "fastv", "random", "pool", "mvpruner")
"""Every pruner ``pruning.get_pruner`` knows, in the order tables and plots list them."""
DEFAULT_PRUNE_LAYER = 1
"""Prune2Drive's K: T-FPS selects on the output of the first decoder layer (docs/pruning.md)."""
METHOD_PRUNE_LAYER = {"divprune": 0}
"""Methods defined at another layer: DivPrune selects on the vision embeddings, before the LLM."""
VISION_BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
"""``auto``: TensorRT where it can run (CUDA and TensorRT 10 present), else torch. The others fall back
along tensorrt -> onnxruntime -> torch."""
FALLBACK_CHAIN = VISION_BACKENDS[1:]
DTYPES = ("auto", "float32", "float16", "bfloat16")
WEIGHT_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8", "int4", "fp8")
"""Language-model weights: ``auto`` keeps the model dtype; int8 / int4 / fp8 are weight-only (vlm/quantize.py)."""
CUDA_GRAPH_MODES = ("auto", "on", "off")
COMPILE_MODES = ("auto", "on", "off")
TRANSPORTS = ("compressed", "raw")
RELIABILITIES = ("best_effort", "reliable")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"

# DriveMM's visual token geometry: each camera view is one 384 x 384 tile cut into 14-px patches.
VIEW_SIZE = 384
PATCH_SIZE = 14
GRID = VIEW_SIZE // PATCH_SIZE  # 27
PATCHES_PER_VIEW = GRID * GRID  # 729; the prompt adds one image_newline token per view

MAX_QUESTION_CHARS = 2000
"""Longer questions are dropped at the door; the runner also bounds the prompt in tokens."""
ERROR_FACTOR = 3.0
"""A camera silent for camera_timeout_s is WARN, for ERROR_FACTOR times that ERROR."""

# Value kinds (the ROS parameter types, rcl_interfaces/ParameterType without the prefix).
STRING, DOUBLE, INTEGER, BOOL, DOUBLE_ARRAY, STRING_ARRAY = (
    "string", "double", "integer", "bool", "double_array", "string_array")


def prune_layer_for(method: str, prune_layer: int = -1) -> int:
    """The decoder layer ``method`` prunes at: ``prune_layer`` when given (>= 0), else the method's own."""
    if prune_layer >= 0:
        return prune_layer
    return METHOD_PRUNE_LAYER.get(method, DEFAULT_PRUNE_LAYER)


@dataclass(frozen=True)
class Setting:
    name: str
    """The ``RunnerConfig`` field and the dest of the command-line flag."""
    kind: str
    default: Any
    """None: unset (a list that a ROS parameter file cannot type when empty)."""
    description: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """``low`` itself is excluded (ROS ranges are closed, so the descriptor shows [low, high])."""
    rule: Callable[[Any], str | None] | None = None
    """Further check of a value that has the right type and range; returns the reason it is bad."""
    runner: bool = False
    """A ``RunnerConfig`` field."""
    node: bool = False
    """A parameter of the node."""
    cli: bool = False
    """A flag of the commands that load a model (``--max-new-tokens`` for ``max_new_tokens``)."""
    dynamic: bool = False
    """As a node parameter: applied while the node runs; all others are read-only (take a restart)."""
    param: str = ""
    """The node parameter's name when it differs from ``name``."""
    flag: str = ""
    """The command-line flag when it differs from ``--name-with-dashes``."""
    example: str = ""
    """For an unset node parameter: the commented-out example line of the YAML file."""

    @property
    def param_name(self) -> str:
        return self.param or self.name

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

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


def _layers_text() -> str:
    own = ", ".join(f"{layer} for {method}" for method, layer in METHOD_PRUNE_LAYER.items())
    return f"-1 = the method's own layer ({own}, {DEFAULT_PRUNE_LAYER} for the others)"


SETTINGS: tuple[Setting, ...] = (
    # -- the runner: model and pruning ----------------------------------------------------------
    Setting("model", STRING, DEFAULT_MODEL,
            "checkpoint: transformers LLaVA-OneVision folder or hub id, or a DriveMM (LLaVA-NeXT) folder; the node "
            "falls back to the shipped test bed when this default is not in the local Hugging Face cache",
            rule=_check_model, runner=True, node=True),
    Setting("pruning", STRING, "tfps", "visual token pruning method", choices=PRUNING_METHODS,
            runner=True, node=True, cli=True, param="pruning_method"),
    Setting("retain", DOUBLE, 0.1, "fraction of visual tokens kept per view", low=0.0, high=1.0, low_open=True,
            runner=True, node=True, cli=True, dynamic=True),
    Setting("view_ratios", DOUBLE_ARRAY, None,
            "six per-camera kept fractions in DriveMM camera order; unset or empty = use retain",
            low=0.0, high=1.0, low_open=True, rule=_check_view_ratios, runner=True, node=True, cli=True,
            dynamic=True, example="[0.1, 0.1, 0.1, 0.1, 0.1, 0.1]"),
    Setting("prune_layer", INTEGER, -1, f"decoder layer K at which tokens are pruned (0 = before the LLM); "
            f"{_layers_text()}", low=-1, high=256, runner=True, node=True, cli=True),
    Setting("pruning_seed", INTEGER, 0, "seed of the random pruner's draw (it keeps the same positions in every "
            "frame); the other methods ignore it", low=0, high=2**31 - 1, runner=True),
    Setting("vision_backend", STRING, "auto",
            "vision encoder backend; auto = tensorrt where it runs, else torch; tensorrt falls back "
            "tensorrt -> onnxruntime -> torch", choices=VISION_BACKENDS, runner=True, node=True, cli=True),
    Setting("engine_dir", STRING, "", "TensorRT / ONNX engine cache; empty = ~/.cache/prune2drive/engines",
            runner=True, node=True, cli=True),
    Setting("strict_backend", BOOL, False, "fail instead of falling back to another vision backend", runner=True),
    Setting("device", STRING, "auto", "auto | cpu | cuda | cuda:N (auto: CUDA when available)", rule=_check_device,
            runner=True, node=True, cli=True),
    Setting("dtype", STRING, "auto", "model dtype; auto = bf16 (fp16 without bf16) on CUDA, fp32 on CPU",
            choices=DTYPES, runner=True, node=True, cli=True),
    Setting("weights", STRING, "auto", "language-model weights: auto = the model dtype; int8 | int4 | fp8 are "
            "weight-only quantized at start (cached in engine_dir), the vision tower stays in the model dtype",
            choices=WEIGHT_CHOICES, runner=True, node=True, cli=True),
    Setting("max_new_tokens", INTEGER, 64, "answer length cap in tokens", low=1, high=4096,
            runner=True, node=True, cli=True),
    Setting("temperature", DOUBLE, 0.0, "sampling temperature; 0 = greedy", low=0.0, high=100.0, runner=True),
    Setting("top_p", DOUBLE, 1.0, "nucleus sampling mass", low=0.0, high=1.0, low_open=True, runner=True),
    Setting("seed", INTEGER, 0, "seed of the sampler", low=0, high=2**31 - 1, runner=True),
    Setting("max_question_tokens", INTEGER, 512, "longest question in tokens the runner accepts",
            low=1, high=32768, runner=True),
    Setting("max_image_side", INTEGER, 0, "largest image side accepted; 0 = the preprocessing module's bound",
            low=0, high=65536, runner=True),
    Setting("cuda_graphs", STRING, "auto", "auto: capture on CUDA, eager elsewhere; off: always eager; on: like "
            "auto, but a failed capture raises", choices=CUDA_GRAPH_MODES, runner=True),
    Setting("compile", STRING, "auto", "torch.compile (inductor) of the layer functions before capture; auto: on "
            "CUDA with Triton, uncompiled if compiling fails; on: everywhere (CPU: C++), a failure raises; off: never",
            choices=COMPILE_MODES, runner=True),
    # -- the node -------------------------------------------------------------------------------
    Setting("camera_topics", STRING_ARRAY, default_topics("compressed"),
            "six image topics in DriveMM camera order; left at these defaults they follow image_transport "
            "(raw -> /CAM_*/image_rect)", rule=_check_camera_topics, node=True),
    Setting("image_transport", STRING, "compressed", "sensor_msgs/CompressedImage (JPEG/PNG) or sensor_msgs/Image",
            choices=TRANSPORTS, node=True),
    Setting("qos_reliability", STRING, "best_effort", "camera subscription reliability", choices=RELIABILITIES,
            node=True),
    Setting("sync_slop_s", DOUBLE, 0.08, "max stamp spread of a synchronized set in s; nuScenes cameras fire over "
            "~50 ms", low=0.0, high=10.0, low_open=True, node=True),
    Setting("sync_queue_size", INTEGER, 10, "synchronizer queue per camera (>= 2: a set is confirmed by the frame "
            "after it)", low=2, high=1000, node=True),
    Setting("camera_timeout_s", DOUBLE, 1.0, f"silence in s before a camera is WARN in /diagnostics (ERROR after "
            f"{ERROR_FACTOR:g}x)", low=0.0, high=3600.0, low_open=True, node=True, dynamic=True),
    Setting("questions", STRING_ARRAY, None, "standing questions asked every question_period_s; unset = none",
            rule=_check_questions, node=True, dynamic=True,
            example='["What are the important objects in the current scene?"]'),
    Setting("question_period_s", DOUBLE, 0.0, "period of the standing questions in s; 0 = off", low=0.0,
            high=86400.0, node=True),
    Setting("max_answer_age_s", DOUBLE, 0.0, "drop a question (reason stale) when the newest camera set is older "
            "than this in s as its inference would start; 0 = off", low=0.0, high=3600.0, node=True, dynamic=True),
    Setting("stream_period_s", DOUBLE, 0.1, "least time in s between two /vlm/answer_stream messages of one "
            "question (the last, done, always goes out); 0 = every decode step", low=0.0, high=60.0, node=True,
            dynamic=True),
    Setting("publish_kept_tokens", BOOL, False, "publish the kept-token mosaic on /vlm/kept_tokens", node=True,
            dynamic=True),
    Setting("autostart", BOOL, True, "configure and activate at start-up", node=True),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
RUNNER_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.runner)
NODE_PARAMETERS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.node)
BY_PARAM: dict[str, Setting] = {s.param_name: s for s in NODE_PARAMETERS}
DYNAMIC_PARAMETERS: tuple[str, ...] = tuple(s.param_name for s in NODE_PARAMETERS if s.dynamic)
CLI_SETTINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.cli)


def default(name: str) -> Any:
    """The one default of a setting (by setting or node parameter name)."""
    spec = BY_NAME.get(name) or BY_PARAM[name]
    return list(spec.default) if isinstance(spec.default, list) else spec.default


# -- checking values ------------------------------------------------------------------------------

_KIND_TEXT = {DOUBLE: "a number", INTEGER: "an integer", BOOL: "true or false", STRING: "a string",
              DOUBLE_ARRAY: "a list of numbers", STRING_ARRAY: "a list of strings"}


def _spec(name: str) -> Setting | None:
    return BY_PARAM.get(name) or BY_NAME.get(name)


def coerce(name: str, value: Any) -> Any:
    """``value`` in the setting's own type where that loses nothing: an integer for a double
    (``retain:=1``), integers in a double list, a tuple for a list. Anything else is returned unchanged."""
    spec = _spec(name)
    if spec is None:
        return value
    if spec.kind == DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.kind == DOUBLE_ARRAY and isinstance(value, (list, tuple, array.array)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    if spec.kind == STRING_ARRAY and isinstance(value, tuple):
        return list(value)
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


def check(name: str, value: Any) -> str | None:
    """Why ``value`` is invalid for the setting (or node parameter) ``name``, or None. Coerce first;
    None is valid for settings that are unset by default."""
    spec = _spec(name)
    if spec is None:
        return f"unknown setting {name!r}"
    label = name
    if value is None:
        return None if spec.default is None else f"{label} must be set"
    if isinstance(value, array.array):  # how rclpy hands over double arrays
        value = list(value)
    if not _type_ok(spec.kind, value):
        return f"{label} must be {_KIND_TEXT[spec.kind]}, got {value!r} ({type(value).__name__})"
    if spec.kind in (DOUBLE_ARRAY, STRING_ARRAY):
        value = list(value)
    if spec.choices and value not in spec.choices:
        return f"{label} must be one of {' | '.join(spec.choices)}, got {value!r}"
    if spec.low is not None:
        numbers = value if isinstance(value, list) else [value]
        for number in numbers:
            too_low = number <= spec.low if spec.low_open else number < spec.low
            if not math.isfinite(number) or too_low or number > spec.high:
                what = "each value of " + label if isinstance(value, list) else label
                return f"{what} must be in {spec.bounds_text()}, got {value!r}"
    if spec.rule is not None:
        return spec.rule(value)
    return None


# -- command-line flags -----------------------------------------------------------------------------

def parse_view_ratios(values: Sequence[str] | str | None) -> list[float] | None:
    """Six ratios in (0, 1] from ``0.1 0.2 ...`` or ``0.1,0.2,...``; None when not given."""
    if values is None:
        return None
    text = " ".join(values) if not isinstance(values, str) else values
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        ratios = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--view-ratios must be numbers, got {text!r}") from None
    if len(ratios) != NUM_CAMERAS or not all(0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"--view-ratios needs {NUM_CAMERAS} values in (0, 1], one per camera; got {text!r}")
    return ratios


def _flag_type(spec: Setting) -> Callable[[str], Any]:
    convert = {DOUBLE: float, INTEGER: int}.get(spec.kind, str)

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{spec.name} must be {_KIND_TEXT[spec.kind]}, got {text!r}") from None
        reason = check(spec.name, value)
        if reason is not None:
            raise argparse.ArgumentTypeError(reason)
        return value

    parse.__name__ = spec.kind  # argparse names the type in its messages
    return parse


def _help(spec: Setting) -> str:
    shown = "unset" if spec.default is None else ('""' if spec.default == "" else spec.default)
    return f"{spec.description} (default {shown})".replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: Iterable[str] = CLI_SETTINGS,
                  **overrides: Any) -> None:
    """One flag per setting in ``names`` (``--max-new-tokens``), with the setting's default and checks.

    ``overrides`` are extra ``add_argument`` keywords per setting name (e.g. ``help``), never a default.
    """
    for name in names:
        spec = BY_NAME[name]
        if not spec.cli:
            raise ValueError(f"{name} is not a command-line setting")
        kwargs: dict[str, Any] = {"dest": spec.name, "help": _help(spec)}
        if spec.kind == DOUBLE_ARRAY:
            kwargs.update(nargs="+", metavar="R", default=spec.default)
        elif spec.kind == BOOL:
            kwargs.update(action=argparse.BooleanOptionalAction, default=spec.default)
        else:
            kwargs.update(type=_flag_type(spec), default=spec.default)
            if spec.choices:
                kwargs["metavar"] = "{" + ",".join(spec.choices) + "}"
        extra = dict(overrides.get(name, {}))
        if "default" in extra:
            raise ValueError(f"{name}: a flag takes the setting's one default")
        kwargs.update(extra)
        parser.add_argument(spec.flag_name, **kwargs)


def from_args(args: argparse.Namespace, names: Iterable[str] = CLI_SETTINGS) -> dict[str, Any]:
    """The settings named by ``names`` from parsed flags (``view_ratios`` parsed into six floats)."""
    out = {}
    for name in names:
        value = getattr(args, name)
        if name == "view_ratios":
            value = parse_view_ratios(value) if value is not None and not _all_floats(value) else value
        out[name] = value
    return out


def _all_floats(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value)


# -- the node's parameter file and the README table --------------------------------------------------

def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _comment(spec: Setting) -> str:
    parts = [spec.description]
    if spec.choices:
        parts.append(" | ".join(spec.choices))
    if spec.low is not None:
        parts.append(f"range {spec.bounds_text()}")
    parts.append("run-time changeable" if spec.dynamic else "read-only")
    return "; ".join(parts)


def render_yaml() -> str:
    """config/drive_vqa.yaml, from the table."""
    lines = [
        "# Parameters of drive_vqa_node. Generated from prune2drive_ros/settings.py; regenerate with",
        "#   python -m prune2drive_ros.settings yaml > config/drive_vqa.yaml",
        "# Load with:",
        "#   ros2 run prune2drive_ros drive_vqa_node --ros-args --params-file config/drive_vqa.yaml",
        "# Launch arguments of drive_vqa.launch.py override the matching entries here.",
        "/**:",
        "  ros__parameters:",
    ]
    for spec in NODE_PARAMETERS:
        lines.append(f"    # {_comment(spec)}")
        if spec.default is None:
            # ROS parameter files cannot type an empty list, so unset lists stay commented out.
            lines.append(f"    # {spec.param_name}: {spec.example}")
        elif isinstance(spec.default, list):
            lines.append(f"    {spec.param_name}:")
            lines += [f"      - {item}" for item in spec.default]
        else:
            lines.append(f"    {spec.param_name}: {_yaml_value(spec.default)}")
    return "\n".join(lines) + "\n"


_README_KINDS = {STRING: "string", DOUBLE: "double", INTEGER: "int", BOOL: "bool", DOUBLE_ARRAY: "double[]",
                 STRING_ARRAY: "string[]"}


def _readme_default(spec: Setting) -> str:
    if spec.default is None:
        return "unset"
    if isinstance(spec.default, list):
        return "`" + "`, `".join(spec.default) + "`"
    if isinstance(spec.default, bool):
        return f"`{str(spec.default).lower()}`"
    return f"`{spec.default}`" if spec.default != "" else '`""`'


def readme_table() -> str:
    """The README's parameter table (a test keeps the README's copy equal to it)."""
    lines = ["| name | type | default | meaning |", "|---|---|---|---|"]
    for spec in NODE_PARAMETERS:
        kind = _README_KINDS[spec.kind]
        if spec.low is not None:
            kind += f" {spec.bounds_text()}"
        kind += ", run-time" if spec.dynamic else ", read-only"
        meaning = spec.description.replace("|", "\\|")
        if spec.choices:
            meaning += ": " + " \\| ".join(f"`{c}`" for c in spec.choices)
        lines.append(f"| `{spec.param_name}` | {kind} | {_readme_default(spec)} | {meaning} |")
    return "\n".join(lines) + "\n"


def runner_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``RunnerConfig`` keywords from node parameter values (keyed by parameter name)."""
    out = {}
    for spec in RUNNER_SETTINGS:
        if spec.node and spec.param_name in values:
            out[spec.name] = values[spec.param_name]
    return out


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "yaml":
        sys.stdout.write(render_yaml())
    elif what == "readme":
        sys.stdout.write(readme_table())
    else:
        sys.exit("usage: python -m prune2drive_ros.settings yaml|readme")
