"""The inference worker: answers questions on the latest synchronized set, off the executor (no ROS).

Subscriptions keep flowing during a one-second inference because the executor only hands sets and
questions over; this thread does the decoding and the model work.

- Sets: a single slot holds the most recent set. A newer set replaces it; one that arrives while an
  inference runs and is replaced before the worker could use it counts as ``sets_dropped``.
- Questions: two bounded FIFOs, one per source. ``live`` questions (a person, an application) always go
  first; ``replay`` questions (recorded in a bag and played back) fill the rest of a batch. A full queue
  drops its own oldest question, so a replay flood can never push out a live question. The worker takes
  the pending questions (up to ``max_batch``) and answers them in one ``runner.answer`` call on the most
  recent set, so they share its visual prefix. Standing questions are a flag, not queue entries, so a
  period shorter than an inference cannot pile them up.
- A question is answered on the newest set that was fresh when it was asked (completed at most
  ``max_set_age_s`` before it) or on any newer one; it waits for such a set at most ``question_timeout_s``.
  So the questions of a bag's last keyframe are still answered after the replay ends, and a question
  is never answered on a view older than the one the asker saw.
- Every question ends in exactly one of ``on_answer`` or ``on_question_dropped`` (with a reason): overflow,
  no camera set in time, a failed inference, cancelled, stale (its newest set older than
  ``max_answer_age_s`` when its inference would start), or the worker stopping.
- ``cancel`` drops the named questions (or all) while they wait, and stops them while they decode: the
  runner's progress hook asks at every decode step which questions to stop, so a cancelled question,
  or every question on ``stop``, frees the worker within a step. ``on_tokens`` hears each question's
  tokens so far at every step (for streaming).
- The decoded images of the last set are kept, so more questions on the same set skip decoding.
- Budget changes are applied between inferences, never during one.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prune2drive_ros import settings
from prune2drive_ros.ros.image_codec import ImageDecodeError
from prune2drive_ros.ros.synchronizer import SyncedSet

LIVE, REPLAY, STANDING = "live", "replay", "standing"
"""Question sources: on-demand questions, questions played back from a bag, the standing questions."""

_question_ids = itertools.count(1)


@dataclass(frozen=True)
class Question:
    text: str
    source: str = LIVE
    asked: float = 0.0
    """Clock reading when it arrived."""
    id: int = field(default_factory=lambda: next(_question_ids))


@dataclass
class AnswerEvent:
    question: Question
    answer: Any
    """``prune2drive_ros.vlm.Answer``."""
    synced: SyncedSet = field(repr=False)
    images: list[np.ndarray] = field(repr=False)
    image_decode_ms: float
    batch_size: int
    set_age_ms: float
    """From the set's completion to the start of its inference."""
    wait_ms: float = 0.0
    """From the question's arrival to the start of its inference."""


class InferenceWorker:
    def __init__(
        self,
        runner: Any,
        decode: Callable[[Any], np.ndarray],
        *,
        on_answer: Callable[[AnswerEvent], None],
        on_drop: Callable[[str, str], None],
        on_question_dropped: Callable[[Question, str, str, Any], None] | None = None,
        on_tokens: Callable[[Question, list[int]], None] | None = None,
        max_questions: int = 16,
        max_replay_questions: int | None = None,
        max_batch: int = 8,
        max_set_age_s: float = 1.0,
        question_timeout_s: float = 30.0,
        max_answer_age_s: float = settings.default("max_answer_age_s"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_drop(reason, message)`` counts every drop; ``on_question_dropped(question, reason, message,
        partial)`` also hears which question it was (after ``on_drop``; ``partial`` is the ``Answer`` so far of
        a question stopped while it decoded, else None). ``on_tokens(question, tokens)`` runs at every decode step."""
        self.runner = runner
        self._decode = decode
        self._on_answer = on_answer
        self._on_drop = on_drop
        self._on_question_dropped = on_question_dropped
        self._on_tokens = on_tokens
        self.max_batch = max_batch
        self.max_answer_age_s = max_answer_age_s
        self.max_set_age_s = max_set_age_s
        self.question_timeout_s = question_timeout_s
        self._clock = clock
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Question]] = {
            LIVE: deque(maxlen=max_questions),
            REPLAY: deque(maxlen=max_replay_questions or max_questions),
        }
        self._standing: list[str] = []
        self._standing_due = False
        self._latest: SyncedSet | None = None
        self._latest_serial = 0
        self._latest_used = False
        self._bad_serial = -1
        self._decoded: tuple[int, list[np.ndarray], float] | None = None
        self._budgets: dict[str, Any] | None = None
        self._busy = False
        self._stop = False
        self._stop_reason = "shutdown"
        self._running: dict[int, Question] = {}
        self._cancelled: set[int] = set()
        self._inputs = 0  # inputs so far; the thread notes how many it has looked at when it parks
        self._parked_at = -1
        self._thread: threading.Thread | None = None
        self.answers = 0
        self.inferences = 0
        self.sets_in = 0
        self.sets_dropped = 0
        self.questions_dropped = 0

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            self._stop = False
            if self._thread is not None and self._thread.is_alive():
                return  # a stop() that timed out: that thread carries on
            self._thread = threading.Thread(target=self._run, name="drive_vqa_inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0, reason: str = "shutdown") -> bool:
        """Stop; False if an inference is still running after ``timeout`` seconds.

        Questions being decoded stop at the next decode step and are dropped with ``reason``; vision and
        prefill run to their end. Idempotent and bounded: call it again to wait more. A False means the
        runner is still in use and must not be closed yet.
        """
        with self._cond:
            if not self._stop:
                self._stop_reason = reason
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return True
        thread.join(max(timeout, 0.0))
        if thread.is_alive():
            return False
        with self._cond:
            if self._thread is thread:
                self._thread = None
        return True

    def drain(self, reason: str, message: str) -> int:
        """Report every waiting question as dropped (the node stops listening); returns how many."""
        with self._cond:
            waiting = [q for queue in self._queues.values() for q in queue]
            for queue in self._queues.values():
                queue.clear()
            self._standing_due = False
        for question in waiting:
            self._dropped(question, reason, message)
        return len(waiting)

    def cancel(self, ids: Collection[int] | None = None) -> list[int]:
        """Cancel the questions with these ids (None: all), waiting or being decoded; returns the ids found.

        Waiting ones are dropped now; ones being decoded stop at the next step and are dropped then, both
        with reason ``cancelled``. Other questions are not affected."""
        with self._cond:
            waiting = []
            for queue in self._queues.values():
                keep = [q for q in queue if ids is not None and q.id not in ids]
                waiting += [q for q in queue if ids is None or q.id in ids]
                queue.clear()
                queue.extend(keep)
            running = [i for i in self._running if ids is None or i in ids]
            self._cancelled.update(running)
            self._inputs += 1
        for question in waiting:
            self._dropped(question, "cancelled", "cancelled while it waited")
        return [q.id for q in waiting] + running

    def wake(self) -> None:
        """Look at the queues again now (after a clock jump: a fake clock in tests, a resumed process)."""
        with self._cond:
            self._inputs += 1
            self._cond.notify_all()

    def settled(self, timeout: float = 10.0) -> bool:
        """Wait until the thread has handled every input so far and waits for more (tests use it to check
        that nothing happens, without sleeping)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._parked_at == self._inputs and not self._busy):
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- inputs (called from the executor) -------------------------------------------------------

    def submit(self, synced: SyncedSet) -> None:
        with self._cond:
            if self._latest is not None and not self._latest_used and self._busy:
                self.sets_dropped += 1
            self._latest = synced
            self._latest_serial += 1
            self._latest_used = False
            self.sets_in += 1
            self._inputs += 1
            self._cond.notify()

    def forget_set(self) -> None:
        """Drop the held set (time ran backwards: it belongs to another timeline); questions wait."""
        with self._cond:
            self._latest = None
            self._inputs += 1

    def ask(self, question: str | Question, source: str = LIVE) -> Question:
        """Queue a question (text or a ready ``Question``); returns it, with its id."""
        if isinstance(question, str):
            question = Question(question, source, self._clock())
        queue = self._queues[question.source]
        dropped = None
        with self._cond:
            if len(queue) == queue.maxlen:
                dropped = queue.popleft()
            queue.append(question)
            self._inputs += 1
            self._cond.notify()
        if dropped is not None:
            self._dropped(dropped, "question_overflow",
                          f"{dropped.source} question queue full ({queue.maxlen}); dropped the oldest")
        return question

    def set_standing(self, questions: Sequence[str]) -> None:
        with self._cond:
            self._standing = list(questions)

    def standing_due(self) -> None:
        with self._cond:
            if self._standing:
                self._standing_due = True
                self._inputs += 1
                self._cond.notify()

    def set_budgets(self, retain: float | None, view_ratios: Sequence[float] | None) -> None:
        """Apply now if idle, else before the next inference (never under a running one)."""
        budgets = {"retain": retain, "view_ratios": list(view_ratios) if view_ratios else None}
        with self._cond:
            if self.running:
                self._budgets = budgets
                self._cond.notify()
                return
        self._apply_budgets(budgets)

    def queue_depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "answers": self.answers,
                "inferences": self.inferences,
                "sets_dropped": self.sets_dropped,
                "questions_dropped": self.questions_dropped,
                "question_queue_depth": sum(len(q) for q in self._queues.values()),
                "question_queue_depth.live": len(self._queues[LIVE]),
                "question_queue_depth.replay": len(self._queues[REPLAY]),
            }

    def _dropped(self, question: Question, reason: str, message: str, partial: Any = None) -> None:
        """Count and report one question that will not be answered (call without the lock)."""
        with self._cond:
            self.questions_dropped += 1
        self._on_drop(reason, f"question #{question.id} {question.text[:60]!r} dropped: {message}")
        if self._on_question_dropped is not None:
            self._on_question_dropped(question, reason, message, partial)

    # -- the thread ------------------------------------------------------------------------------

    def _usable(self, asked: float) -> bool:
        """Is the held set good for a question asked at ``asked`` (fresh then, or newer)?"""
        latest = self._latest
        return (latest is not None and self._latest_serial != self._bad_serial
                and latest.completed >= asked - self.max_set_age_s)

    def _answerable(self) -> bool:
        # Queues are in arrival order, so the oldest question accepts a set whenever any does.
        return (any(queue and self._usable(queue[0].asked) for queue in self._queues.values())
                or (self._standing_due and self._usable(self._clock())))

    def _ready(self) -> bool:
        return self._budgets is not None or self._answerable()

    def _expired(self) -> list[Question]:
        """Questions that waited longer than question_timeout_s for a usable set (call with the lock)."""
        now = self._clock()
        expired = []
        for queue in self._queues.values():
            while queue and now - queue[0].asked > self.question_timeout_s and not self._usable(queue[0].asked):
                expired.append(queue.popleft())
        return expired

    def _take(self) -> list[Question]:
        """Up to max_batch answerable questions, live ones first (call with the lock)."""
        taken: list[Question] = []
        for source in (LIVE, REPLAY):
            queue = self._queues[source]
            while queue and len(taken) < self.max_batch and self._usable(queue[0].asked):
                taken.append(queue.popleft())
        return taken

    def _run(self) -> None:
        while True:
            with self._cond:
                expired: list[Question] = []
                while not self._stop and not self._ready():
                    self._parked_at = self._inputs
                    self._cond.notify_all()  # settled() waits for this
                    # Inputs and stop() notify; the timeout bounds a missed wake-up and paces the expiry.
                    self._cond.wait(timeout=0.25)
                    expired = self._expired()
                    if expired:
                        break
                if self._stop:
                    return
                budgets, self._budgets = self._budgets, None
                synced, serial = None, 0
                pending: list[Question] = []
                standing: list[Question] = []
                if not expired and self._answerable():
                    synced, serial = self._latest, self._latest_serial
                    self._latest_used = True
                    pending = self._take()
                    if self._standing_due and self._usable(self._clock()):
                        now = self._clock()
                        standing = [Question(text, STANDING, now) for text in self._standing]
                        self._standing_due = False
                stale = self._stale(synced)
                if stale is not None:
                    expired, pending, standing = pending + standing, [], []
                self._busy = True
            for question in expired:
                if stale is None:
                    self._dropped(question, "no_camera_set",
                                  f"no synchronized camera set within {self.question_timeout_s:g} s")
                else:
                    self._dropped(question, "stale", stale)
            try:
                if budgets is not None:
                    self._apply_budgets(budgets)
                if synced is not None and (pending or standing):
                    self._answer(synced, serial, pending, standing)
            except Exception as exc:  # a bug here must not silently end the answers
                self._on_drop("worker_error", f"{type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self._busy = False
                    self._running.clear()
                    self._cancelled.clear()

    def _stale(self, synced: SyncedSet | None) -> str | None:
        """Why the set is too old to start an answer on (``max_answer_age_s``), or None."""
        if synced is None or self.max_answer_age_s <= 0:
            return None
        age = self._clock() - synced.completed
        if age <= self.max_answer_age_s:
            return None
        return f"the newest camera set was {age:.2f} s old when its inference would start (max_answer_age_s " \
               f"{self.max_answer_age_s:g})"

    def _apply_budgets(self, budgets: dict[str, Any]) -> None:
        try:
            self.runner.set_budgets(**budgets)
        except ValueError as exc:
            self._on_drop("budget", f"budget change rejected by the runner: {exc}")

    def _images(self, synced: SyncedSet, serial: int) -> tuple[list[np.ndarray], float] | None:
        cached = self._decoded
        if cached is not None and cached[0] == serial:
            return cached[1], 0.0
        t0 = time.perf_counter()
        try:
            images = [self._decode(item) for item in synced.items]
        except ImageDecodeError as exc:
            self._mark_bad(serial)
            self._on_drop(exc.reason, f"frame set {synced.stamp:.3f} dropped: {exc}")
            return None
        sizes = {image.shape for image in images}
        if len(sizes) > 1:
            # The model resizes every view anyway, but the rig's cameras share one sensor size: mixed
            # sizes mean a misconfigured topic (a different camera, a debug image), so the set is refused.
            self._mark_bad(serial)
            shapes = ", ".join(f"{im.shape[1]}x{im.shape[0]}" for im in images)
            self._on_drop("size_mismatch", f"frame set {synced.stamp:.3f} dropped: cameras differ in size ({shapes})")
            return None
        decode_ms = (time.perf_counter() - t0) * 1000.0
        self._decoded = (serial, images, decode_ms)
        return images, decode_ms

    def _mark_bad(self, serial: int) -> None:
        with self._cond:
            self._bad_serial = serial

    def _answer(self, synced: SyncedSet, serial: int, pending: list[Question], standing: list[Question]) -> None:
        started = self._clock()
        decoded = self._images(synced, serial)
        if decoded is None:
            # The questions go back to the front of their queues and wait for the next good set.
            overflow = []
            with self._cond:
                for question in reversed(pending):
                    queue = self._queues[question.source]
                    if len(queue) < (queue.maxlen or 0):
                        queue.appendleft(question)
                    else:
                        overflow.append(question)
                self._standing_due = self._standing_due or bool(standing)
            for question in overflow:
                self._dropped(question, "question_overflow", "queue full while its frame set was refused")
            return
        images, decode_ms = decoded
        questions = pending + standing
        with self._cond:
            self._running = {q.id: q for q in questions}
        try:
            answers = self.runner.answer(images, [q.text for q in questions], frame_key=("set", serial),
                                         on_progress=lambda tokens: self._progress(questions, tokens))
        except ValueError as exc:
            # Questions are checked before queueing, so this is the runner's token bound or a bug.
            for question in questions:
                self._dropped(question, "bad_question", f"runner refused it: {exc}")
            return
        except Exception as exc:  # the node must outlive a failed inference (e.g. CUDA OOM)
            for question in questions:
                self._dropped(question, "inference_error", f"inference failed: {type(exc).__name__}: {exc}")
            return
        with self._cond:
            self.inferences += 1
            stopping, reason, cancelled = self._stop, self._stop_reason, set(self._cancelled)
        set_age_ms = (started - synced.completed) * 1000.0
        for question, answer in zip(questions, answers, strict=True):
            if stopping or question.id in cancelled:
                why = (reason, "the worker stopped while it was decoded") if stopping else (
                    "cancelled", "cancelled while it was decoded")
                self._dropped(question, *why, partial=answer)
                continue
            with self._cond:
                self.answers += 1
            try:
                self._on_answer(AnswerEvent(question, answer, synced, images, decode_ms, len(questions), set_age_ms,
                                            (started - question.asked) * 1000.0))
            except Exception as exc:  # e.g. publishing while the node shuts down
                self._on_drop("publish_error", f"{type(exc).__name__}: {exc}")

    def _progress(self, questions: list[Question], tokens: Mapping[int, list[int]]) -> list[int]:
        """The runner's per-step hook: stream the tokens, and name the questions to stop."""
        with self._cond:
            stop_all, cancelled = self._stop, set(self._cancelled)
        stop = [i for i in tokens if stop_all or questions[i].id in cancelled]
        if self._on_tokens is not None:
            for i, seq in tokens.items():
                if i not in stop:
                    try:
                        self._on_tokens(questions[i], seq)
                    except Exception as exc:  # streaming must never break the answer
                        self._on_drop("publish_error", f"stream: {type(exc).__name__}: {exc}")
        return stop
