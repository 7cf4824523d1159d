# ruff: noqa: E402  (the ROS imports follow the importorskip)
"""Ctrl-C ends every long-running command at once: a real SIGINT to a subprocess's process group, as a
terminal sends it, while the command works. Each must exit within ``BOUND_S`` with code 130 and no
traceback.

The commands start with SIGINT ignored, as a script's background job (``cmd &``) does: that is how
``prune2drive play --loop`` once kept publishing for minutes after ``kill -INT``. Each waits for a sign
that the command is busy (a message it published, a file it wrote, a line it printed), never a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from conftest import REPO, shutdown_context, wait_for
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage
from test_eval_support import make_drivelm

from prune2drive_ros.cameras import default_topics

pytestmark = pytest.mark.ros

BOUND_S = 2.0
START_TIMEOUT = 240.0  # torch import, model load, sample data: a loaded 2-core machine


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Command:
    """``python -m MODULE ARGS`` in its own session (a terminal job), output in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._file = log.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", *args], stdout=self._file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO, env=env, start_new_session=True,
                                     preexec_fn=_ignore_sigint)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ctrl_c_when(self, busy: Callable[[], bool]) -> tuple[int | None, float]:
        """Once ``busy()``, SIGINT to the process group; (exit code or None if it hung, seconds to exit)."""
        try:
            assert wait_for(lambda: busy() or self.proc.poll() is not None, START_TIMEOUT, period=0.1), self.text()
            assert self.proc.poll() is None, f"ended before Ctrl-C:\n{self.text()}"
            sent = time.monotonic()
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                code = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                code = None
            return code, time.monotonic() - sent
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self._file.close()

    def assert_interrupted(self, result: tuple[int | None, float]) -> None:
        code, seconds = result
        text = self.text()
        print(f"exit {code} {seconds:.2f} s after SIGINT")
        assert code == 130, f"exit code {code}\n{text}"
        assert seconds < BOUND_S, f"took {seconds:.2f} s\n{text}"
        assert "Traceback" not in text, text


class Frames:
    """Counts camera frames on one topic (the test's own DDS participant)."""

    def __init__(self, topic: str = default_topics()[0]) -> None:
        from rclpy.context import Context

        self.count = 0
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("ctrl_c_probe", context=self.context)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.node.create_subscription(CompressedImage, topic, self._frame, qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _frame(self, msg: CompressedImage) -> None:
        self.count += 1

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        shutdown_context(self.context)


@pytest.fixture
def frames():
    probe = Frames()
    yield probe
    probe.close()


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    from prune2drive_ros.data.nuscenes_to_bag import convert_nuscenes
    from prune2drive_ros.data.sample_nuscenes import make_sample_nuscenes

    root = tmp_path_factory.mktemp("ctrl-c-bag")
    sample = make_sample_nuscenes(root / "nuscenes", scenes=1, keyframes=2, seed=5, progress=False)
    return convert_nuscenes(sample, "v1.0-mini", root / "bag", drivelm=sample / "drivelm.json", progress=False)


@pytest.mark.parametrize("loop", [False, True], ids=["once", "loop"])
def test_play(bag: Path, frames: Frames, tmp_path: Path, loop: bool) -> None:
    # A slow rate keeps a single pass going long after the first frame.
    args = ["prune2drive_ros.cli", "play", str(bag), "--rate", "0.2", *(["--loop"] if loop else [])]
    command = Command(args, tmp_path / "play.log")
    command.assert_interrupted(command.ctrl_c_when(lambda: frames.count > 0))
    assert "stopped after" in command.text()


def test_fake_cameras(frames: Frames, tmp_path: Path) -> None:
    command = Command(["prune2drive_ros.ros.fake_cameras"], tmp_path / "cameras.log")
    command.assert_interrupted(command.ctrl_c_when(lambda: frames.count > 0))


def test_demo(tiny_model: Path, tmp_path: Path) -> None:
    args = ["prune2drive_ros.cli", "demo", "--model", str(tiny_model), "--out", str(tmp_path / "demo"),
            "--keyframes", "2", "--device", "cpu", "--max-new-tokens", "64"]
    command = Command(args, tmp_path / "demo.log")
    command.assert_interrupted(command.ctrl_c_when(lambda: "DriveLM questions from the bag" in command.text()))


def test_eval(tiny_model: Path, tmp_path: Path) -> None:
    drivelm, dataroot = make_drivelm(tmp_path / "data", keyframes=3)
    out = tmp_path / "eval"
    args = ["prune2drive_ros.cli", "eval", "--model", str(tiny_model), "--drivelm", str(drivelm), "--dataroot",
            str(dataroot), "--out", str(out), "--device", "cpu", "--max-new-tokens", "64", "--no-progress"]
    command = Command(args, tmp_path / "eval.log")
    answers = out / "answers.jsonl"
    command.assert_interrupted(command.ctrl_c_when(lambda: answers.is_file() and answers.read_text().strip() != ""))


def test_optimize(tiny_model: Path, tmp_path: Path) -> None:
    drivelm, dataroot = make_drivelm(tmp_path / "data", keyframes=3)
    args = ["prune2drive_ros.cli", "optimize", "--model", str(tiny_model), "--drivelm", str(drivelm), "--dataroot",
            str(dataroot), "--out", str(tmp_path / "opt"), "--trials", "50", "--device", "cpu", "--no-progress"]
    command = Command(args, tmp_path / "optimize.log")
    command.assert_interrupted(command.ctrl_c_when(lambda: "RANDOM WEIGHTS" in command.text()))


def test_study(tmp_path: Path) -> None:
    # Not the test seed (that one is looked at once, for the README's table); progress on, because its
    # "== run" lines are the sign that scoring has started.
    args = ["prune2drive_ros.cli", "study", str(tmp_path / "study"), "--scenes", "4", "--ood-scenes", "40",
            "--test-seed", "17", "--methods", "none", "--retains", "0.1", "--device", "cpu"]
    command = Command(args, tmp_path / "study.log")
    command.assert_interrupted(command.ctrl_c_when(lambda: "== none" in command.text()))
