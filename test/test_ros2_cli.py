"""The README's ROS 2 command lines, typed as a user types them, through the real ``ros2`` CLI.

The package is installed non-editable (the ``installed_package`` fixture), so ``ros2 launch`` and
``ros2 run`` find it through the ament index and ``lib/prune2drive_ros`` as on a robot. Graph queries
are eventually consistent, so every check polls; topics are echoed with their type; each launch runs
in its own session and is stopped with SIGINT to its process group, as Ctrl-C does; the ``ros2``
daemon of the test domain is stopped afterwards. The node gets ``vision_backend:=torch device:=cpu
max_new_tokens:=4`` on top of the README's lines: the plain lines work too, but first export an ONNX
vision encoder into the user's cache.

Without a ``ros2`` command these tests skip (install it with ``../shared/ros2-cli/install.sh .venv``
or source a ROS 2 install); with ``P2D_REQUIRE_ROS2_CLI=1`` (CI) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import InstalledPackage, wait_for

pytestmark = pytest.mark.ros

NODE = "/drive_vqa"
START_TIMEOUT = 180.0  # node process start + tiny model load, on a loaded 2-core machine
QUESTION = "Is it safe to turn left?"
# Enough for the tiny model on the CPU; vision_backend torch skips building an ONNX / TensorRT engine.
NODE_ARGS = {"vision_backend": "torch", "device": "cpu", "max_new_tokens": "4"}


def _find_ros2() -> str | None:
    return shutil.which("ros2", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@pytest.fixture(scope="session")
def ros2_exe() -> str:
    exe = _find_ros2()
    if exe is None:
        reason = ("no `ros2` command: install the ROS 2 CLI with ../shared/ros2-cli/install.sh .venv "
                  "(or source a ROS 2 install)")
        if os.environ.get("P2D_REQUIRE_ROS2_CLI") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return exe


class Shell:
    """A user's shell: the installed package on the ament path, DDS on localhost in this run's domain."""

    def __init__(self, ros2: str, installed: InstalledPackage, log_dir: Path) -> None:
        self.ros2_exe = ros2
        self.log_dir = log_dir
        # conftest.py set ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST for this run.
        self.env = installed.env(ROS_LOG_DIR=str(log_dir / "ros_log"))

    def ros2(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """``ros2 ARGS`` to completion; stdout and stderr together (ros2 param set reports failures on stderr)."""
        return subprocess.run([self.ros2_exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)

    def start(self, name: str, *args: str) -> Job:
        return Job([*args], self.env, self.log_dir / f"{name}.log")

    def poll_ros2(self, expected: str, *args: str, timeout: float = 60) -> str:
        """Repeat ``ros2 ARGS`` until its output contains ``expected``; returns the last output."""
        last = ""

        def attempt() -> bool:
            nonlocal last
            last = self.ros2(*args).stdout
            return expected in last

        wait_for(attempt, timeout, period=0.5)
        return last

    def transition(self, *args: str, timeout: float = 90) -> str:
        """``ros2 lifecycle set ARGS``, repeated while the daemon's graph does not list the node yet.

        "Node not found" means nothing was sent, so a repeat cannot apply a transition twice."""
        last = ""

        def attempt() -> bool:
            nonlocal last
            last = self.ros2("lifecycle", "set", *args, timeout=timeout).stdout
            return "Node not found" not in last

        wait_for(attempt, timeout, period=0.5)
        return last

    def stop_daemon(self) -> None:
        self.ros2("daemon", "stop", timeout=60)


class Job:
    """A command started in its own session, like a job of an interactive shell, its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("w")
        self.proc = subprocess.Popen(args, stdout=self._file, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def ctrl_c(self, timeout: float) -> int | None:
        """SIGINT to the job's process group, as Ctrl-C in a terminal; the exit code, or None if it hung."""
        if self.running():
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Whatever is left of the job's process group (a test failed half-way)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self._file.close()


def _node_ros_args(model: Path) -> list[str]:
    args = ["--ros-args", "-p", f"model:={model}"]
    for key, value in NODE_ARGS.items():
        args += ["-p", f"{key}:={value}"]
    return args


@pytest.fixture(scope="module")
def shell(ros2_exe, installed_package, tmp_path_factory):
    sh = Shell(ros2_exe, installed_package, tmp_path_factory.mktemp("ros2-cli"))
    yield sh
    sh.stop_daemon()


@pytest.fixture(scope="module")
def cameras(shell):
    """Six synthetic camera streams (the package's fake rig) for the node to answer about."""
    job = shell.start("fake_cameras", sys.executable, "-m", "prune2drive_ros.ros.fake_cameras",
                      "--ros-args", "-p", "rate_hz:=6.0")
    yield job
    job.ctrl_c(30)
    job.kill()


def test_ros2_pkg_finds_the_installed_package(shell) -> None:
    out = shell.ros2("pkg", "executables", "prune2drive_ros")
    assert out.returncode == 0, out.stdout
    assert "prune2drive_ros drive_vqa_node" in out.stdout
    prefix = shell.ros2("pkg", "prefix", "prune2drive_ros")
    assert prefix.stdout.strip().splitlines()[-1] == shell.env["AMENT_PREFIX_PATH"].split(os.pathsep)[0]


@pytest.fixture(scope="class")  # one launch for TestLaunch, ended before ros2 run starts
def launch(shell, cameras, tiny_model):
    """`ros2 launch prune2drive_ros drive_vqa.launch.py model:=<tiny> retain:=0.2`, up and active."""
    overrides = [f"{key}:={value}" for key, value in NODE_ARGS.items()]
    job = shell.start("launch", shell.ros2_exe, "launch", "prune2drive_ros", "drive_vqa.launch.py",
                      f"model:={tiny_model}", "retain:=0.2", *overrides)
    state = shell.poll_ros2("active [3]", "lifecycle", "get", NODE, timeout=START_TIMEOUT)
    assert "active [3]" in state, f"{state}\n--- launch log:\n{job.text()}"
    yield job
    job.ctrl_c(30)
    job.kill()
    shell.stop_daemon()  # its graph cache would still list this node for the next test


class TestLaunch:
    """``ros2 launch prune2drive_ros drive_vqa.launch.py model:=<tiny> retain:=0.2``, then the README's
    param, lifecycle and topic commands against it, and Ctrl-C last."""

    def test_launch_starts_the_node_active(self, shell, launch) -> None:
        assert launch.running(), launch.text()
        assert "drive_vqa_node-1]: process started" in launch.text()
        assert shell.poll_ros2("active [3]", "lifecycle", "get", NODE).strip() == "active [3]"
        nodes = shell.poll_ros2(NODE, "node", "list")
        assert NODE in nodes.split(), nodes

    def test_param_get_set_and_a_rejected_value(self, shell, launch) -> None:
        assert "Double value is: 0.2" in shell.ros2("param", "get", NODE, "retain").stdout  # from retain:=0.2
        ok = shell.ros2("param", "set", NODE, "retain", "0.5")
        assert "Set parameter successful" in ok.stdout, ok.stdout
        assert "Double value is: 0.5" in shell.ros2("param", "get", NODE, "retain").stdout
        rejected = shell.ros2("param", "set", NODE, "retain", "2.0")
        # ros2 param set reports a rejection on stderr and still exits 0.
        assert rejected.returncode == 0
        assert "Setting parameter failed" in rejected.stdout, rejected.stdout
        assert "retain" in rejected.stdout  # the reason names what was wrong
        assert "Double value is: 0.5" in shell.ros2("param", "get", NODE, "retain").stdout
        assert launch.running(), launch.text()
        assert shell.poll_ros2("active [3]", "lifecycle", "get", NODE).strip() == "active [3]"

    def test_lifecycle_get_and_set(self, shell, launch) -> None:
        assert shell.poll_ros2("active [3]", "lifecycle", "get", NODE).strip() == "active [3]"
        out = shell.transition(NODE, "deactivate")
        assert "Transitioning successful" in out, out
        assert shell.poll_ros2("inactive [2]", "lifecycle", "get", NODE).strip() == "inactive [2]"
        out = shell.transition(NODE, "activate")
        assert "Transitioning successful" in out, out
        assert shell.poll_ros2("active [3]", "lifecycle", "get", NODE).strip() == "active [3]"
        assert launch.running(), launch.text()

    def test_topic_echo_receives_the_answer_to_a_published_question(self, shell, launch) -> None:
        echo = shell.start("echo", shell.ros2_exe, "topic", "echo", "/vlm/answer", "std_msgs/msg/String")
        try:
            # Ask until the echo (discovered asynchronously) prints an answer; each ask waits for the node.
            deadline = time.monotonic() + 150
            while "data:" not in echo.text() and time.monotonic() < deadline:
                pub = shell.ros2("topic", "pub", "--once", "/vlm/question", "std_msgs/msg/String",
                                 f"data: '{QUESTION}'")
                assert pub.returncode == 0, pub.stdout
                assert "publishing #1" in pub.stdout, pub.stdout
                wait_for(lambda: "data:" in echo.text(), 30, period=0.2)
            text = echo.text()
            assert "data:" in text and "---" in text, f"{text}\n--- launch log:\n{launch.text()}"
            assert echo.running(), text
        finally:
            echo.ctrl_c(30)
            echo.kill()

    def test_the_answer_stream_and_cancel_lines(self, shell, launch) -> None:
        """The README's `ros2 topic echo /vlm/answer_stream ...` and `ros2 topic pub --once /vlm/cancel ...`."""
        echo = shell.start("stream", shell.ros2_exe, "topic", "echo", "--full-length", "/vlm/answer_stream",
                           "std_msgs/msg/String")
        try:
            deadline = time.monotonic() + 150
            while '"done":true' not in echo.text() and time.monotonic() < deadline:
                pub = shell.ros2("topic", "pub", "--once", "/vlm/question", "std_msgs/msg/String",
                                 f"data: '{QUESTION}'")
                assert "publishing #1" in pub.stdout, pub.stdout
                wait_for(lambda: '"done":true' in echo.text(), 30, period=0.2)
            assert '"done":true' in echo.text(), f"{echo.text()}\n--- launch log:\n{launch.text()}"
        finally:
            echo.ctrl_c(30)
            echo.kill()
        pub = shell.ros2("topic", "pub", "--once", "/vlm/cancel", "std_msgs/msg/String", "data: 'all'")
        assert "publishing #1" in pub.stdout, pub.stdout
        assert wait_for(lambda: "cancel all:" in launch.text(), 30, period=0.2), launch.text()

    def test_ctrl_c_finishes_the_node_cleanly(self, launch) -> None:
        code = launch.ctrl_c(30)
        text = launch.text()
        assert code is not None, f"ros2 launch did not end within 30 s of Ctrl-C:\n{text}"
        assert "[drive_vqa_node-1]: process has finished cleanly" in text, text
        assert "process has died" not in text, text
        assert code == 0, text


def test_a_bare_launch_answers_a_question(shell, cameras, tmp_path) -> None:
    """``ros2 launch prune2drive_ros drive_vqa.launch.py`` with no arguments at all: the default hub model is
    not in the (empty) Hugging Face cache, so the node runs the shipped test bed, says so in one WARN line,
    and answers the first ``ros2 topic pub --once /vlm/question`` after it is active."""
    env = {**shell.env, "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    job = Job([shell.ros2_exe, "launch", "prune2drive_ros", "drive_vqa.launch.py"], env, tmp_path / "bare.log")
    echo = None
    try:
        state = shell.poll_ros2("active [3]", "lifecycle", "get", NODE, timeout=START_TIMEOUT)
        assert "active [3]" in state, f"{state}\n--- launch log:\n{job.text()}"
        echo = shell.start("bare-echo", shell.ros2_exe, "topic", "echo", "--full-length", "/vlm/answer_info",
                           "std_msgs/msg/String")
        info = shell.poll_ros2("Subscription count: 1", "topic", "info", "/vlm/answer_info")
        assert "Subscription count: 1" in info, info
        pub = shell.ros2("topic", "pub", "--once", "/vlm/question", "std_msgs/msg/String", f"data: '{QUESTION}'")
        assert "publishing #1" in pub.stdout, pub.stdout
        assert wait_for(lambda: "status" in echo.text(), 120, period=0.2), f"{echo.text()}\n--- {job.text()}"
        record = json.loads(yaml.safe_load(echo.text().split("---")[0])["data"])
        assert record["status"] == "answered" and record["question"] == QUESTION, record
        # Answered on the first frame set at hand: the worker was idle and the cameras stream at 6 Hz.
        assert record["timings_ms"]["question_wait"] < 1000.0, record
        log = job.text()
        warnings = [line for line in log.splitlines() if "not in the local Hugging Face cache" in line]
        assert len(warnings) == 1 and "WARN" in warnings[0] and "test bed" in warnings[0], log
        assert "hf download" in warnings[0]
        code = job.ctrl_c(30)
        assert code == 0 and "process has finished cleanly" in job.text(), job.text()
    finally:
        if echo is not None:
            echo.ctrl_c(30)
            echo.kill()
        job.ctrl_c(30)
        job.kill()
        shell.stop_daemon()


def test_ros2_run_then_lifecycle_set_configure_and_activate(shell, tiny_model) -> None:
    """``ros2 run prune2drive_ros drive_vqa_node --ros-args -p model:=... -p autostart:=false``, walked to
    active with ``ros2 lifecycle set``, then Ctrl-C."""
    job = shell.start("run", shell.ros2_exe, "run", "prune2drive_ros", "drive_vqa_node",
                      *_node_ros_args(tiny_model), "-p", "autostart:=false")
    try:
        state = shell.poll_ros2("unconfigured [1]", "lifecycle", "get", NODE, timeout=START_TIMEOUT)
        assert "unconfigured [1]" in state, f"{state}\n--- ros2 run output:\n{job.text()}"
        out = shell.transition(NODE, "configure", timeout=START_TIMEOUT)  # loads the model
        assert "Transitioning successful" in out, f"{out}\n--- ros2 run output:\n{job.text()}"
        assert shell.poll_ros2("inactive [2]", "lifecycle", "get", NODE).strip() == "inactive [2]"
        out = shell.transition(NODE, "activate")
        assert "Transitioning successful" in out, out
        assert shell.poll_ros2("active [3]", "lifecycle", "get", NODE).strip() == "active [3]"
        assert "Double value is: 0.1" in shell.ros2("param", "get", NODE, "retain").stdout  # the node's default
        code = job.ctrl_c(30)
        assert code is not None, f"ros2 run did not end within 30 s of Ctrl-C:\n{job.text()}"
        assert code == 0, job.text()  # ros2 run returns the node's exit code
    finally:
        job.kill()
