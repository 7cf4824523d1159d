# ruff: noqa: E402  (the ROS imports follow the importorskip)
"""``ros2 launch prune2drive_ros drive_vqa.launch.py retain:=1 ...``: integers typed for double parameters.

A user types ``retain:=1`` for 1.0. The launch file reads launch arguments as YAML, so ``1`` arrives as
an integer; the node must take it as the double it is and stay up (configured and active), not die
with ``InvalidParameterTypeException``. Runs the real ``ros2 launch`` on a non-editable install of the
package (the ``installed_package`` fixture: ament index, share/, lib/<package>/).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("launch_ros", reason="needs the ROS 2 command line (../shared/ros2-cli/install.sh VENV "
                                         "or a sourced ROS 2 install)")

from conftest import shutdown_context, wait_for
from lifecycle_msgs.srv import GetState
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters

pytestmark = pytest.mark.ros

PACKAGE = "prune2drive_ros"
NODE = "drive_vqa_ints"
START_TIMEOUT = 120.0
# Every double parameter, given as a user would type a whole number, and what the node must hold.
INTEGER_FOR_DOUBLE = {
    "retain": ("1", 1.0),
    "sync_slop_s": ("1", 1.0),
    "camera_timeout_s": ("2", 2.0),
    "question_period_s": ("0", 0.0),
    "view_ratios": ("[1, 1, 1, 1, 1, 1]", [1.0] * 6),
}


def ros2() -> str:
    found = shutil.which("ros2", path=str(Path(sys.executable).parent)) or shutil.which("ros2")
    if found is None:
        pytest.skip("no ros2 command")
    return found


def test_integer_values_for_double_parameters_through_the_launch_file(tiny_model, installed_package, tmp_path) -> None:
    args = [ros2(), "launch", PACKAGE, "drive_vqa.launch.py", f"node_name:={NODE}", f"model:={tiny_model}",
            "vision_backend:=torch", "device:=cpu", "dtype:=float32", "max_new_tokens:=4"]
    args += [f"{name}:={typed}" for name, (typed, _) in INTEGER_FOR_DOUBLE.items()]
    log = tmp_path / "launch.log"
    env = installed_package.env()
    with log.open("w") as out:
        # Own process group: SIGINT to the group is Ctrl-C on `ros2 launch`.
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = rclpy.create_node("probe_launch_ints", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(probe)

    def call(client, request, timeout: float = 20.0):
        if not client.wait_for_service(timeout):
            return None
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=timeout)
        return future.result()

    try:
        state = probe.create_client(GetState, f"/{NODE}/get_state")

        def active() -> bool:
            if proc.poll() is not None:
                return True
            result = call(state, GetState.Request(), 5.0)
            return result is not None and result.current_state.label == "active"

        assert wait_for(active, START_TIMEOUT, period=0.5)
        assert proc.poll() is None, f"ros2 launch ended:\n{log.read_text()}"
        assert call(state, GetState.Request()).current_state.label == "active", log.read_text()

        params = call(probe.create_client(GetParameters, f"/{NODE}/get_parameters"),
                      GetParameters.Request(names=list(INTEGER_FOR_DOUBLE)))
        assert params is not None, log.read_text()
        for (name, (_, expected)), value in zip(INTEGER_FOR_DOUBLE.items(), params.values, strict=True):
            if isinstance(expected, list):
                assert value.type == ParameterType.PARAMETER_DOUBLE_ARRAY, name
                assert list(value.double_array_value) == expected, name
            else:
                assert value.type == ParameterType.PARAMETER_DOUBLE, name
                assert value.double_value == expected, name
        assert "InvalidParameterTypeException" not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        executor.shutdown(timeout_sec=5)
        probe.destroy_node()
        shutdown_context(context)
