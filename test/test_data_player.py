"""The rclpy bag player: message conversion, and a real replay over DDS into a subscriber (localhost only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, shutdown_context
from rosbags.highlevel import AnyReader

from prune2drive_ros.cameras import CAMERAS, QUESTION_TOPIC
from prune2drive_ros.data.nuscenes_to_bag import convert_nuscenes, ros2_typestore
from prune2drive_ros.data.sample_nuscenes import make_sample_nuscenes

rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    root = make_sample_nuscenes(tmp_path_factory.mktemp("nuscenes"), scenes=1, keyframes=2, seed=5, progress=False)
    return convert_nuscenes(root, "v1.0-mini", tmp_path_factory.mktemp("bags") / "bag", drivelm=root / "drivelm.json",
                            progress=False)


@pytest.fixture(scope="module")
def recorded(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(bag time, raw CDR)] as stored."""
    out: dict[str, list] = defaultdict(list)
    with AnyReader([bag]) as reader:
        for conn, timestamp, raw in reader.messages():
            out[conn.topic].append((timestamp, bytes(raw)))
    return out


class Listener:
    """A subscriber node in its own context, spun in a thread until closed."""

    def __init__(self, topics: dict[str, tuple[type, object]]) -> None:
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("test_listener", context=self.context)
        self.received: dict[str, list] = defaultdict(list)
        for topic, (msg_type, qos) in topics.items():
            self.node.create_subscription(msg_type, topic, lambda m, t=topic: self.received[t].append(m), qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for(self, counts: dict[str, int], timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and any(len(self.received[t]) < n for t, n in counts.items()):
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        shutdown_context(self.context)


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_to_rclpy_converts_nested_messages_arrays_and_bytes() -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, CompressedImage

    from prune2drive_ros.data.rosmsg import message_class, to_rclpy

    types = ros2_typestore().types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=12, nanosec=34), frame_id="f")
    payload = bytes(range(256)) * 1000
    image = to_rclpy(types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                              data=np.frombuffer(payload, np.uint8)))
    assert isinstance(image, CompressedImage)
    assert (image.header.stamp.sec, image.header.stamp.nanosec, image.header.frame_id) == (12, 34, "f")
    assert image.data.tobytes() == payload and image.data.typecode == "B"

    k = np.arange(9, dtype=np.float64)
    info = to_rclpy(types["sensor_msgs/msg/CameraInfo"](
        header=header, height=900, width=1600, distortion_model="plumb_bob", d=np.zeros(5), k=k, r=np.eye(3).ravel(),
        p=np.zeros(12), binning_x=0, binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=1, y_offset=2, height=3, width=4, do_rectify=True)))
    assert isinstance(info, CameraInfo)
    assert np.array_equal(info.k, k) and list(info.d) == [0.0] * 5 and info.roi.do_rectify is True

    status_t, kv_t = types["diagnostic_msgs/msg/DiagnosticStatus"], types["diagnostic_msgs/msg/KeyValue"]
    diag = to_rclpy(types["diagnostic_msgs/msg/DiagnosticArray"](header=header, status=[
        status_t(level=2, name="n", message="m", hardware_id="h", values=[kv_t(key="a", value="b")])]))
    assert isinstance(diag, DiagnosticArray)
    assert diag.status[0].level == b"\x02" and diag.status[0].values[0].value == "b"
    with pytest.raises(ImportError, match="no_such_pkg"):
        message_class("no_such_pkg/msg/Thing")


def test_replay_over_dds_keeps_stamps(bag: Path, recorded) -> None:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, CompressedImage
    from std_msgs.msg import String

    from prune2drive_ros.data.player import BagPlayer

    reliable = QoSProfile(depth=100)
    best_effort = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)  # as the node subscribes
    topics = {c.compressed_topic: (CompressedImage, reliable) for c in CAMERAS}
    topics["/CAM_FRONT/camera_info"] = (CameraInfo, best_effort)
    topics[QUESTION_TOPIC] = (String, reliable)
    topics["/clock"] = (Clock, QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
    listener = Listener(topics)
    try:
        player = BagPlayer(bag, rate=4.0, clock=True, wait_for_subscribers=15.0)
        started = time.monotonic()
        published = player.run(max_duration=60)
        elapsed = time.monotonic() - started
        total = sum(len(v) for v in recorded.values())
        assert published == player.published == total
        expected = {c.compressed_topic: len(recorded[c.compressed_topic]) for c in CAMERAS}
        expected[QUESTION_TOPIC] = len(recorded[QUESTION_TOPIC])
        listener.wait_for(expected, timeout=10)

        types = ros2_typestore()
        for cam in CAMERAS:
            got = listener.received[cam.compressed_topic]
            stored = [types.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage")
                      for _, raw in recorded[cam.compressed_topic]]
            assert [_stamp_ns(m) for m in got] == [_stamp_ns(m) for m in stored]  # all frames, original stamps, in order
            assert got[0].data.tobytes() == stored[0].data.tobytes()
            assert got[0].header.frame_id == cam.frame_id
        questions = [types.deserialize_cdr(raw, "std_msgs/msg/String").data for _, raw in recorded[QUESTION_TOPIC]]
        assert [m.data for m in listener.received[QUESTION_TOPIC]] == questions
        assert listener.received["/CAM_FRONT/camera_info"]  # best effort subscriber matches the reliable player

        # Paced: the bag spans ~0.55 s, at rate 4 that is ~0.14 s of playback (plus discovery wait).
        span = (max(t for v in recorded.values() for t, _ in v) - min(t for v in recorded.values() for t, _ in v)) / 1e9
        assert elapsed >= span / 4 * 0.9
        clock = [m.clock.sec * 1_000_000_000 + m.clock.nanosec for m in listener.received["/clock"]]
        first = min(t for v in recorded.values() for t, _ in v)
        assert clock and clock == sorted(clock) and clock[0] >= first

        # Serialized mode with a topic filter: the stored CDR goes out as is.
        before = len(listener.received["/CAM_FRONT/image_rect_compressed"])
        fast = BagPlayer(bag, rate=20.0, topics=["/CAM_FRONT/image_rect_compressed"], serialized=True,
                         wait_for_subscribers=15.0)
        assert fast.run(max_duration=60) == len(recorded["/CAM_FRONT/image_rect_compressed"])
        listener.wait_for({"/CAM_FRONT/image_rect_compressed": before + fast.published}, timeout=10)
        front = listener.received["/CAM_FRONT/image_rect_compressed"]
        assert [_stamp_ns(m) for m in front[before:]] == [_stamp_ns(m) for m in front[:before]]
    finally:
        listener.close()


def test_loop_stop_event_and_bad_arguments(bag: Path, recorded) -> None:
    from prune2drive_ros.data.player import BagPlayer

    with pytest.raises(ValueError, match="rate"):
        BagPlayer(bag, rate=0)
    with pytest.raises(FileNotFoundError):
        BagPlayer(bag.parent / "nope")
    with pytest.raises(ValueError, match="not in the bag"):
        BagPlayer(bag, topics=["/nope"]).run(max_duration=5)

    stop = threading.Event()
    player = BagPlayer(bag, rate=50.0, loop=True, topics=[QUESTION_TOPIC])
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    try:
        started = time.monotonic()
        player.run(stop_event=stop, max_duration=20)
        assert time.monotonic() - started < 10
    finally:
        timer.cancel()
    assert player.loops_completed >= 1 and player.published > len(recorded[QUESTION_TOPIC])


def test_cli_play_stops_cleanly_on_ctrl_c(bag: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "prune2drive_ros.cli", "play", str(bag), "--loop", "--rate", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        # Interrupt once it is playing: after the start line, and a moment for a loop or so of playback.
        ready = threading.Event()
        threading.Thread(target=lambda: proc.stdout.readline() and ready.set(), daemon=True).start()
        assert ready.wait(timeout=60), "player did not start"
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "stopped after" in err and "Traceback" not in err


@pytest.mark.parametrize("loop_questions", [False, True])
def test_loop_sends_the_questions_on_the_first_pass_only_unless_asked(bag: Path, recorded, loop_questions) -> None:
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import String

    from prune2drive_ros.data.player import BagPlayer

    front = "/CAM_FRONT/image_rect_compressed"
    listener = Listener({QUESTION_TOPIC: (String, 200), front: (CompressedImage, 50)})
    try:
        player = BagPlayer(bag, rate=20.0, loop=True, topics=[QUESTION_TOPIC, front], wait_for_subscribers=10,
                           loop_questions=loop_questions)
        stop = threading.Event()

        def stop_after_three_passes() -> None:
            while player.loops_completed < 3 and not stop.is_set():
                stop.wait(0.05)
            stop.set()

        threading.Thread(target=stop_after_three_passes, daemon=True).start()
        player.run(stop_event=stop, max_duration=120)
        stop.set()
        passes = player.loops_completed
        per_pass = len(recorded[QUESTION_TOPIC])
        assert passes >= 3
        # Keep-last camera frames may be overwritten before a loaded reader takes them: the cameras only
        # have to show that later passes arrived. Questions (a deep history) all arrive.
        listener.wait_for({front: len(recorded[front]) + 1,
                           QUESTION_TOPIC: (passes if loop_questions else 1) * per_pass}, timeout=30)
        questions = listener.received[QUESTION_TOPIC]
        assert len(listener.received[front]) > len(recorded[front])  # the cameras repeat
        if loop_questions:
            assert len(questions) >= passes * per_pass
        else:
            assert len(questions) == per_pass
    finally:
        listener.close()
