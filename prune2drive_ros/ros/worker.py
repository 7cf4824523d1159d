"""The inference worker: answers questions on the latest synchronized set, off the executor (no ROS).

Subscriptions keep flowing during a one-second inference because the executor only hands sets and
questions over; this thread does the decoding and the model work.

- Sets: a single slot holds the most recent set. A newer set replaces it; one that arrives while an
  inference runs and is replaced before the worker could use it counts as ``sets_dropped``.
- Questions: a bounded FIFO (the oldest is dropped when full). The worker takes every pending question
  (up to ``max_batch``) and answers them in one ``runner.answer`` call on the most recent set, so they
  share its visual prefix. Standing questions are a flag, not queue entries, so a period shorter than
  an inference cannot pile them up.
- A set is used only while fresh (``max_set_age_s``); questions wait for a fresh one. The decoded images
  of the last set are kept, so more questions on the same set skip decoding.
- Budget changes are applied between inferences, never during one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prune2drive_ros.ros.image_codec import ImageDecodeError
from prune2drive_ros.ros.synchronizer import SyncedSet


@dataclass
class AnswerEvent:
    question: str
    answer: Any
    """``prune2drive_ros.vlm.Answer``."""
    synced: SyncedSet = field(repr=False)
    images: list[np.ndarray] = field(repr=False)
    image_decode_ms: float
    batch_size: int
    set_age_ms: float
    """From the set's completion to the start of its inference."""


class InferenceWorker:
    def __init__(
        self,
        runner: Any,
        decode: Callable[[Any], np.ndarray],
        *,
        on_answer: Callable[[AnswerEvent], None],
        on_drop: Callable[[str, str], None],
        max_questions: int = 16,
        max_batch: int = 8,
        max_set_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self._decode = decode
        self._on_answer = on_answer
        self._on_drop = on_drop
        self.max_batch = max_batch
        self.max_set_age_s = max_set_age_s
        self._clock = clock
        self._cond = threading.Condition()
        self._questions: deque[str] = deque(maxlen=max_questions)
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
        self._thread = threading.Thread(target=self._run, name="drive_vqa_inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the current inference; False if it did not finish within ``timeout``."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
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
            self._cond.notify()

    def forget_set(self) -> None:
        """Drop the held set (time ran backwards: it belongs to another timeline); questions wait."""
        with self._cond:
            self._latest = None

    def ask(self, question: str) -> None:
        with self._cond:
            if len(self._questions) == self._questions.maxlen:
                dropped = self._questions[0]
                self.questions_dropped += 1
                self._on_drop("question_overflow", f"question queue full; dropped {dropped[:60]!r}")
            self._questions.append(question)
            self._cond.notify()

    def set_standing(self, questions: Sequence[str]) -> None:
        with self._cond:
            self._standing = list(questions)

    def standing_due(self) -> None:
        with self._cond:
            if self._standing:
                self._standing_due = True
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
            return len(self._questions)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "answers": self.answers,
                "inferences": self.inferences,
                "sets_dropped": self.sets_dropped,
                "questions_dropped": self.questions_dropped,
                "question_queue_depth": len(self._questions),
            }

    # -- the thread ------------------------------------------------------------------------------

    def _fresh(self) -> bool:
        return (
            self._latest is not None
            and self._latest_serial != self._bad_serial
            and self._clock() - self._latest.completed <= self.max_set_age_s
        )

    def _ready(self) -> bool:
        return self._budgets is not None or ((bool(self._questions) or self._standing_due) and self._fresh())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._ready():
                    # Inputs and stop() notify; the timeout only bounds the cost of a missed wake-up.
                    self._cond.wait(timeout=0.25)
                if self._stop:
                    return
                budgets, self._budgets = self._budgets, None
                synced, serial = None, 0
                pending: list[str] = []
                standing: list[str] = []
                if (self._questions or self._standing_due) and self._fresh():
                    synced, serial = self._latest, self._latest_serial
                    self._latest_used = True
                    while self._questions and len(pending) < self.max_batch:
                        pending.append(self._questions.popleft())
                    if self._standing_due:
                        standing = list(self._standing)
                        self._standing_due = False
                self._busy = True
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

    def _answer(self, synced: SyncedSet, serial: int, pending: list[str], standing: list[str]) -> None:
        started = self._clock()
        decoded = self._images(synced, serial)
        if decoded is None:
            # The questions go back to the front of the queue and wait for the next good set.
            with self._cond:
                for question in reversed(pending):
                    if len(self._questions) < (self._questions.maxlen or 0):
                        self._questions.appendleft(question)
                    else:
                        self.questions_dropped += 1
                self._standing_due = self._standing_due or bool(standing)
            return
        images, decode_ms = decoded
        questions = pending + standing
        try:
            answers = self.runner.answer(images, questions, frame_key=("set", serial))
        except ValueError as exc:
            # Questions are checked before queueing, so this is the runner's token bound or a bug.
            self.questions_dropped += len(questions)
            self._on_drop("bad_question", f"runner refused {len(questions)} question(s): {exc}")
            return
        except Exception as exc:  # the node must outlive a failed inference (e.g. CUDA OOM)
            self.questions_dropped += len(questions)
            self._on_drop("inference_error", f"inference failed: {type(exc).__name__}: {exc}")
            return
        with self._cond:
            self.inferences += 1
            self.answers += len(answers)
        set_age_ms = (started - synced.completed) * 1000.0
        for question, answer in zip(questions, answers, strict=True):
            try:
                self._on_answer(AnswerEvent(question, answer, synced, images, decode_ms, len(questions), set_age_ms))
            except Exception as exc:  # e.g. publishing while the node shuts down
                self._on_drop("publish_error", f"{type(exc).__name__}: {exc}")
