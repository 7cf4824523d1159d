"""The ROS-free service: records, streaming, cancellation, staleness and shutdown, with a fake clock.

Nothing here sleeps: the service's clock is moved by hand, and "nothing else happened" is checked after
``worker.settled()`` (the worker has looked at every input and waits).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.ros.records import ANSWER_KEYS, AnsweredRecord, Status
from prune2drive_ros.ros.service import Outputs, QuestionSources, VqaService, parse_cancel
from prune2drive_ros.ros.worker import LIVE, REPLAY
from prune2drive_ros.vlm.info import RunnerInfo

SWEEP_NS = 83_000_000  # 12 Hz
OFFSETS_MS = (15, 7, 22, 40, 49, 31)  # the nuScenes firing order


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def wait_for(predicate, timeout: float = 20.0) -> bool:
    """Poll a condition the worker thread will make true (real time bounds a hang, it decides nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


@dataclass
class Recorder:
    """The service's outputs, kept in order."""

    answers: list[str] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)
    streams: list[dict] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    mosaics: list[tuple[np.ndarray, int]] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)

    def outputs(self) -> Outputs:
        return Outputs(answer=self.answers.append, info=lambda text: self.infos.append(json.loads(text)),
                       stream=lambda text: self.streams.append(json.loads(text)), diagnostics=self.statuses.extend,
                       kept_tokens=lambda mosaic, stamp: self.mosaics.append((mosaic, stamp)))

    # the logger interface
    def info(self, message: str) -> None:
        self.logs.append(("info", message))

    def warning(self, message: str) -> None:
        self.logs.append(("warning", message))

    def error(self, message: str) -> None:
        self.logs.append(("error", message))

    def record(self, question_id: int) -> list[dict]:
        return [r for r in self.infos if r["id"] == question_id]

    def stream(self, question_id: int) -> list[dict]:
        return [r for r in self.streams if r["id"] == question_id]


@dataclass
class StandInAnswer:
    text: str
    token_ids: list[int]
    timings_ms: dict = field(default_factory=lambda: dict.fromkeys(
        ("preprocess", "vision", "prune", "prefill", "decode", "total"), 1.0))
    kept_per_view: list = field(default_factory=lambda: [7] * 6)
    visual_tokens: int = 6 * 65
    flops_ratio: float = 0.25
    prefix_reused: bool = False
    kept_indices: list = field(default_factory=lambda: [list(range(7))] * 6)
    path: str = "eager"
    paths: dict = field(default_factory=dict)


class SteppingRunner:
    """Decodes ``steps`` tokens per question, calling ``on_progress`` at every step like the real loop.

    ``before_step(step)`` runs before each step (the tests move the clock or cancel there); ``gate`` holds
    the first step until the test opens it."""

    def __init__(self, steps: int = 8) -> None:
        self.steps = steps
        self.before_step = lambda step: None
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.steps_run: list[int] = []
        self.calls: list[list[str]] = []

    def answer(self, images, questions, *, frame_key=None, on_progress=None):
        self.calls.append(list(questions))
        self.started.set()
        assert self.gate.wait(20)
        tokens = {i: [] for i in range(len(questions))}
        stopped: set[int] = set()
        for step in range(1, self.steps + 1):
            self.before_step(step)
            for i in tokens:
                if i not in stopped:
                    tokens[i].append(100 * i + step)
            self.steps_run.append(step)
            if on_progress is not None and step < self.steps:
                stopped |= set(on_progress({i: list(t) for i, t in tokens.items()}) or ())
                if len(stopped) == len(questions):
                    break
        return [StandInAnswer(self.text(t), t) for t in tokens.values()]

    def text(self, tokens):
        return " ".join(f"w{t}" for t in tokens)

    def set_budgets(self, retain=None, view_ratios=None):
        pass

    def info(self) -> RunnerInfo:
        return RunnerInfo(model="stand-in", device="cpu", dtype="float32", vision_backend="torch",
                          vision_reason="auto: no CUDA", pruning="tfps", prune_layer=1, budgets=(7,) * 6,
                          tokens_per_view=64, max_new_tokens=self.steps, warmup_ms=0.0)

    def close(self):
        pass


def _frame(stamp_ns: int, rgb: np.ndarray) -> SimpleNamespace:
    ok, jpg = cv2.imencode(".jpg", rgb)
    assert ok
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return SimpleNamespace(format="jpeg", data=jpg.tobytes(), header=SimpleNamespace(stamp=SimpleNamespace(
        sec=sec, nanosec=nanosec)))


class Harness:
    def __init__(self, runner=None, **values) -> None:
        self.clock = FakeClock()
        self.out = Recorder()
        self.runner = runner or SteppingRunner()
        self.service = VqaService(self.runner, values, self.out.outputs(), self.out, clock=self.clock, name="t")
        rng = np.random.default_rng(0)
        self.views = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(NUM_CAMERAS)]
        self.sweep = 0

    def __enter__(self) -> Harness:
        self.service.start()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.gate.set() if hasattr(self.runner, "gate") else None
        assert self.service.stop(20, "shutdown")

    def cameras(self, sweeps: int = 2) -> None:
        """Six frames per sweep at the rig's offsets; a set is certain once the next sweep arrives."""
        for _ in range(sweeps):
            base = 1_700_000_000_000_000_000 + self.sweep * SWEEP_NS
            for cam in sorted(range(NUM_CAMERAS), key=lambda c: OFFSETS_MS[c]):
                self.service.image(cam, _frame(base + OFFSETS_MS[cam] * 1_000_000, self.views[cam]))
            self.sweep += 1

    def ask(self, text: str, source: str = LIVE):
        return self.service.question(text, source)

    def busy_with(self, text: str):
        """Cameras on and ``text`` asked, its inference held at the runner's gate (the test opens it)."""
        self.runner.gate.clear()
        self.cameras()
        question = self.ask(text)
        assert self.runner.started.wait(10)
        return question

    def done(self, question_id: int) -> bool:
        return bool(self.out.record(question_id))


def test_an_answer_gets_one_typed_record_on_every_output() -> None:
    with Harness() as h:
        h.cameras()
        q = h.ask("What is ahead?")
        assert wait_for(lambda: h.done(q.id))
        assert h.service.worker.settled()
    (record,) = h.out.record(q.id)
    assert record["status"] == "answered" and record["question"] == "What is ahead?" and record["source"] == LIVE
    assert record["answer"] == h.out.answers[0] == " ".join(f"w{s}" for s in range(1, 9))
    assert record["tokens"] == 8 and record["kept_per_view"] == [7] * 6 and record["flops_ratio"] == 0.25
    assert record["frame_stamp_ns"] == 1_700_000_000_000_000_000 + 49_000_000  # exact: no text round trip
    assert {"sync_wait", "image_decode", "vision", "prefill", "decode", "total", "question_wait"} <= set(
        record["timings_ms"])
    assert record["vision_backend"] == "torch" and record["vision_backend_reason"] == "auto: no CUDA"
    (status,) = [s for s in h.out.statuses if s.name == "t: answer"]
    values = dict(status.values)
    assert set(ANSWER_KEYS) <= set(values) and values["question_id"] == str(q.id)
    assert values["kept_tokens"] == "42"


def test_a_record_serializes_once_and_reads_back_whole() -> None:
    record = AnsweredRecord(
        id=3, question="q", source=LIVE, answer="a", frame_stamp_ns=1_700_000_000_123_456_789,
        timings_ms={"total": 1.25}, batch_size=1, prefix_reused=True, visual_tokens=4380, kept_per_view=[73] * 6,
        flops_ratio=0.134, tokens=5, set_spread_ms=41.0, set_age_ms=2.0, pruning_method="tfps",
        vision_backend="torch", vision_backend_reason="", device="cpu", runtime_path="eager")
    assert record.json is record.json  # built once
    assert json.loads(record.json) == {**record.as_dict(), "frame_stamp": record.frame_stamp}
    assert json.loads(record.json)["frame_stamp_ns"] == 1_700_000_000_123_456_789


def test_streamed_partials_arrive_in_order_and_the_last_is_the_answer() -> None:
    runner = SteppingRunner(steps=30)
    with Harness(runner, stream_period_s=0.1) as h:
        runner.before_step = lambda step: h.clock.advance(0.04)  # a decode step takes 40 ms
        h.cameras()
        q = h.ask("Is it safe to turn left?")
        assert wait_for(lambda: h.done(q.id))
    stream = h.out.stream(q.id)
    partial, last = stream[:-1], stream[-1]
    assert last["done"] and last["text"] == h.out.answers[0] and last["tokens"] == 30
    assert not any(r["done"] for r in partial)
    counts = [r["tokens"] for r in partial]
    assert counts == sorted(set(counts)) and counts[0] == 1  # in order, no repeats, the first token at once
    # 30 steps of 40 ms, at most one message per 100 ms: every third step.
    assert np.diff(counts).min() >= 3 and len(partial) == 10
    for r in partial:
        assert last["text"].startswith(r["text"])


def test_a_stream_period_of_zero_streams_every_step() -> None:
    with Harness(stream_period_s=0.0) as h:
        h.cameras()
        q = h.ask("Ahead?")
        assert wait_for(lambda: h.done(q.id))
    assert [r["tokens"] for r in h.out.stream(q.id)] == [*range(1, 8), 8]


def test_cancelling_a_waiting_question_drops_only_it() -> None:
    runner = SteppingRunner()
    with Harness(runner) as h:
        first = h.busy_with("first")
        second, third = h.ask("second"), h.ask("third")
        assert h.service.cancel(str(second.id)) == [second.id]
        runner.gate.set()
        assert wait_for(lambda: h.done(first.id) and h.done(third.id))
        assert h.service.worker.settled()
    (record,) = h.out.record(second.id)
    assert record["status"] == "dropped" and record["reason"] == "cancelled" and "partial" not in record
    assert [r["status"] for r in h.out.record(first.id) + h.out.record(third.id)] == ["answered", "answered"]
    assert runner.calls == [["first"], ["third"]]
    assert h.service.counters()["dropped.cancelled"] == 1


def test_a_cancel_stops_the_decode_at_the_next_step_and_the_next_question_is_answered() -> None:
    runner = SteppingRunner(steps=64)
    with Harness(runner) as h:
        h.cameras()
        asked = {}

        def cancel_at_five(step: int) -> None:
            if step == 5 and "long" in asked:
                h.service.cancel(str(asked["long"].id))

        runner.before_step = cancel_at_five
        asked["long"] = h.ask("Describe everything.")
        assert wait_for(lambda: h.done(asked["long"].id))
        steps_of_the_cancelled = list(runner.steps_run)
        after = h.ask("And now?")
        assert wait_for(lambda: h.done(after.id))
    # The cancel came before step 5; the step's check ended the decode: no step 6.
    assert steps_of_the_cancelled == [1, 2, 3, 4, 5]
    (record,) = h.out.record(asked["long"].id)
    assert record["reason"] == "cancelled" and record["partial"] == " ".join(f"w{s}" for s in range(1, 6))
    assert h.out.stream(asked["long"].id)[-1]["done"]
    assert h.out.record(after.id)[0]["status"] == "answered"


def test_a_cancel_names_only_its_question_in_a_batch() -> None:
    runner = SteppingRunner(steps=10)
    with Harness(runner) as h:
        warm = h.busy_with("warm-up")
        a, b = h.ask("a"), h.ask("b")
        runner.before_step = lambda step: step == 3 and len(runner.calls) == 2 and h.service.cancel(f"{b.id}")
        runner.gate.set()
        assert wait_for(lambda: all(h.done(q.id) for q in (warm, a, b)))
    assert runner.calls[1] == ["a", "b"]
    assert h.out.record(a.id)[0]["answer"] == " ".join(f"w{s}" for s in range(1, 11))
    assert h.out.record(b.id)[0]["reason"] == "cancelled"
    assert h.out.record(b.id)[0]["partial"] == " ".join(f"w{100 + s}" for s in range(1, 4))


def test_cancel_all_and_a_bad_cancel() -> None:
    runner = SteppingRunner()
    with Harness(runner) as h:
        questions = [h.busy_with("q0"), h.ask("q1"), h.ask("q2")]
        assert h.service.cancel("not-an-id") == []
        assert sorted(h.service.cancel("all")) == sorted(q.id for q in questions)
        runner.gate.set()
        assert wait_for(lambda: all(h.done(q.id) for q in questions))
        assert h.service.worker.settled()
    assert [h.out.record(q.id)[0]["reason"] for q in questions] == ["cancelled"] * 3
    assert h.service.counters()["dropped.bad_cancel"] == 1


@pytest.mark.parametrize(("text", "ids"), [("all", None), ("*", None), (" 12 ", [12]), ("3,4", [3, 4]),
                                           ("5 6", [5, 6])])
def test_cancel_messages(text: str, ids) -> None:
    assert parse_cancel(text) == ids


@pytest.mark.parametrize("text", ["", "twelve", "3,x", "-1"])
def test_bad_cancel_messages(text: str) -> None:
    with pytest.raises(ValueError, match="question ids"):
        parse_cancel(text)


def test_a_question_whose_set_went_stale_while_it_waited_is_dropped_with_the_reason() -> None:
    runner = SteppingRunner()
    with Harness(runner, max_answer_age_s=1.0) as h:
        first = h.busy_with("first")
        waiting = h.ask("asked while the set was fresh")
        h.clock.advance(2.5)  # the inference ahead of it took long and the cameras stopped
        runner.gate.set()
        assert wait_for(lambda: h.done(waiting.id))
        h.cameras()  # fresh sets: answered again
        fresh = h.ask("now?")
        assert wait_for(lambda: h.done(fresh.id))
    assert h.out.record(first.id)[0]["status"] == "answered"
    (record,) = h.out.record(waiting.id)
    assert record["reason"] == "stale" and "max_answer_age_s 1" in record["detail"]
    assert h.out.record(fresh.id)[0]["status"] == "answered"


def test_stopping_ends_a_decode_within_a_step_and_says_why() -> None:
    runner = SteppingRunner(steps=1000)
    h = Harness(runner)
    h.service.start()
    h.cameras()
    runner.before_step = lambda step: step == 3 and threading.Thread(target=h.service.stop, args=(20, "shutdown")).start()
    q = h.ask("long answer")
    assert wait_for(lambda: h.done(q.id))
    assert wait_for(lambda: not h.service.worker.running)
    assert runner.steps_run[-1] <= 4
    (record,) = h.out.record(q.id)
    assert record["reason"] == "shutdown" and record["partial"].startswith("w1 w2 w3")


def test_refused_questions_and_frames_are_counted_and_logged_in_aggregate() -> None:
    with Harness() as h:
        for _ in range(3):
            h.ask("   ")
        h.ask("why? " * 500)
        bad = SimpleNamespace(format="jpeg", data=b"\xff\xd8\xff" + bytes(100),
                              header=SimpleNamespace(stamp=SimpleNamespace(sec=5, nanosec=0)))
        for _ in range(4):
            h.service.image(0, bad)
        counters = h.service.counters()
    assert counters["dropped.empty_question"] == 3 and counters["dropped.long_question"] == 1
    assert counters["dropped.corrupt"] == 4 and counters["frames_dropped"] == 4
    assert sum("[empty_question]" in m for _, m in h.out.logs) == 1  # repeats summed up, not one line each
    assert [r["reason"] for r in h.out.infos] == ["empty_question"] * 3 + ["long_question"]


def test_health_reports_through_the_outputs() -> None:
    with Harness() as h:
        h.cameras(3)
        h.clock.advance(1.0)
        h.service.publish_health()
        h.clock.advance(5.0)  # every camera silent
        h.service.publish_health()
    first, second = [s for s in h.out.statuses if s.name == "t: health"]
    assert first.level == 0 and dict(first.values)["sets_total"] == "2"
    assert second.level == 2 and "silent" in second.message


def test_question_sources() -> None:
    """Replayed while a bag player published it (by GID); without GIDs (Jazzy, Humble) only while bag
    players are the topic's only publishers."""
    publishers = [("prune2drive_player", (1,) * 16), ("teleop_console", (2,) * 16)]
    sources = QuestionSources(lambda: publishers)
    assert sources.source((1,) * 16) == REPLAY and sources.source((2,) * 16) == LIVE
    assert sources.source((9,) * 16) == LIVE  # not discovered yet: a person's, to be safe
    assert sources.source(None) == LIVE
    assert QuestionSources(lambda: [("prune2drive_player", (1,)), ("rosbag2_player", (2,))]).source(None) == REPLAY
    assert QuestionSources(lambda: []).source(None) == LIVE


# -- the target with the real test-bed model on the CPU ------------------------------------------------

@pytest.fixture(scope="module")
def testbed_runner():
    from prune2drive_ros.training import shipped_testbed
    from prune2drive_ros.vlm import VLMRunner

    folder = shipped_testbed()
    if folder is None:
        pytest.skip("no shipped models/testbed in this checkout")
    runner = VLMRunner.from_pretrained(str(folder), device="cpu", dtype="float32", max_new_tokens=64)
    runner.eos_token_ids = [-1]  # no stop token: every answer decodes all 64 tokens unless stopped
    yield runner
    runner.close()


def test_a_cancel_frees_the_worker_within_two_decode_steps_on_the_test_bed(testbed_runner) -> None:
    """A cancel arrives while a 64-token answer decodes; the decode ends within two steps of it, and the
    next question is answered."""
    with Harness(testbed_runner, stream_period_s=0.0) as h:
        h.cameras()
        long = h.ask("What are the important objects in the current scene?")
        assert wait_for(lambda: len(h.out.stream(long.id)) >= 5, 120)
        assert h.service.cancel(str(long.id)) == [long.id]
        # Read after the cancel returned: the decode had reached at least this step when it arrived.
        tokens_at_cancel = max(r["tokens"] for r in h.out.stream(long.id) if not r["done"])
        assert wait_for(lambda: h.done(long.id), 60)
        (record,) = h.out.record(long.id)
        last = h.out.stream(long.id)[-1]
        assert record["reason"] == "cancelled" and last["done"]
        steps_after_cancel = last["tokens"] - tokens_at_cancel
        print(f"cancel at {tokens_at_cancel} tokens; the decode ended {steps_after_cancel} step(s) later")
        assert steps_after_cancel <= 2 and last["tokens"] < 64
        h.clock.advance(0.1)
        h.cameras()
        nxt = h.ask("Is there a cone?")
        assert wait_for(lambda: h.done(nxt.id), 120)
    answered = h.out.record(nxt.id)[0]
    assert answered["status"] == "answered" and answered["tokens"] == 64


def test_the_shipped_test_bed_streams_what_it_answers(testbed_runner) -> None:
    with Harness(testbed_runner, stream_period_s=0.0) as h:
        h.cameras()
        q = h.ask("Is there a cone?")
        assert wait_for(lambda: h.done(q.id), 120)
    stream = h.out.stream(q.id)
    assert [r["tokens"] for r in stream] == list(range(1, 65)) and [r["done"] for r in stream] == [False] * 63 + [True]
    assert stream[-1]["text"] == h.out.answers[0] == h.out.record(q.id)[0]["answer"]

