"""The inference worker and the health monitor, without ROS (fake clock, stand-in and real runner).

"Nothing happened" is checked after ``worker.settled()`` (the thread has looked at every input and
waits), never after a sleep."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from prune2drive_ros.cameras import CAMERA_NAMES, NUM_CAMERAS
from prune2drive_ros.ros.diagnostics import ERROR, OK, WARN, HealthMonitor
from prune2drive_ros.ros.image_codec import ImageDecodeError
from prune2drive_ros.ros.synchronizer import SyncedSet
from prune2drive_ros.ros.worker import LIVE, REPLAY, InferenceWorker, Question


def wait_for(predicate, timeout: float = 10.0, period: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


@dataclass
class StandInAnswer:
    text: str
    timings_ms: dict = field(default_factory=lambda: dict.fromkeys(
        ("preprocess", "vision", "prune", "prefill", "decode", "total"), 1.0))
    kept_per_view: list = field(default_factory=lambda: [73] * 6)
    visual_tokens: int = 4380
    flops: float = 1.0
    flops_dense: float = 4.0
    prefix_reused: bool = False
    kept_indices: list = field(default_factory=lambda: [list(range(73))] * 6)
    token_ids: list = field(default_factory=lambda: [1, 2, 3])
    path: str = "eager"
    paths: dict = field(default_factory=dict)

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.flops_dense


class StandInRunner:
    """Implements the runner interface; ``gate`` holds an inference until the test releases it."""

    device = "cpu"
    vision_backend_name = "torch"

    def __init__(self) -> None:
        self.calls: list[tuple[list, list[str]]] = []
        self.budgets: list[dict] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail: Exception | None = None

    def answer(self, images, questions, *, frame_key=None, on_progress=None):
        self.started.set()
        assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.calls.append((images, list(questions)))
        return [StandInAnswer(f"answer to {q}") for q in questions]

    def text(self, tokens):
        return " ".join(map(str, tokens))

    def set_budgets(self, retain=None, view_ratios=None):
        self.budgets.append({"retain": retain, "view_ratios": view_ratios})

    def close(self):
        pass


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_set(tag: int, *, completed: float | None = None, size=(4, 6)) -> SyncedSet:
    now = time.monotonic() if completed is None else completed
    items = tuple(np.full((*size, 3), tag, dtype=np.uint8) for _ in range(NUM_CAMERAS))
    return SyncedSet(items, tuple(range(tag * 10, tag * 10 + 6)), now - 0.05, now)


class Harness:
    def __init__(self, runner=None, decode=None, **kwargs) -> None:
        self.runner = runner or StandInRunner()
        self.events = []
        self.drops = []
        self.dropped_questions: list[tuple[Question, str]] = []
        self.worker = InferenceWorker(self.runner, decode or (lambda item: item), on_answer=self.events.append,
                                      on_drop=lambda reason, msg: self.drops.append((reason, msg)),
                                      on_question_dropped=lambda q, reason, msg, partial: self.dropped_questions.append(
                                          (q, reason)), **kwargs)

    def __enter__(self):
        self.worker.start()
        return self

    def __exit__(self, *exc):
        if isinstance(self.runner, StandInRunner):
            self.runner.gate.set()
        assert self.worker.stop(10)


def test_answers_a_question_on_the_latest_set() -> None:
    with Harness() as h:
        h.worker.submit(make_set(1))
        h.worker.submit(make_set(2))
        h.worker.ask("what?")
        assert wait_for(lambda: len(h.events) == 1)
    event = h.events[0]
    assert event.answer.text == "answer to what?"
    assert int(event.images[0][0, 0, 0]) == 2
    assert event.batch_size == 1 and event.image_decode_ms >= 0


def test_questions_pending_for_one_set_share_one_call_and_busy_sets_are_dropped() -> None:
    with Harness() as h:
        h.worker.submit(make_set(1))
        h.runner.gate.clear()
        h.worker.ask("first")
        assert h.runner.started.wait(5)
        # While the first inference runs: more questions and three newer sets arrive.
        for q in ("a", "b", "c"):
            h.worker.ask(q)
        for tag in (2, 3, 4):
            h.worker.submit(make_set(tag))
        h.runner.gate.set()
        assert wait_for(lambda: len(h.events) == 4)
        stats = h.worker.stats()
    assert [qs for _, qs in h.runner.calls] == [["first"], ["a", "b", "c"]]
    assert int(h.runner.calls[1][0][0][0, 0, 0]) == 4  # the newest set
    assert stats["sets_dropped"] == 2  # sets 2 and 3 were replaced while the worker was busy
    assert stats["inferences"] == 2 and stats["answers"] == 4


def test_question_queue_is_bounded() -> None:
    with Harness(max_questions=3, max_batch=2) as h:
        for i in range(10):
            h.worker.ask(f"q{i}")
        assert h.worker.queue_depth() == 3
        h.worker.submit(make_set(1))
        assert wait_for(lambda: len(h.events) == 3)
    assert [e.question.text for e in h.events] == ["q7", "q8", "q9"]
    assert [qs for _, qs in h.runner.calls] == [["q7", "q8"], ["q9"]]
    assert sum(r == "question_overflow" for r, _ in h.drops) == 7


def test_live_questions_go_first_and_a_replay_flood_never_drops_them() -> None:
    with Harness(max_questions=4, max_replay_questions=8, max_batch=3) as h:
        h.runner.gate.clear()
        h.worker.submit(make_set(1))
        h.worker.ask("warm-up")
        assert h.runner.started.wait(5)
        for i in range(20):  # a bag replays a burst of questions
            h.worker.ask(f"replayed {i}", REPLAY)
        mine = h.worker.ask("a person's question")
        h.runner.gate.set()
        assert wait_for(lambda: len(h.events) == 1 + 1 + 8)
    # The live question jumps the replayed ones; the replay queue overflowed into its own oldest.
    assert h.runner.calls[1][1][0] == "a person's question"
    assert h.events[1].question.id == mine.id and h.events[1].question.source == LIVE
    overflowed = [q for q, reason in h.dropped_questions if reason == "question_overflow"]
    assert [q.text for q in overflowed] == [f"replayed {i}" for i in range(12)]
    assert all(q.source == REPLAY for q in overflowed)


def test_every_question_is_answered_or_dropped_once() -> None:
    with Harness(max_questions=2, max_batch=2, question_timeout_s=0.3) as h:
        asked = [h.worker.ask(f"q{i}") for i in range(5)]  # 3 overflow
        assert wait_for(lambda: len(h.dropped_questions) == 5)  # the other 2 expire: no camera set
        asked.append(h.worker.ask("after"))
        h.worker.submit(make_set(1))
        assert wait_for(lambda: len(h.events) == 1)
        h.worker.forget_set()  # time ran backwards: nothing to answer on
        asked.append(h.worker.ask("never answerable"))
    assert h.worker.drain("shutdown", "stopped") == 1
    reasons = {q.text: reason for q, reason in h.dropped_questions}
    assert reasons == {"q0": "question_overflow", "q1": "question_overflow", "q2": "question_overflow",
                       "q3": "no_camera_set", "q4": "no_camera_set", "never answerable": "shutdown"}
    assert [e.question.text for e in h.events] == ["after"]
    ids = [q.id for q, _ in h.dropped_questions] + [e.question.id for e in h.events]
    assert sorted(ids) == sorted(q.id for q in asked)


def test_a_question_is_answered_on_the_set_that_was_fresh_when_it_was_asked() -> None:
    # The bag ended: its last set is 0.6 s old now, older than max_set_age_s would allow for a new question,
    # but a question that arrived while it was fresh still gets it.
    clock = FakeClock()
    with Harness(max_set_age_s=0.5, clock=clock) as h:
        h.runner.gate.clear()
        h.worker.submit(make_set(1, completed=clock()))
        h.worker.ask("first")
        assert h.runner.started.wait(5)
        h.worker.ask("asked while the set was fresh")
        clock.advance(0.6)
        h.worker.ask("asked after the cameras stopped")
        h.runner.gate.set()
        assert wait_for(lambda: len(h.events) == 2)
        assert h.worker.settled()
        assert [e.question.text for e in h.events] == ["first", "asked while the set was fresh"]
        assert h.worker.queue_depth() == 1


def test_stop_is_bounded_and_idempotent_with_an_inference_in_flight() -> None:
    h = Harness()
    h.worker.start()
    h.runner.gate.clear()
    h.worker.submit(make_set(1))
    h.worker.ask("slow")
    assert h.runner.started.wait(5)
    t0 = time.monotonic()
    assert not h.worker.stop(0.2)
    assert not h.worker.stop(0.2)
    assert time.monotonic() - t0 < 5
    h.worker.start()  # the same thread carries on; no second one
    assert h.worker.running
    h.runner.gate.set()
    assert wait_for(lambda: len(h.events) == 1)
    assert h.worker.stop(5) and h.worker.stop(5)
    assert not h.worker.running


def test_stale_sets_are_not_used() -> None:
    clock = FakeClock()
    with Harness(max_set_age_s=0.5, clock=clock) as h:
        h.worker.submit(make_set(1, completed=clock() - 5))
        h.worker.ask("q")
        assert h.worker.settled()
        assert not h.events and h.worker.queue_depth() == 1
        h.worker.submit(make_set(2, completed=clock()))
        assert wait_for(lambda: len(h.events) == 1)


def test_a_forgotten_set_is_not_answered() -> None:
    with Harness() as h:
        h.worker.submit(make_set(1))
        h.worker.forget_set()  # time ran backwards: set 1 is from another timeline
        h.worker.ask("q")
        assert h.worker.settled()
        assert not h.events
        h.worker.submit(make_set(2))
        assert wait_for(lambda: len(h.events) == 1)
    assert int(h.events[0].images[0][0, 0, 0]) == 2


def test_standing_questions_do_not_pile_up() -> None:
    with Harness() as h:
        h.worker.set_standing(["s1", "s2"])
        h.runner.gate.clear()
        h.worker.submit(make_set(1))
        h.worker.standing_due()
        assert h.runner.started.wait(5)
        for _ in range(20):  # many periods pass during one inference
            h.worker.standing_due()
        h.runner.gate.set()
        assert wait_for(lambda: len(h.runner.calls) == 2)
        assert h.worker.settled()
    assert [qs for _, qs in h.runner.calls] == [["s1", "s2"], ["s1", "s2"]]
    assert h.worker.queue_depth() == 0


def test_bad_sets_are_dropped_and_questions_wait() -> None:
    def decode(item):
        if int(item[0, 0, 0]) == 1:
            raise ImageDecodeError("corrupt", "bad jpeg")
        return item

    with Harness(decode=decode) as h:
        h.worker.submit(make_set(1))
        h.worker.ask("q")
        assert wait_for(lambda: h.drops)
        assert h.drops[0][0] == "corrupt" and not h.events
        h.worker.submit(make_set(2))
        assert wait_for(lambda: len(h.events) == 1)


def test_cameras_of_different_sizes_are_refused() -> None:
    def decode(item):
        return item

    with Harness(decode=decode) as h:
        bad = make_set(1)
        items = list(bad.items)
        items[3] = np.zeros((8, 6, 3), dtype=np.uint8)
        h.worker.submit(SyncedSet(tuple(items), bad.stamps_ns, bad.first_arrival, bad.completed))
        h.worker.ask("q")
        assert wait_for(lambda: h.drops)
        assert h.drops[0][0] == "size_mismatch" and "6x8" in h.drops[0][1]


def test_runner_errors_are_contained() -> None:
    with Harness() as h:
        h.runner.fail = ValueError("question is 600 tokens; the bound is 512")
        h.worker.submit(make_set(1))
        h.worker.ask("q")
        assert wait_for(lambda: h.drops)
        h.runner.fail = RuntimeError("CUDA out of memory")
        h.worker.ask("q2")
        assert wait_for(lambda: len(h.drops) == 2)
        h.runner.fail = None
        h.worker.ask("q3")
        assert wait_for(lambda: len(h.events) == 1)
        assert h.worker.running
    assert [r for r, _ in h.drops] == ["bad_question", "inference_error"]


def test_budgets_apply_between_inferences() -> None:
    runner = StandInRunner()
    worker = InferenceWorker(runner, lambda x: x, on_answer=lambda e: None, on_drop=lambda r, m: None)
    worker.set_budgets(0.3, None)  # not running: applied at once
    assert runner.budgets == [{"retain": 0.3, "view_ratios": None}]
    with Harness(runner=runner) as h:
        runner.gate.clear()
        h.worker.submit(make_set(1))
        h.worker.ask("q")
        assert runner.started.wait(5)
        h.worker.set_budgets(0.5, [0.2] * 6)
        assert len(runner.budgets) == 1  # not during the running inference
        runner.gate.set()
        assert wait_for(lambda: len(runner.budgets) == 2)
    assert runner.budgets[1] == {"retain": 0.5, "view_ratios": [0.2] * 6}


def test_health_levels_and_rates() -> None:
    clock = SimpleNamespace(now=100.0)
    health = HealthMonitor(CAMERA_NAMES, 1.0, error_factor=3.0, clock=lambda: clock.now)
    for _ in range(12):
        for cam in range(NUM_CAMERAS):
            health.frame(cam)
    health.synced(12)
    clock.now += 1.0
    level, message, values = health.report({"question_queue_depth": 0})
    values = dict(values)
    assert level == OK and values["rate_hz.CAM_FRONT"] == "12.00" and values["sets_per_s"] == "12.00"
    for cam in range(NUM_CAMERAS - 1):
        health.frame(cam)
    clock.now += 1.5
    assert health.report({})[0] == WARN
    for cam in range(NUM_CAMERAS - 1):
        health.frame(cam)
    clock.now += 2.0
    level, message, values = health.report({})
    assert level == ERROR and "CAM_BACK_RIGHT silent 4.5 s" in message
    assert dict(values)["camera.CAM_BACK_RIGHT"].startswith("ERROR")
    assert dict(values)["camera.CAM_FRONT"] == "WARN 2.0 s"


def test_real_tiny_runner_through_the_worker(tiny_model) -> None:
    from prune2drive_ros.vlm import VLMRunner

    runner = VLMRunner.from_pretrained(tiny_model, vision_backend="torch", max_new_tokens=4, retain=0.1)
    try:
        rng = np.random.default_rng(0)
        synced = make_set(1)
        items = tuple(rng.integers(0, 256, size=(90, 160, 3), dtype=np.uint8) for _ in range(NUM_CAMERAS))
        synced = SyncedSet(items, synced.stamps_ns, synced.first_arrival, synced.completed)
        # A loaded CI machine may take seconds per inference: keep the one set fresh for the whole test.
        with Harness(runner=runner, max_set_age_s=600.0) as h:
            h.worker.submit(synced)
            for q in ("What is ahead?", "Is it safe to turn left?"):
                h.worker.ask(q)
            assert wait_for(lambda: len(h.events) == 2, timeout=60)
            h.worker.set_budgets(0.25, None)
            h.worker.ask("And now?")
            assert wait_for(lambda: len(h.events) == 3, timeout=60)
        assert not h.drops
        assert h.events[0].answer.kept_per_view == [73] * 6
        assert h.events[2].answer.kept_per_view == [182] * 6
        for event in h.events:
            assert set(event.answer.timings_ms) >= {"preprocess", "vision", "prune", "prefill", "decode", "total"}
    finally:
        runner.close()


@pytest.mark.parametrize("reason", ["corrupt", "size"])
def test_decode_error_reason_reaches_on_drop(reason: str) -> None:
    def decode(item):
        raise ImageDecodeError(reason, "x")

    with Harness(decode=decode) as h:
        h.worker.submit(make_set(1))
        h.worker.ask("q")
        assert wait_for(lambda: h.drops)
    assert h.drops[0][0] == reason


def test_health_warns_when_cameras_stream_but_no_set_forms() -> None:
    clock = SimpleNamespace(now=100.0)
    health = HealthMonitor(CAMERA_NAMES, 1.0, stall_after_s=2.0, clock=lambda: clock.now)
    late = 0
    levels = []
    for _ in range(4):
        for _ in range(12):
            for cam in range(NUM_CAMERAS):
                health.frame(cam)
        late += 72
        clock.now += 1.0
        levels.append(health.report({"dropped.late": late, "frames_unmatched": 3}))
    assert [lvl for lvl, _, _ in levels] == [OK, OK, WARN, WARN]
    _, message, values = levels[-1]
    assert "cameras streaming but no synchronized set for 4.0 s" in message
    assert "older than their camera's last set" in message and "dropped.late +72" in message
    assert dict(values)["sets_per_s"] == "0.00"
    for cam in range(NUM_CAMERAS):
        health.frame(cam)
    health.synced()
    clock.now += 0.5
    assert health.report({"dropped.late": late})[0] == OK
