# ruff: noqa: E402  (the ROS imports follow the importorskip)
"""The node's parameters against config/drive_vqa.yaml and launch/drive_vqa.launch.py (one truth)."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from conftest import REPO
from rcl_interfaces.msg import ParameterType

from prune2drive_ros.ros.node import DYNAMIC_PARAMETERS, DriveVqaNode, check_parameter

pytestmark = pytest.mark.ros

PARAMS_FILE = REPO / "config" / "drive_vqa.yaml"
LAUNCH_FILE = REPO / "launch" / "drive_vqa.launch.py"

# The parameter table of the node's issue.
ISSUE_TABLE = ["model", "pruning_method", "retain", "view_ratios", "prune_layer", "vision_backend", "engine_dir",
               "device", "dtype", "max_new_tokens", "camera_topics", "image_transport", "qos_reliability",
               "sync_slop_s", "sync_queue_size", "camera_timeout_s", "questions", "question_period_s",
               "publish_kept_tokens", "autostart"]


def yaml_params() -> dict:
    return yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]


def yaml_commented() -> set[str]:
    """Parameters documented as commented-out entries (lists that are unset by default)."""
    return set(re.findall(r"^\s*#\s*([a-z_]+):", PARAMS_FILE.read_text(), flags=re.M))


def launch_dict(name: str) -> dict[str, str]:
    for node in ast.walk(ast.parse(LAUNCH_FILE.read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in the launch file")


@pytest.fixture(scope="module")
def declared():
    """name -> (value, descriptor) as the node declares them, read from a node built without overrides."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = DriveVqaNode("drive_vqa_params", context=ctx)
    try:
        yield {name: (node._param(name), node.describe_parameter(name)) for name in node.parameter_names}
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_the_issue_table_is_declared(declared) -> None:
    assert list(declared) == ISSUE_TABLE


def test_every_parameter_is_in_the_yaml_or_documented_there(declared) -> None:
    params, commented = yaml_params(), yaml_commented()
    missing = [name for name in declared if name not in params and name not in commented]
    assert not missing, f"declared but neither set nor documented in {PARAMS_FILE.name}: {missing}"
    unknown = set(params) - set(declared)
    assert not unknown, f"YAML entries the node does not declare: {unknown}"
    # Only the lists that are unset by default are commented out (ROS YAML has no typed empty list).
    assert {n for n in declared if n not in params} == {"view_ratios", "questions"}


def test_yaml_values_match_the_node_defaults_and_are_valid(declared) -> None:
    for name, value in yaml_params().items():
        default, _ = declared[name]
        assert check_parameter(name, value) is None, name
        assert value == default, f"{name}: YAML {value!r} vs node default {default!r}"
        assert type(value) is type(default), name


def test_the_launch_file_wires_every_parameter(declared) -> None:
    overrides, optional = launch_dict("OVERRIDES"), launch_dict("OPTIONAL_OVERRIDES")
    assert set(overrides) | set(optional) == set(declared)
    assert set(optional) <= yaml_commented() and not set(optional) & set(yaml_params())


def test_descriptors_ranges_and_read_only(declared) -> None:
    for name, (_, descriptor) in declared.items():
        assert descriptor.description, name
        # Only what the node can apply while running is writable; the rest needs a new configure.
        assert descriptor.read_only == (name not in DYNAMIC_PARAMETERS), name
        if descriptor.type in (ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_INTEGER):
            assert descriptor.floating_point_range or descriptor.integer_range, name
    assert set(DYNAMIC_PARAMETERS) == {"retain", "view_ratios", "camera_timeout_s", "questions", "publish_kept_tokens"}


def test_rcl_reads_the_parameter_file() -> None:
    """The YAML as the node receives it from ``--params-file`` (rcl's parser, not PyYAML)."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(PARAMS_FILE)])
    node = DriveVqaNode("drive_vqa_file", context=ctx)
    try:
        for name, value in yaml_params().items():
            assert node._param(name) == value, name
        assert node._param("view_ratios") is None and node._param("questions") is None
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("pruning_method", "prune_everything", "pruning_method must be one of"),
    ("retain", 0.0, "(0, 1]"),
    ("view_ratios", [0.1] * 5, "needs 6 values"),
    ("view_ratios", [0.1, 0.1, 0.1, 0.1, 0.1, 1.5], "(0, 1]"),
    ("vision_backend", "tensorflow", "vision_backend must be one of"),
    ("device", "gpu0", "device must be"),
    ("dtype", "int8", "dtype must be one of"),
    ("camera_topics", ["/a"] * 6, "distinct"),
    ("camera_topics", ["/a", "/b"], "6 non-empty topics"),
    ("image_transport", "theora", "image_transport must be one of"),
    ("qos_reliability", "sometimes", "qos_reliability must be one of"),
    ("sync_slop_s", 0.0, "> 0 s"),
    ("sync_queue_size", 1, ">= 2"),
    ("question_period_s", -1.0, ">= 0"),
    ("questions", ["fine", ""], "non-empty"),
    ("model", " ", "checkpoint"),
])
def test_check_parameter_gives_reasons(name, value, fragment) -> None:
    reason = check_parameter(name, value)
    assert reason is not None and fragment in reason


def test_choices_match_the_libraries() -> None:
    from prune2drive_ros.pruning import PRUNER_NAMES
    from prune2drive_ros.ros import node
    from prune2drive_ros.vlm.backends import FALLBACK_CHAIN

    assert node.PRUNING_METHODS == tuple(PRUNER_NAMES)
    assert node.VISION_BACKENDS == tuple(FALLBACK_CHAIN)


def test_check_parameter_accepts_good_values() -> None:
    assert check_parameter("view_ratios", None) is None
    assert check_parameter("view_ratios", []) is None
    assert check_parameter("device", "cuda:1") is None
    assert check_parameter("retain", 1.0) is None
