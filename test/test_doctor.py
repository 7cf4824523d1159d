"""`prune2drive doctor` flags a too-old torch, an unsupported TensorRT and the wrong discovery setting."""

from __future__ import annotations

import importlib.metadata

import pytest
from conftest import run_cli

from prune2drive_ros.discovery import discovery_problem, localhost_discovery_env, ros_distro
from prune2drive_ros.doctor import tensorrt_cuda_problem, torch_problem


def test_distro_from_environment_or_the_rclpy_wheels() -> None:
    assert ros_distro({"ROS_DISTRO": "humble"}) == "humble"
    found = ros_distro({})
    # This venv carries the registry's rclpy wheels: Kilted (ros-rclpy 9) or Jazzy (ros-jazzy-rclpy).
    major = int(importlib.metadata.version("ros-rclpy").split(".")[0])
    assert found == {7: "jazzy", 9: "kilted"}[major]


@pytest.mark.parametrize(("distro", "env", "problem"), [
    ("humble", {"ROS_LOCALHOST_ONLY": "1"}, None),
    ("humble", {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, "no effect on humble"),
    ("humble", {}, "ROS_LOCALHOST_ONLY=1"),
    ("jazzy", {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, None),
    ("kilted", {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, None),
    ("jazzy", {}, "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"),
    ("kilted", {"ROS_LOCALHOST_ONLY": "1"}, "deprecated"),
])
def test_discovery_setting_per_distro(distro, env, problem) -> None:
    found = discovery_problem(distro, env)
    assert (found is None) if problem is None else (problem in found)
    # What the tests and the demo set is what the check accepts.
    assert discovery_problem(distro, localhost_discovery_env(distro)) is None


def test_torch_floor_follows_transformers_metadata() -> None:
    tf = importlib.metadata.version("transformers")
    assert torch_problem("2.13.0+cpu", tf) is None
    assert torch_problem("2.8.0a0+5228986c39.nv25.05", tf) is None  # a Jetson build counts as its release
    assert "torch >= 2.6" in torch_problem("2.4.1", None)
    # transformers' own [torch] extra names the floor (2.6 from 5.20 on, 2.4 in 5.2-5.14).
    floor = [r for r in importlib.metadata.requires("transformers") if r.startswith("torch>") and "extra" in r]
    assert floor, "transformers declares no torch floor"
    assert "too old" in torch_problem("2.1.0", tf)


def test_doctor_warns_about_discovery_for_the_distro_it_finds() -> None:
    # run_cli passes this process's environment (conftest set the discovery range) plus these.
    out = run_cli("doctor", env={"ROS_DISTRO": "humble", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if " dds " in x)
    assert line.startswith("[WARN]") and "ROS_LOCALHOST_ONLY=1" in line
    out = run_cli("doctor", "--quiet", env={"ROS_DISTRO": "humble", "ROS_LOCALHOST_ONLY": "1"})
    assert out.returncode == 0 and " dds " not in out.stdout


def test_tensorrt_cuda_flavour_must_match_torch() -> None:
    # `pip install tensorrt` (10.13.3+) brings the CUDA 13 flavour, whatever CUDA torch was built for.
    assert "tensorrt-cu12" in tensorrt_cuda_problem("12.8", ["tensorrt", "tensorrt_cu13", "tensorrt_cu13_libs"])
    assert tensorrt_cuda_problem("12.8", ["tensorrt-cu12-bindings", "tensorrt-cu12-libs"]) is None
    assert tensorrt_cuda_problem(None, ["tensorrt_cu13"]) is None  # CPU torch: nothing to match
    assert tensorrt_cuda_problem("12.6", ["numpy"]) is None  # JetPack's TensorRT is no pip wheel
