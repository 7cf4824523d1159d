"""``VqaService``: everything the node does between its subscriptions and its publishers, without ROS.

    frames ──► checks ──► Synchronizer ──► InferenceWorker (thread) ──► runner.answer ──► records ──► outputs
    questions ─► checks ─► queues (live | replay | standing) ─┘      ▲ cancel / stop at every decode step

The service owns the synchronizer, the worker, camera health, the question sources and queues, the drop
counters (with a throttled log), the typed answer records and the answer stream. It talks to the world
through ``Outputs`` (callables the node binds to its publishers) and a logger, and reads time from an
injected clock, so tests drive it with a fake clock and no DDS.

Every question gets an id and ends in exactly one ``/vlm/answer_info`` record: answered, or dropped
with a reason (``records.DroppedRecord``; cancelled and stale questions too). While a batch decodes,
each question's partial text goes out as a ``StreamRecord`` at most every ``stream_period_s``; the last
one (``done``) carries the whole answer, the same text as ``/vlm/answer``.
"""

from __future__ import annotations

import functools
import gc
import math
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from prune2drive_ros import settings
from prune2drive_ros.cameras import CAMERA_NAMES, NUM_CAMERAS
from prune2drive_ros.ros import image_codec
from prune2drive_ros.ros.diagnostics import ERROR, OK, WARN, HealthMonitor
from prune2drive_ros.ros.image_codec import ImageDecodeError
from prune2drive_ros.ros.records import AnsweredRecord, DroppedRecord, Status, StreamRecord
from prune2drive_ros.ros.synchronizer import LATE, TIME_JUMP, Synchronizer
from prune2drive_ros.ros.worker import LIVE, REPLAY, AnswerEvent, InferenceWorker, Question
from prune2drive_ros.settings import ERROR_FACTOR, MAX_QUESTION_CHARS
from prune2drive_ros.vlm.info import RunnerInfo

QUESTION_QUEUE_SIZE = 16
"""Live questions waiting for inference (a full queue drops its oldest)."""
REPLAY_QUEUE_SIZE = 64
"""Questions played back from a bag: a DriveLM keyframe asks up to ~20 at once."""
QUESTION_TIMEOUT_S = 30.0
"""How long a question waits for a synchronized camera set before it is dropped."""
MAX_BATCH = 8
LOG_PERIOD_S = 5.0
"""Repeats of one warning are summed up in one line at most this often."""
FRAME_LOG_PERIOD_S = 30.0
"""The same for frame drops (late frames, time jumps): a looping bag makes them routine."""
REPLAY_PUBLISHERS = ("prune2drive_player", "rosbag2_player")
"""Node names of bag players (``prune2drive play``, ``ros2 bag play``): their questions are replayed ones."""

# Drop reasons for frames (counted into frames_dropped) and for everything else.
FRAME_REASONS = ("no_stamp", "empty", "format", "encoding", "size", "length", "corrupt", "size_mismatch",
                 "time_jump", "late")
QUESTION_REASONS = ("empty_question", "long_question", "bad_question", "question_overflow", "no_camera_set",
                    "inference_error", "cancelled", "stale", "not_active", "shutdown")
OTHER_REASONS = (*QUESTION_REASONS, "bad_cancel", "budget", "publish_error", "worker_error", "kept_tokens")


class Runner(Protocol):
    """What the service needs of a runner (``prune2drive_ros.vlm.VLMRunner`` is one)."""

    def answer(self, images: Sequence[np.ndarray], questions: Sequence[str], *, frame_key: Any = None,
               on_progress: Callable[[Mapping[int, list[int]]], Iterable[int] | None] | None = None) -> list[Any]: ...

    def set_budgets(self, retain: float | None = None, view_ratios: Sequence[float] | None = None) -> None: ...

    def text(self, tokens: Sequence[int]) -> str: ...

    def info(self) -> RunnerInfo: ...

    def close(self) -> None: ...


class Logger(Protocol):
    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...

    def error(self, message: str) -> Any: ...


@dataclass
class Outputs:
    """Where the service's results go; the node binds these to its publishers."""

    answer: Callable[[str], None]
    """The answer text (/vlm/answer)."""
    info: Callable[[str], None]
    """One JSON record per question (/vlm/answer_info)."""
    stream: Callable[[str], None]
    """Partial answers, JSON (/vlm/answer_stream)."""
    diagnostics: Callable[[list[Status]], None]
    kept_tokens: Callable[[np.ndarray, int], None]
    """The kept-token mosaic (RGB) and its frame stamp in ns (/vlm/kept_tokens)."""


SERVICE_SETTINGS = ("sync_slop_s", "sync_queue_size", "camera_timeout_s", "questions", "max_answer_age_s",
                    "stream_period_s", "publish_kept_tokens", "retain", "view_ratios")
"""The node parameters the service reads (names and defaults: ``prune2drive_ros.settings``)."""


class _Throttle:
    """One log line per key at most every ``period`` s, saying how many were left out in between."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def __call__(self, key: str, period: float) -> int | None:
        """None: stay quiet; else the number of lines skipped since the last one."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < period:
                self._skipped[key] += 1
                return None
            self._last[key] = now
            return self._skipped.pop(key, 0)


class QuestionSources:
    """Tells replayed questions (a bag player published them) from live ones.

    ``publishers()`` lists the question topic's publishers as (node name, GID). rclpy from Kilted on names
    each message's publisher (its GID); before that (Jazzy, Humble) a question counts as replayed only
    while bag players are the topic's only publishers, so a person's is never mistaken for one.
    """

    def __init__(self, publishers: Callable[[], list[tuple[str, tuple[int, ...]]]]) -> None:
        self._publishers = publishers
        self._by_gid: dict[tuple[int, ...], str] = {}

    def source(self, gid: tuple[int, ...] | None) -> str:
        if gid is None:
            names = [name for name, _ in self._publishers()]
            return REPLAY if names and all(n in REPLAY_PUBLISHERS for n in names) else LIVE
        source = self._by_gid.get(gid)
        if source is None:
            if len(self._by_gid) > 1024:  # publishers come and go: bound the cache
                self._by_gid.clear()
            for name, endpoint in self._publishers():
                self._by_gid[endpoint] = REPLAY if name in REPLAY_PUBLISHERS else LIVE
            source = self._by_gid.get(gid, LIVE)
        return source


def parse_cancel(text: str) -> list[int] | None:
    """Question ids from a /vlm/cancel message: ``all`` (or ``*``) -> None, ``3``, ``3 4``, ``3,4`` -> ids."""
    words = [w for w in re.split(r"[,\s]+", text.strip()) if w]
    if len(words) == 1 and words[0].lower() in ("all", "*"):
        return None
    if not words or not all(w.isdigit() for w in words):
        raise ValueError(f"a cancel names question ids (e.g. '12' or '12,13') or 'all', got {text[:80]!r}")
    return [int(w) for w in words]


class VqaService:
    """Cameras and questions in, answers, records, streams and health out; see the module docstring."""

    def __init__(self, runner: Runner, values: Mapping[str, Any], outputs: Outputs, logger: Logger, *,
                 clock: Callable[[], float] = time.monotonic, name: str = "drive_vqa") -> None:
        """``values``: node parameter values by name (``SERVICE_SETTINGS``; missing ones take their defaults)."""
        self.runner = runner
        self.info = runner.info()
        self._outputs = outputs
        self._log = logger
        self._clock = clock
        self._name = name
        self._values = {key: values.get(key, settings.default(key)) for key in SERVICE_SETTINGS}
        self._lock = threading.Lock()
        self._drops: Counter[str] = Counter()
        self._throttle = _Throttle(clock)
        self._streamed: dict[int, tuple[float, int]] = {}  # question id -> (time, tokens) of its last message
        self._health_logged = (OK, "")
        self._render_kept: Callable[..., np.ndarray] | None = None
        v = self._values
        self.sync = Synchronizer(NUM_CAMERAS, slop=v["sync_slop_s"], queue_size=v["sync_queue_size"], clock=clock)
        self.health = HealthMonitor(CAMERA_NAMES, v["camera_timeout_s"], error_factor=ERROR_FACTOR,
                                    stall_after_s=_stall_after(v["camera_timeout_s"]), clock=clock)
        self.worker = InferenceWorker(
            runner, functools.partial(image_codec.decode, max_side=image_codec.DEFAULT_MAX_SIDE),
            on_answer=self._answered, on_drop=self.drop, on_question_dropped=self._question_dropped,
            on_tokens=self._stream, max_questions=QUESTION_QUEUE_SIZE, max_replay_questions=REPLAY_QUEUE_SIZE,
            max_batch=MAX_BATCH, max_set_age_s=self._max_set_age(), question_timeout_s=QUESTION_TIMEOUT_S,
            max_answer_age_s=v["max_answer_age_s"], clock=clock)
        self.worker.set_standing(v["questions"] or [])

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.health.start()
        self.sync.reset()
        self.worker.start()

    def stop(self, timeout: float, reason: str = "not_active") -> bool:
        """Stop answering: decoding questions stop within a step, waiting ones are dropped with ``reason``.
        False if an inference is still running after ``timeout`` s (then keep the runner open)."""
        stopped = self.worker.stop(timeout, reason)
        if not stopped:
            self._log.error(f"inference did not finish within {timeout:g} s")
        self.worker.drain(reason, "the node stopped listening before it was answered")
        self.sync.reset()
        return stopped

    def close(self) -> None:
        """Release the runner and its (GPU) memory; call after a successful ``stop``."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()  # the cached blocks too, so other processes see the memory free

    def update(self, changed: Mapping[str, Any]) -> None:
        """Apply run-time parameter changes (already checked)."""
        self._values.update((k, v) for k, v in changed.items() if k in self._values)
        v = self._values
        if changed.keys() & {"retain", "view_ratios"}:
            self.worker.set_budgets(v["retain"], v["view_ratios"] or None)
            self._log.info(f"token budgets: retain={v['retain']} view_ratios={v['view_ratios']}")
        if "camera_timeout_s" in changed:
            self.health.camera_timeout_s = v["camera_timeout_s"]
            self.health.stall_after_s = _stall_after(v["camera_timeout_s"])
            self.worker.max_set_age_s = self._max_set_age()
        if "questions" in changed:
            self.worker.set_standing(v["questions"] or [])
        if "max_answer_age_s" in changed:
            self.worker.max_answer_age_s = v["max_answer_age_s"]

    def _max_set_age(self) -> float:
        # A set older than the camera timeout no longer shows the scene; questions wait for a new one.
        return max(self._values["camera_timeout_s"], 2 * self._values["sync_slop_s"])

    # -- inputs ----------------------------------------------------------------------------------

    def image(self, index: int, msg: Any) -> None:
        """One camera frame (a sensor_msgs Image or CompressedImage, or anything shaped like one)."""
        camera = CAMERA_NAMES[index]
        self.health.frame(index)
        stamp = msg.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        if stamp_ns <= 0:
            self.drop("no_stamp", f"{camera}: frame without a header stamp dropped")
            return
        try:
            image_codec.image_size(msg, max_side=image_codec.DEFAULT_MAX_SIDE)
        except ImageDecodeError as exc:
            self.drop(exc.reason, f"{camera}: frame dropped: {exc}")
            return
        outcome, sets = self.sync.add(index, stamp_ns, msg)
        if outcome == TIME_JUMP:
            self.worker.forget_set()
            self.drop("time_jump", f"{camera}: camera time went back (bag loop?); synchronizer reset")
        elif outcome == LATE:
            self.drop("late", f"{camera}: frame not newer than this camera's last one dropped")
        for synced in sets:
            self.health.synced()
            self.worker.submit(synced)

    def question(self, text: str, source: str = LIVE) -> Question:
        """A question from /vlm/question; returns it with its id (also when it is refused at the door)."""
        text = text.strip()
        question = Question(text, source, self._clock())
        if not text:
            self._refuse(question, "empty_question", "empty question ignored")
        elif len(text) > MAX_QUESTION_CHARS:
            self._refuse(question, "long_question",
                         f"question of {len(text)} characters ignored (bound {MAX_QUESTION_CHARS})")
        else:
            self.worker.ask(question)
        return question

    def cancel(self, text: str) -> list[int]:
        """A /vlm/cancel message: question ids or ``all``; returns the ids that were still open."""
        try:
            ids = parse_cancel(text)
        except ValueError as exc:
            self.drop("bad_cancel", str(exc))
            return []
        found = self.worker.cancel(ids)
        self._log.info(f"cancel {'all' if ids is None else ids}: {len(found)} open question(s) cancelled")
        return found

    def standing_due(self) -> None:
        self.worker.standing_due()

    def _refuse(self, question: Question, reason: str, message: str) -> None:
        self.drop(reason, message)
        self._question_dropped(question, reason, message)

    # -- drops and the log -------------------------------------------------------------------------

    def drop(self, reason: str, message: str) -> None:
        """Count a drop and log it; repeats of one reason are summed up in one line per period."""
        with self._lock:
            self._drops[reason] += 1
        period = FRAME_LOG_PERIOD_S if reason in FRAME_REASONS else LOG_PERIOD_S
        skipped = self._throttle(reason, period)
        if skipped is None:
            return
        more = f" (+{skipped} more {reason} in the last {period:g} s)" if skipped else ""
        if reason in ("time_jump", "cancelled"):
            self._log.info(message + more)  # a looping bag, a user's cancel: routine, not a fault
        else:
            self._log.warning(f"[{reason}] {message}{more}")

    # -- outputs ---------------------------------------------------------------------------------

    def _status(self, level: int, name: str, message: str, values: list[tuple[str, str]]) -> Status:
        return Status(level, f"{self._name}: {name}", message, values)

    def _answered(self, event: AnswerEvent) -> None:
        """Called on the worker thread for each answered question."""
        answer, question, synced = event.answer, event.question, event.synced
        self._outputs.stream(StreamRecord(question.id, answer.text, len(answer.token_ids), done=True).json)
        self._streamed.pop(question.id, None)
        self._outputs.answer(answer.text)
        timings = {"sync_wait": synced.wait_s * 1000.0, "image_decode": event.image_decode_ms,
                   **{k: float(v) for k, v in answer.timings_ms.items()}, "question_wait": event.wait_ms}
        record = AnsweredRecord(
            id=question.id, question=question.text, source=question.source, answer=answer.text,
            frame_stamp_ns=synced.stamp_ns, timings_ms=timings, batch_size=event.batch_size,
            prefix_reused=answer.prefix_reused, visual_tokens=answer.visual_tokens,
            kept_per_view=list(answer.kept_per_view), flops_ratio=answer.flops_ratio, tokens=len(answer.token_ids),
            set_spread_ms=synced.spread_s * 1000.0, set_age_ms=event.set_age_ms, pruning_method=self.info.pruning,
            vision_backend=self.info.vision_backend, vision_backend_reason=self.info.vision_reason,
            device=self.info.device,
            runtime_path="; ".join(f"{stage}: {path}" for stage, path in answer.paths.items()) or answer.path)
        self._outputs.info(record.json)
        self._outputs.diagnostics([self._status(OK, "answer", answer.text[:200], record.diagnostic_values())])
        if self._values["publish_kept_tokens"]:
            self._publish_kept_tokens(event)

    def _question_dropped(self, question: Question, reason: str, message: str, partial: Any = None) -> None:
        """Called for every question that will not be answered (any thread); ``partial``: the ``Answer`` so far
        of a question stopped while it decoded."""
        text = None if partial is None else partial.text
        record = DroppedRecord(question.id, question.text, question.source, reason, message, text)
        streamed = self._streamed.pop(question.id, None)
        try:
            if partial is not None or streamed is not None:  # the stream's listeners learn it has ended
                tokens = len(partial.token_ids) if partial is not None else streamed[1]
                self._outputs.stream(StreamRecord(question.id, text or "", tokens, done=True).json)
            self._outputs.info(record.json)
            self._outputs.diagnostics([self._status(WARN, "question dropped", f"{reason}: {message}",
                                                    record.diagnostic_values())])
        except Exception as exc:  # publishing while the node shuts down
            self.drop("publish_error", f"{type(exc).__name__}: {exc}")

    def _stream(self, question: Question, tokens: list[int]) -> None:
        """The worker's per-step hook: a partial answer at most every stream_period_s per question."""
        now = self._clock()
        last = self._streamed.get(question.id)
        if last is not None and (now - last[0] < self._values["stream_period_s"] or len(tokens) == last[1]):
            return
        self._streamed[question.id] = (now, len(tokens))
        self._outputs.stream(StreamRecord(question.id, self.runner.text(tokens), len(tokens)).json)

    def _publish_kept_tokens(self, event: AnswerEvent) -> None:
        if self._render_kept is None:
            try:
                from prune2drive_ros.pruning.render import render_kept_tokens
            except ImportError as exc:
                self.drop("kept_tokens", f"kept-token mosaic unavailable: {exc}")
                return
            self._render_kept = render_kept_tokens
        grid = math.isqrt(self.info.tokens_per_view)
        mosaic = self._render_kept(event.images, event.answer.kept_indices, grid=grid)
        self._outputs.kept_tokens(mosaic, event.synced.stamp_ns)

    # -- health ----------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """Counters of the health status (also what the demo and tests read)."""
        with self._lock:
            drops = dict(self._drops)
        stats = self.sync.stats()
        counters: dict[str, Any] = {
            "sets_total": stats.sets, "frames_unmatched": stats.frames_unmatched,
            "sync_queue_sizes": ",".join(map(str, stats.queue_sizes)),
            "sync_queue_max": max(stats.queue_sizes, default=0), **self.worker.stats()}
        counters["frames_dropped"] = sum(drops.get(r, 0) for r in FRAME_REASONS)
        for reason in (*FRAME_REASONS, *OTHER_REASONS):
            counters[f"dropped.{reason}"] = drops.get(reason, 0)
        return counters

    def publish_health(self) -> None:
        level, message, values = self.health.report(self.counters())
        self._outputs.diagnostics([self._status(level, "health", message, values)])
        self._log_health(level, message)

    def _log_health(self, level: int, message: str) -> None:
        """Log health changes, and a standing WARN/ERROR again now and then (the same text as /diagnostics)."""
        kind = message.split(" for ")[0].split(" silent ")[0]  # the message without its running seconds
        changed = (level, kind) != self._health_logged
        self._health_logged = (level, kind)
        if level == OK:
            if changed:
                self._log.info(f"health OK: {message}")
        elif changed or self._throttle(f"health:{kind}", FRAME_LOG_PERIOD_S) is not None:
            self._log.warning(f"health {'WARN' if level == WARN else 'ERROR'}: {message}")


def _stall_after(camera_timeout_s: float) -> float:
    return max(2.0, camera_timeout_s)


__all__ = ["ERROR", "FRAME_REASONS", "OTHER_REASONS", "Outputs", "QuestionSources", "Runner", "VqaService",
           "parse_cancel"]
