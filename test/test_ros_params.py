# ruff: noqa: E402  (the ROS imports follow the importorskip)
"""The node's parameter table against its declarations, config/drive_vqa.yaml and the launch file; bad
start-up values never end the process; the Humble fallbacks (no post-set callback)."""

from __future__ import annotations

import re

import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from conftest import REPO, shutdown_context
from rcl_interfaces.msg import ParameterType

from prune2drive_ros.ros.node import DriveVqaNode
from prune2drive_ros.settings import DYNAMIC_PARAMETERS, NODE_PARAMETERS
from prune2drive_ros.settings import check as check_parameter

pytestmark = pytest.mark.ros

PARAMS_FILE = REPO / "config" / "drive_vqa.yaml"
LAUNCH_FILE = REPO / "launch" / "drive_vqa.launch.py"

# The parameter table of the node's issue.
ISSUE_TABLE = ["model", "pruning_method", "retain", "view_ratios", "prune_layer", "vision_backend", "engine_dir",
               "device", "dtype", "weights", "max_new_tokens", "camera_topics", "image_transport", "qos_reliability",
               "sync_slop_s", "sync_queue_size", "camera_timeout_s", "questions", "question_period_s",
               "max_answer_age_s", "stream_period_s", "publish_kept_tokens", "autostart"]


def yaml_params() -> dict:
    return yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]


def yaml_commented() -> set[str]:
    """Parameters documented as commented-out entries (lists that are unset by default)."""
    return set(re.findall(r"^\s*#\s*([a-z_]+):", PARAMS_FILE.read_text(), flags=re.M))


def launch_module():
    """The launch file as a module (where launch and launch_ros are installed); the source tree stands
    in for the package's share/ folder."""
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    import importlib.util

    spec = importlib.util.spec_from_file_location("drive_vqa_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.get_package_share_directory = lambda package: str(REPO)
    return module


def launch_arguments() -> dict[str, str]:
    """name -> description of the launch file's arguments, read with launch itself."""
    import launch

    description = launch_module().generate_launch_description()
    return {a.name: a.description for a in description.entities if isinstance(a, launch.actions.DeclareLaunchArgument)}


def launch_parameter_arguments(arguments: dict[str, str]) -> list[str]:
    """The --ros-args parameter arguments that `ros2 launch ... name:=value ...` hands the node."""
    import launch

    module = launch_module()
    context = launch.LaunchContext()
    context.launch_configurations.update(arguments)
    for entity in module.generate_launch_description().entities:
        if isinstance(entity, launch.actions.DeclareLaunchArgument):
            entity.execute(context)  # fills in the defaults of the arguments not given
    (node_action,) = module._node(context)
    node_action._perform_substitutions(context)
    args = []
    for value, is_file in node_action._Node__expanded_parameter_arguments:
        args += ["--params-file" if is_file else "-p", value]
    return args


@pytest.fixture(scope="module")
def declared():
    """name -> (value, descriptor) as the node declares them, read from a node built without overrides."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = DriveVqaNode("drive_vqa_params", context=ctx)
    try:
        yield {name: (node.parameters.value(name), node.describe_parameter(name)) for name in node.parameters.names}
    finally:
        node.destroy_node()
        shutdown_context(ctx)


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


def test_the_launch_file_has_one_argument_per_parameter(declared) -> None:
    arguments = launch_arguments()
    assert set(arguments) == set(declared) | {"params_file", "node_name"}
    for spec in NODE_PARAMETERS:
        assert arguments[spec.param_name].startswith(spec.description), spec.param_name


def test_descriptors_ranges_and_read_only(declared) -> None:
    for name, (_, descriptor) in declared.items():
        assert descriptor.description, name
        # Only what the node can apply while running is writable; the rest needs a restart.
        assert descriptor.read_only == (name not in DYNAMIC_PARAMETERS), name
        if descriptor.type in (ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_INTEGER):
            assert descriptor.floating_point_range or descriptor.integer_range, name
    assert set(DYNAMIC_PARAMETERS) == {"retain", "view_ratios", "camera_timeout_s", "questions", "publish_kept_tokens",
                                       "max_answer_age_s", "stream_period_s"}


def test_rcl_reads_the_parameter_file() -> None:
    """The YAML as the node receives it from ``--params-file`` (rcl's parser, not PyYAML)."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(PARAMS_FILE)])
    node = DriveVqaNode("drive_vqa_file", context=ctx)
    try:
        for name, value in yaml_params().items():
            assert node.parameters.value(name) == value, name
        assert node.parameters.value("view_ratios") is None and node.parameters.value("questions") is None
    finally:
        node.destroy_node()
        shutdown_context(ctx)


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("pruning_method", "prune_everything", "pruning_method must be one of"),
    ("retain", 0.0, "(0, 1]"),
    ("retain", "half", "must be a number"),
    ("prune_layer", 1.5, "must be an integer"),
    ("max_new_tokens", 0, "[1, 4096]"),
    ("view_ratios", [0.1] * 5, "needs 6 values"),
    ("view_ratios", [0.1, 0.1, 0.1, 0.1, 0.1, 1.5], "(0, 1]"),
    ("vision_backend", "tensorflow", "vision_backend must be one of"),
    ("device", "gpu0", "device must be"),
    ("dtype", "int8", "dtype must be one of"),
    ("camera_topics", ["/a"] * 6, "distinct"),
    ("camera_topics", ["/a", "/b"], "6 non-empty topics"),
    ("image_transport", "theora", "image_transport must be one of"),
    ("qos_reliability", "sometimes", "qos_reliability must be one of"),
    ("sync_slop_s", 0.0, "(0, 10]"),
    ("sync_queue_size", 1, "[2, 1000]"),
    ("question_period_s", -1.0, "[0, 86400]"),
    ("questions", ["fine", ""], "non-empty"),
    ("model", " ", "checkpoint"),
])
def test_check_parameter_gives_reasons(name, value, fragment) -> None:
    reason = check_parameter(name, value)
    assert reason is not None and fragment in reason


def test_check_parameter_accepts_good_values() -> None:
    assert check_parameter("view_ratios", None) is None
    assert check_parameter("view_ratios", []) is None
    assert check_parameter("device", "cuda:1") is None
    assert check_parameter("retain", 1.0) is None


def node_with(args: list[str], name: str, *, post_set: bool = True, monkeypatch=None) -> tuple[DriveVqaNode, object]:
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", *args])
    return DriveVqaNode(name, context=ctx), ctx


def close(node, ctx) -> None:
    node.destroy_node()
    shutdown_context(ctx)


@pytest.mark.parametrize(("arg", "expected"), [
    ("retain:=1", 1.0),
    ("sync_slop_s:=1", 1.0),
    ("camera_timeout_s:=2", 2.0),
    ("question_period_s:=0", 0.0),
    ("view_ratios:=[1,1,1,1,1,1]", [1.0] * 6),
])
def test_an_integer_for_a_double_is_taken(arg: str, expected) -> None:
    node, ctx = node_with(["-p", arg], "drive_vqa_int")
    try:
        name = arg.split(":=")[0]
        assert node.parameters.value(name) == expected and type(node.parameters.value(name)) is type(expected)
        assert not node.startup_errors
    finally:
        close(node, ctx)


@pytest.mark.parametrize(("arg", "fragment"), [
    ("retain:=2.0", "retain must be in (0, 1]"),
    ("prune_layer:=-2", "prune_layer must be in [-1, 256]"),
    ("max_new_tokens:=0", "max_new_tokens must be in [1, 4096]"),
    ("retain:=half", "retain must be a number"),
    ("pruning_method:=everything", "pruning_method must be one of"),
    ("view_ratios:=[0.5,0.5]", "view_ratios needs 6 values"),
    ("autostart:=maybe", "autostart must be true or false"),
])
def test_bad_start_up_values_are_reported_and_the_node_stays_up(arg: str, fragment: str, capfd) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    node, ctx = node_with(["-p", arg], "drive_vqa_bad")
    try:
        name = arg.split(":=")[0]
        assert fragment in node.startup_errors[name]
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        err = capfd.readouterr().err
        assert fragment in err and "configure failed" in err
        if name in DYNAMIC_PARAMETERS:
            assert "ros2 param set" in node.startup_errors[name]
        else:
            assert "read-only: restart the node with a corrected value" in node.startup_errors[name]
    finally:
        close(node, ctx)


def test_a_fixed_run_time_parameter_clears_its_start_up_error() -> None:
    from rclpy.parameter import Parameter

    node, ctx = node_with(["-p", "retain:=7.0"], "drive_vqa_fix")
    try:
        assert "retain" in node.startup_errors
        assert node.set_parameters([Parameter("retain", value=0.3)])[0].successful
        assert "retain" not in node.startup_errors and node.parameters.value("retain") == 0.3
    finally:
        close(node, ctx)


def test_run_time_integer_for_a_double(monkeypatch) -> None:
    from rclpy.parameter import Parameter

    node, ctx = node_with([], "drive_vqa_rt_int")
    try:
        result = node.set_parameters([Parameter("retain", value=1)])[0]
        if hasattr(node, "add_pre_set_parameters_callback"):  # Iron and newer
            assert result.successful and node.parameters.value("retain") == 1.0
        else:
            assert not result.successful
    finally:
        close(node, ctx)


def test_without_a_post_set_callback_changes_still_apply(monkeypatch) -> None:
    """Humble's rclpy has no add_post_set_parameters_callback (nor pre-set); the node applies the
    validated values from its on-set callback instead."""
    from types import SimpleNamespace

    from rclpy.node import Node
    from rclpy.parameter import Parameter

    monkeypatch.delattr(Node, "add_post_set_parameters_callback", raising=False)
    monkeypatch.delattr(Node, "add_pre_set_parameters_callback", raising=False)
    node, ctx = node_with([], "drive_vqa_humble")
    applied = []
    try:
        assert node.parameters.apply_on_set
        node.service = SimpleNamespace(update=applied.append)  # what the configured node hands changes to
        assert node.set_parameters([Parameter("retain", value=0.3)])[0].successful
        assert node.set_parameters([Parameter("view_ratios", value=[0.5] * 6)])[0].successful
        assert node.set_parameters([Parameter("questions", value=["Ahead?"])])[0].successful
        assert not node.set_parameters([Parameter("retain", value=3.0)])[0].successful
        assert applied == [{"retain": 0.3}, {"view_ratios": [0.5] * 6}, {"questions": ["Ahead?"]}]
    finally:
        node.service = None
        close(node, ctx)


def test_fake_cameras_without_timer_autostart(monkeypatch) -> None:
    """FakeCameraRig(autostart=False) with Humble's create_timer, which has no autostart argument."""
    from rclpy.node import Node

    from prune2drive_ros.ros.fake_cameras import FakeCameraRig

    original = Node.create_timer

    def humble_create_timer(self, timer_period_sec, callback, callback_group=None, clock=None):
        return original(self, timer_period_sec, callback, callback_group, clock)

    monkeypatch.setattr(Node, "create_timer", humble_create_timer)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    rig = FakeCameraRig("rig_params", context=ctx, autostart=False)
    try:
        assert rig._timer.is_canceled()
        rig.start()
        assert not rig._timer.is_canceled()
    finally:
        rig.destroy_node()
        shutdown_context(ctx)


def test_integers_for_doubles_through_the_launch_file_configure(tiny_model) -> None:
    """`ros2 launch prune2drive_ros drive_vqa.launch.py retain:=1 sync_slop_s:=1 ...`: launch types "1" as an
    integer; the node takes it for the double and configures."""
    from rclpy.lifecycle import TransitionCallbackReturn

    given = {"retain": "1", "sync_slop_s": "1", "camera_timeout_s": "2", "question_period_s": "0",
             "view_ratios": "[1, 1, 1, 1, 1, 1]", "model": str(tiny_model), "vision_backend": "torch",
             "device": "cpu", "dtype": "float32", "max_new_tokens": "2", "autostart": "false"}
    node, ctx = node_with(launch_parameter_arguments({**given, "node_name": "drive_vqa_launch_ints"}),
                          "drive_vqa_launch_ints")
    try:
        assert not node.startup_errors, node.startup_errors
        assert node.parameters.value("retain") == 1.0 and node.parameters.value("sync_slop_s") == 1.0
        assert node.parameters.value("camera_timeout_s") == 2.0 and node.parameters.value("question_period_s") == 0.0
        assert node.parameters.value("view_ratios") == [1.0] * 6 and node.parameters.value("autostart") is False
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    finally:
        node.release()
        close(node, ctx)


def test_bad_values_through_the_launch_file_leave_the_node_up() -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    node, ctx = node_with(launch_parameter_arguments({"retain": "2.0", "prune_layer": "-2", "max_new_tokens": "0",
                                                      "pruning_method": "[oops", "autostart": "false",
                                                      "node_name": "drive_vqa_launch_bad"}), "drive_vqa_launch_bad")
    try:
        assert set(node.startup_errors) == {"retain", "prune_layer", "max_new_tokens", "pruning_method"}
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    finally:
        close(node, ctx)
