# ruff: noqa: E402  (the ROS imports follow the importorskip)
"""drive_vqa_node in-process over real DDS (localhost discovery, per-run domain id) with the tiny model.

Each test builds the node, a synthetic 12 Hz six-camera rig with the nuScenes firing offsets and a probe
node, spins them on an executor thread and tears everything down, waiting with timeouts only.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import shutdown_context, wait_for

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from prune2drive_ros.cameras import (
    ANSWER_INFO_TOPIC,
    ANSWER_STREAM_TOPIC,
    ANSWER_TOPIC,
    CANCEL_TOPIC,
    DIAGNOSTICS_TOPIC,
    KEPT_TOKENS_TOPIC,
    QUESTION_TOPIC,
    default_topics,
)
from prune2drive_ros.ros.fake_cameras import FakeCameraRig
from prune2drive_ros.ros.node import DriveVqaNode
from prune2drive_ros.ros.records import ANSWER_KEYS, TIMING_KEYS

pytestmark = pytest.mark.ros

ANSWER_TIMEOUT = 45.0
_names = itertools.count()




@pytest.fixture(scope="module")
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    shutdown_context(ctx)


class Probe:
    """Listens to the node's outputs and asks questions."""

    def __init__(self, node) -> None:
        self.node = node
        self.answers: list[str] = []
        self.answer_statuses: list[dict[str, str]] = []
        self.health: list[tuple[int, str, dict[str, str]]] = []
        self.mosaics: list[Image] = []
        self.infos: list[dict] = []
        self.dropped_statuses: list[dict[str, str]] = []
        self.streams: list[dict] = []
        node.create_subscription(String, ANSWER_TOPIC, lambda m: self.answers.append(m.data), 50)
        node.create_subscription(String, ANSWER_STREAM_TOPIC, lambda m: self.streams.append(json.loads(m.data)), 500)
        node.create_subscription(String, ANSWER_INFO_TOPIC, lambda m: self.infos.append(json.loads(m.data)), 200)
        node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._diagnostics, 50)
        node.create_subscription(Image, KEPT_TOKENS_TOPIC, self.mosaics.append, 5)
        self.question_pub = node.create_publisher(String, QUESTION_TOPIC, 10)
        self.cancel_pub = node.create_publisher(String, CANCEL_TOPIC, 10)

    def _diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name.endswith(": answer"):
                self.answer_statuses.append(values)
            elif status.name.endswith(": health"):
                self.health.append((status.level[0], status.message, values))
            elif status.name.endswith(": question dropped"):
                self.dropped_statuses.append({**values, "_message": status.message})

    def ask(self, question: str) -> None:
        self.question_pub.publish(String(data=question))

    def latest_health(self) -> tuple[int, str, dict[str, str]] | None:
        return self.health[-1] if self.health else None


class Stack:
    """Node under test + rig + probe on one executor thread."""

    def __init__(self, context, model, params: dict[str, Any] | None = None, *, rig: dict | None = None,
                 autostart: bool = True) -> None:
        self.name = f"drive_vqa_t{next(_names)}"
        values = {"model": str(model), "vision_backend": "torch", "max_new_tokens": 4, "device": "cpu",
                  "dtype": "float32", "autostart": autostart, **(params or {})}
        overrides = [Parameter(k, value=v) for k, v in values.items()]
        self.node = DriveVqaNode(self.name, context=context, parameter_overrides=overrides)
        rig_args = {"transport": values.get("image_transport", "compressed"), "jitter_ms": 2.0, **(rig or {})}
        self.rig = FakeCameraRig(f"rig_{self.name}", context=context, **rig_args)
        self.probe = Probe(rclpy.create_node(f"probe_{self.name}", context=context))
        # One executor thread, stopped by a flag: rclpy's executor.shutdown() does not wait for tasks
        # already handed out, which then trip over the destroyed guard condition.
        self.executor = SingleThreadedExecutor(context=context)
        for node in (self.node, self.rig, self.probe.node):
            self.executor.add_node(node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        if autostart:
            assert self.node.autostart()

    def health_where(self, predicate: Callable[[int, str, dict[str, str]], bool], timeout: float = 15.0):
        """The first health status (from now on) that satisfies ``predicate``."""
        start = len(self.probe.health)

        def find():
            for level, message, values in self.probe.health[start:]:
                if predicate(level, message, values):
                    return level, message, values
            return None

        found = wait_for(find, timeout)
        assert found, f"no matching health status in {timeout} s; last: {self.probe.latest_health()}"
        return found

    def ask_and_wait(self, question: str, timeout: float = ANSWER_TIMEOUT) -> dict[str, str]:
        before = len(self.probe.answer_statuses)
        self.probe.ask(question)
        found = wait_for(lambda: len(self.probe.answer_statuses) > before, timeout)
        assert found, f"no answer to {question!r} in {timeout} s; health: {self.probe.latest_health()}"
        return self.probe.answer_statuses[before]

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)
        self.node.release()
        self.executor.shutdown(timeout_sec=10)
        for node in (self.node, self.rig, self.probe.node):
            node.destroy_node()


@pytest.fixture
def stack(context, tiny_model, request):
    """A running stack; parametrize indirectly with Stack keyword arguments to change it."""
    kwargs = getattr(request, "param", {})
    s = Stack(context, tiny_model, **kwargs)
    yield s
    s.close()


def with_stack(**kwargs):
    """Run the test on a stack built with these Stack keyword arguments."""
    return pytest.mark.parametrize("stack", [kwargs], indirect=True, ids=[""])


def test_question_gets_an_answer_with_every_timing_key(stack: Stack) -> None:
    stack.health_where(lambda level, msg, v: float(v["sets_per_s"]) > 5)
    status = stack.ask_and_wait("What are the important objects in the current scene?")
    assert wait_for(lambda: stack.probe.answers, 5)
    assert set(ANSWER_KEYS) <= set(status), set(ANSWER_KEYS) - set(status)
    for key in TIMING_KEYS:
        assert float(status[f"{key}_ms"]) >= 0.0, key
    assert float(status["total_ms"]) > 0 and float(status["sync_wait_ms"]) > 0
    assert status["question"] == "What are the important objects in the current scene?"
    assert status["vision_backend"] == "torch" and status["device"] == "cpu"
    kept = [int(k) for k in status["kept_per_view"].split(",")]
    assert kept == [73] * 6 and int(status["kept_tokens"]) == sum(kept)
    assert int(status["visual_tokens"]) == 6 * 730
    assert 0.0 < float(status["flops_ratio"]) < 1.0
    assert float(status["frame_stamp"]) > 1e9
    # The set is one sweep: the nuScenes offsets span 42 ms, plus the rig's +-2 ms jitter.
    assert 35.0 <= float(status["set_spread_ms"]) <= 50.0
    level, _, health = stack.health_where(lambda level, msg, v: int(v["answers"]) >= 1)
    assert level == DiagnosticStatus.OK[0]
    for topic in default_topics():
        camera = topic.split("/")[1]
        assert 6.0 < float(health[f"rate_hz.{camera}"]) < 18.0
    assert int(health["sync_queue_max"]) <= 10
    assert health["gpu_memory_mb"].startswith("n/a")


@with_stack(params={"camera_timeout_s": 0.4})
def test_a_silent_camera_goes_warn_then_error(stack: Stack) -> None:
    stack.health_where(lambda level, msg, v: level == 0 and float(v["sets_per_s"]) > 5)
    stack.rig.muted = {3}
    _, message, values = stack.health_where(lambda level, msg, v: level == 1)
    assert "CAM_BACK silent" in message and values["camera.CAM_BACK"].startswith("WARN")
    assert values["camera.CAM_FRONT"] == "OK"
    _, _, values = stack.health_where(lambda level, msg, v: level == 2)
    assert values["camera.CAM_BACK"].startswith("ERROR") and float(values["rate_hz.CAM_BACK"]) == 0.0
    stack.rig.muted = set()
    stack.health_where(lambda level, msg, v: level == 0)


def test_bag_loop_time_jump_keeps_answering(stack: Stack) -> None:
    first = stack.ask_and_wait("What is ahead?")
    stack.rig.rewind(20.0)
    _, _, values = stack.health_where(lambda level, msg, v: int(v["dropped.time_jump"]) >= 1)
    second = stack.ask_and_wait("What is ahead now?")
    # The rig stamps with the wall clock, 20 s behind it since the rewind (further if its timer lags).
    assert float(first["frame_stamp"]) > time.time() - 300
    assert float(second["frame_stamp"]) < time.time() - 19.0
    _, _, values = stack.health_where(lambda level, msg, v: True)
    assert int(values["dropped.time_jump"]) == 1  # one reset per loop, not one per camera


def test_corrupt_flood_is_counted_and_survived(stack: Stack) -> None:
    stack.ask_and_wait("Warm up?")
    stack.rig.corrupt = {2}
    flood = stack.probe.node.create_publisher(CompressedImage, default_topics()[2],
                                              QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    rng = np.random.default_rng(1)
    good = bytes(stack.rig._frames[2][0].data)
    payloads = [
        b"\xff\xd8\xff" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),  # garbage after the magic
        good[: len(good) // 2],  # truncated
        rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),  # not an image
        b"",  # empty
    ]
    for i in range(400):
        msg = CompressedImage(format="jpeg", data=payloads[i % len(payloads)])
        msg.header.stamp.sec = 1
        flood.publish(msg)
        if i % 50 == 0:
            time.sleep(0.02)
    _, _, values = stack.health_where(lambda level, msg, v: int(v["dropped.corrupt"]) >= 100, timeout=20)
    assert int(values["dropped.empty"]) >= 1
    assert int(values["frames_dropped"]) >= int(values["dropped.corrupt"])
    # Still alive and answering once the camera is healthy again.
    stack.rig.corrupt = set()
    assert stack.ask_and_wait("Still there?")["question"] == "Still there?"


@with_stack(params={"image_transport": "raw", "camera_topics": default_topics("compressed")})
def test_bad_raw_input_is_dropped_and_counted(stack: Stack) -> None:
    # The YAML's compressed default topics follow image_transport:=raw.
    subscribed = wait_for(lambda: {t for t, _ in stack.node.get_subscriber_names_and_types_by_node(
        stack.name, "/")} >= set(default_topics("raw")), 10)
    assert subscribed
    stack.ask_and_wait("Raw frames work?")
    pub = stack.probe.node.create_publisher(Image, default_topics("raw")[1],
                                            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def image(**fields) -> Image:
        msg = Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12))
        for key, value in fields.items():
            setattr(msg, key, value)
        msg.header.stamp.sec = 5
        return msg

    bad = [image(encoding="yuv422"), image(height=0, data=b""), image(width=5000, step=15000, data=b""),
           image(data=bytes(11)), image(encoding="mono16")]
    for _ in range(5):
        for msg in bad:
            pub.publish(msg)
        time.sleep(0.05)
    stack.rig.zero_stamp = {4}
    stack.probe.ask("")
    stack.probe.ask("   ")
    stack.probe.ask("why? " * 500)
    stack.health_where(
        lambda level, msg, v: int(v["dropped.encoding"]) >= 8 and int(v["dropped.size"]) >= 8
        and int(v["dropped.length"]) >= 4 and int(v["dropped.no_stamp"]) >= 3
        and int(v["dropped.empty_question"]) == 2 and int(v["dropped.long_question"]) == 1)
    stack.rig.zero_stamp = set()
    # Cameras of different sizes: the set is refused, the question waits for a good one.
    big = stack.rig._message(np.zeros((120, 200, 3), dtype=np.uint8))
    sets = stack.node.health_counters()["sets_total"]
    stack.rig.overrides = {5: big}
    # Until the newest synchronized set holds the odd frame (two more sets certainly do).
    assert wait_for(lambda: stack.node.health_counters()["sets_total"] >= sets + 2, 20)
    before = len(stack.probe.answer_statuses)
    stack.probe.ask("Mixed sizes?")
    stack.health_where(lambda level, msg, v: int(v["dropped.size_mismatch"]) >= 1)
    assert len(stack.probe.answer_statuses) == before
    stack.rig.overrides = {}
    assert wait_for(lambda: len(stack.probe.answer_statuses) > before, ANSWER_TIMEOUT)
    assert stack.probe.answer_statuses[before]["question"] == "Mixed sizes?"


def test_run_time_parameters(stack: Stack) -> None:
    node = stack.node

    def set_one(name: str, value: Any, type_: Parameter.Type | None = None):
        param = Parameter(name, type_, value) if type_ else Parameter(name, value=value)
        return node.set_parameters([param])[0]

    assert set_one("retain", 0.25).successful
    assert stack.ask_and_wait("Budget 25%?")["kept_per_view"] == ",".join(["182"] * 6)
    ratios = [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]
    assert set_one("view_ratios", ratios).successful
    assert stack.ask_and_wait("Per view?")["kept_per_view"] == "73,146,219,292,365,729"
    assert set_one("view_ratios", [], Parameter.Type.DOUBLE_ARRAY).successful  # back to retain
    assert stack.ask_and_wait("Back?")["kept_per_view"] == ",".join(["182"] * 6)

    rejected = {
        "retain=0": set_one("retain", 0.0),
        "retain=1.5": set_one("retain", 1.5),
        "five ratios": set_one("view_ratios", [0.1] * 5),
        "ratio 0": set_one("view_ratios", [0.0, 0.1, 0.1, 0.1, 0.1, 0.1]),
        "read-only": set_one("model", "/somewhere/else"),
        "wrong type": set_one("retain", "half"),
        "timeout": set_one("camera_timeout_s", -1.0),
        "question": set_one("questions", ["ok", " "]),
    }
    for what, result in rejected.items():
        assert not result.successful, what
        assert result.reason, what
    assert "(0, 1]" in rejected["retain=0"].reason
    assert "6 values" in rejected["five ratios"].reason
    assert node.get_parameter("retain").value == 0.25

    # The same over the parameter service, as `ros2 param set` does it.
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(stack.probe.node, stack.name)
    assert client.wait_for_services(10)
    future = client.set_parameters([Parameter("retain", value=0.4)])
    assert wait_for(future.done, 10)
    assert future.result().results[0].successful
    assert stack.ask_and_wait("40%?")["kept_per_view"] == ",".join(["292"] * 6)
    future = client.set_parameters([Parameter("retain", value=-0.1)])
    assert wait_for(future.done, 10)
    assert not future.result().results[0].successful


@with_stack(params={"publish_kept_tokens": True})
def test_kept_token_mosaic(stack: Stack) -> None:
    stack.ask_and_wait("Show me the kept tokens.")
    mosaic = wait_for(lambda: stack.probe.mosaics, 10)
    assert mosaic, "no mosaic on /vlm/kept_tokens"
    msg = mosaic[0]
    assert msg.encoding == "rgb8" and msg.width > 0 and msg.height > 0
    assert len(msg.data) == msg.step * msg.height == msg.width * 3 * msg.height


@with_stack(params={"questions": ["What is ahead?", "Is it safe to turn left?"],
            "question_period_s": 0.5})
def test_standing_questions_are_asked_together(stack: Stack) -> None:
    assert wait_for(lambda: len(stack.probe.answer_statuses) >= 4, ANSWER_TIMEOUT)
    first = stack.probe.answer_statuses[:2]
    assert [s["question"] for s in first] == ["What is ahead?", "Is it safe to turn left?"]
    assert all(s["batch_size"] == "2" for s in first)
    # The second question reuses the first one's visual prefix.
    assert first[1]["prefix_reused"] == "True"


def _lifecycle(stack: Stack):
    node = stack.probe.node
    change = node.create_client(ChangeState, f"/{stack.name}/change_state")
    get = node.create_client(GetState, f"/{stack.name}/get_state")
    assert change.wait_for_service(10) and get.wait_for_service(10)

    def call(client, request):
        future = client.call_async(request)
        assert wait_for(future.done, 60), "lifecycle service timed out"
        return future.result()

    def transition(transition_id: int) -> bool:
        return call(change, ChangeState.Request(transition=Transition(id=transition_id))).success

    def state() -> str:
        return call(get, GetState.Request()).current_state.label

    return transition, state


@with_stack(autostart=False)
def test_every_lifecycle_transition(stack: Stack) -> None:
    transition, state = _lifecycle(stack)
    assert state() == "unconfigured" and stack.node.runner_info() is None
    assert transition(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
    assert stack.node.runner_info().device == "cpu"
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == "active"
    stack.ask_and_wait("Active?")
    assert transition(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
    assert not stack.node.service.worker.running
    assert wait_for(lambda: not stack.node.get_subscriber_names_and_types_by_node(stack.name, "/"), 10)
    stack.probe.ask("Anyone?")  # inactive: nothing heard, nothing published
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == "active"
    stack.ask_and_wait("Active again?")
    assert "Anyone?" not in [r["question"] for r in stack.probe.infos]
    assert transition(Transition.TRANSITION_DEACTIVATE)
    assert transition(Transition.TRANSITION_CLEANUP) and state() == "unconfigured"
    assert stack.node.runner_info() is None and stack.node.service is None
    assert transition(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == "active"
    assert transition(Transition.TRANSITION_ACTIVE_SHUTDOWN) and state() == "finalized"
    assert stack.node.runner_info() is None


@with_stack(autostart=False, params={"model": "/nonexistent/model/folder"})
def test_failing_configure_keeps_the_node_up(stack: Stack, capfd) -> None:
    transition, state = _lifecycle(stack)
    assert not transition(Transition.TRANSITION_CONFIGURE)
    assert state() == "unconfigured"
    assert not stack.node.autostart()
    assert state() == "unconfigured"
    err = capfd.readouterr().err
    assert "configure failed" in err and "/nonexistent/model/folder" in err
    assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and state() == "finalized"


@with_stack(autostart=False, params={"view_ratios": [0.5, 0.5, 0.5]})
def test_invalid_start_parameters_fail_configure_with_the_reason(stack: Stack, capfd) -> None:
    transition, state = _lifecycle(stack)
    assert not transition(Transition.TRANSITION_CONFIGURE) and state() == "unconfigured"
    assert "view_ratios needs 6 values" in capfd.readouterr().err


def test_answer_info_names_the_question_and_dropped_ones_say_why(stack: Stack) -> None:
    status = stack.ask_and_wait("What is ahead?")
    record = wait_for(lambda: next((r for r in stack.probe.infos if r["status"] == "answered"), None), 10)
    assert record and record["question"] == "What is ahead?" and record["source"] == "live"
    assert str(record["id"]) == status["question_id"]
    assert record["answer"] in stack.probe.answers
    assert abs(record["frame_stamp"] - float(status["frame_stamp"])) < 1e-6
    assert abs(record["frame_stamp_ns"] / 1e9 - record["frame_stamp"]) < 1e-6
    assert {"sync_wait", "vision", "prefill", "decode", "total", "question_wait"} <= set(record["timings_ms"])
    assert record["kept_per_view"] == [73] * 6
    stack.probe.ask("   ")
    dropped = wait_for(lambda: [r for r in stack.probe.infos if r["status"] == "dropped"], 10)
    assert dropped and dropped[0]["reason"] == "empty_question"
    assert wait_for(lambda: stack.probe.dropped_statuses, 10)
    assert stack.probe.dropped_statuses[0]["reason"] == "empty_question"
    assert stack.probe.dropped_statuses[0]["question_id"] == str(dropped[0]["id"])


def _rclpy_major() -> int:
    from importlib import metadata
    for dist in ("ros-rclpy", "rclpy"):
        try:
            return int(metadata.version(dist).split(".")[0])
        except metadata.PackageNotFoundError:
            continue
    return 0


@pytest.mark.skipif(_rclpy_major() < 9, reason="rclpy before Kilted gives no publisher GID with a message; "
                    "the fallback rule is tested in test_ros_service.py::test_question_sources")
def test_replayed_questions_never_starve_a_person(stack: Stack, context) -> None:
    stack.ask_and_wait("Warm up?")
    # A bag player (recognised by its node name) floods the topic, then a person asks.
    player = rclpy.create_node("prune2drive_player", context=context)
    stack.executor.add_node(player)
    try:
        pub = player.create_publisher(String, QUESTION_TOPIC, 100)
        assert wait_for(lambda: pub.get_subscription_count() >= 1, 10)
        # The node must see the player in the graph before its first question, like any publisher.
        assert wait_for(lambda: any(i.node_name == "prune2drive_player"
                                    for i in stack.node.get_publishers_info_by_topic(QUESTION_TOPIC)), 10)
        for i in range(40):
            pub.publish(String(data=f"Replayed question {i}?"))
        assert wait_for(lambda: len([r for r in stack.probe.infos if r.get("source") == "replay"]) >= 1, 30)
        stack.probe.ask("A person's question?")
        mine = wait_for(lambda: next((r for r in stack.probe.infos if r["question"] == "A person's question?"), None),
                        ANSWER_TIMEOUT)
        assert mine and mine["status"] == "answered" and mine["source"] == "live"
        order = [r["question"] for r in stack.probe.infos if r["status"] == "answered"]
        # At most the inference running when it arrived and one more batch of replayed ones came first.
        replay_before = sum(q.startswith("Replayed") for q in order[:order.index("A person's question?")])
        assert replay_before <= 2 * 8, order
        # Every replayed question ends answered or dropped with a reason.
        assert wait_for(lambda: len([r for r in stack.probe.infos if r.get("source") == "replay"]) == 40,
                        4 * ANSWER_TIMEOUT)
    finally:
        stack.executor.remove_node(player)
        player.destroy_node()


@with_stack(rig={"loop_sweeps": 12})
def test_a_one_second_bag_in_a_loop_keeps_answering(stack: Stack) -> None:
    """The rig repeats the stamps of 12 sweeps (a 1 s bag played with --loop): sets keep forming."""
    stack.health_where(lambda level, msg, v: int(v["dropped.time_jump"]) >= 3, timeout=30)
    _, _, values = stack.health_where(lambda level, msg, v: float(v["sets_per_s"]) > 5)
    for i in range(2):
        status = stack.ask_and_wait(f"Loop {i}?")
        print(f"question wait {status['question_wait_ms']} ms, set age {status['set_age_ms']} ms")
        assert float(status["set_age_ms"]) < 2000
    level, message, values = stack.health_where(lambda level, msg, v: True)
    assert level == 0, message
    assert int(values["dropped.time_jump"]) >= 3


@with_stack(params={"sync_slop_s": 0.001})
def test_health_warns_when_cameras_stream_but_no_set_forms(stack: Stack) -> None:
    # The rig's cameras fire over 42 ms: a 1 ms slop never groups them.
    _, message, values = stack.health_where(lambda level, msg, v: level == 1, timeout=20)
    assert "cameras streaming but no synchronized set" in message and "sync_slop_s" in message, message
    assert values["sets_per_s"] == "0.00"


@with_stack(params={"max_new_tokens": 12, "stream_period_s": 0.0})
def test_partial_answers_stream_in_order_and_end_with_the_answer(stack: Stack) -> None:
    status = stack.ask_and_wait("What is ahead?")
    qid = int(status["question_id"])
    assert wait_for(lambda: any(r["id"] == qid and r["done"] for r in stack.probe.streams), 10)
    stream = [r for r in stack.probe.streams if r["id"] == qid]
    counts = [r["tokens"] for r in stream]
    assert counts == sorted(counts) and len(set(counts)) == len(counts) and counts[-1] == int(status["tokens"])
    assert [r["done"] for r in stream] == [False] * (len(stream) - 1) + [True]
    assert stream[-1]["text"] in stack.probe.answers


@with_stack(params={"max_new_tokens": 256})
def test_a_cancel_on_the_topic_stops_that_question(stack: Stack) -> None:
    stack.health_where(lambda level, msg, v: float(v["sets_per_s"]) > 5)
    stack.probe.ask("Describe everything you see in detail.")
    first = wait_for(lambda: next((r for r in stack.probe.streams if not r["done"]), None), ANSWER_TIMEOUT)
    assert first, "no partial answer on /vlm/answer_stream"
    stack.probe.cancel_pub.publish(String(data=str(first["id"])))
    record = wait_for(lambda: next((r for r in stack.probe.infos if r["id"] == first["id"]), None), ANSWER_TIMEOUT)
    assert record and record["status"] == "dropped" and record["reason"] == "cancelled", record
    assert record["question"] == "Describe everything you see in detail."
    last = [r for r in stack.probe.streams if r["id"] == first["id"]][-1]
    assert last["done"] and last["tokens"] < 256
    stack.probe.cancel_pub.publish(String(data="not an id"))
    stack.health_where(lambda level, msg, v: int(v["dropped.bad_cancel"]) == 1 and int(v["dropped.cancelled"]) == 1)
