"""``drive_vqa_node``: six synchronized cameras in, answers and timing diagnostics out.

    ros2 run prune2drive_ros drive_vqa_node --ros-args --params-file config/drive_vqa.yaml
    python -m prune2drive_ros.ros.node --ros-args -p model:=/path/to/checkpoint

A managed (lifecycle) node:

- configure loads the VLM runner (model + vision backend). A failure (missing model, bad parameter)
  fails the transition with the reason logged; the process stays up in ``unconfigured``.
- activate subscribes to the cameras and ``/vlm/question``, starts the inference worker and the 1 Hz
  health status; the lifecycle publishers go live.
- deactivate stops all that; cleanup releases the model and its GPU memory.
- ``autostart`` (default true) walks configure + activate at start-up, so ``ros2 launch`` just works.

Parameters come from one table (``parameters.py``). A start-up value that is out of range or of the
wrong type never ends the process: it is logged with the reason, the default is declared in its place
and configure fails until it is fixed (a run-time parameter by ``ros2 param set``, a read-only one by a
restart). An integer where a double is expected (``retain:=1``) is taken as that double.

Inputs are checked in the subscription callbacks (stamp, encoding, sizes, JPEG/PNG header, all without
decoding) and grouped by the ROS-free ``Synchronizer``; the ``InferenceWorker`` thread decodes and
answers only the sets it uses. Bad input is dropped, counted by reason in the health status and logged
in aggregate; nothing is allowed to kill the node or to grow without bound.

Questions (see the README's question policy): each gets an id and ends either answered or dropped with
a reason, both reported as one JSON record on ``/vlm/answer_info`` (``/vlm/answer`` stays plain text),
on ``/diagnostics`` and in the log. Questions played back from a bag wait in their own queue, so they
never push out a person's question.

SIGINT and SIGTERM, once or repeatedly, end the process with exit code 0 within a few seconds, also
while an answer is being computed (see ``main``).
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from prune2drive_ros.cameras import (
    ANSWER_INFO_TOPIC,
    ANSWER_TOPIC,
    CAMERA_NAMES,
    DIAGNOSTICS_TOPIC,
    KEPT_TOKENS_TOPIC,
    NUM_CAMERAS,
    QUESTION_TOPIC,
    default_topics,
)
from prune2drive_ros.ros import image_codec
from prune2drive_ros.ros.diagnostics import ERROR, OK, WARN, HealthMonitor, answer_values
from prune2drive_ros.ros.image_codec import ImageDecodeError
from prune2drive_ros.ros.parameters import (
    BOOL,
    BY_NAME,
    DOUBLE,
    DOUBLE_ARRAY,
    DYNAMIC_PARAMETERS,
    ERROR_FACTOR,
    INTEGER,
    MAX_QUESTION_CHARS,
    PARAMETERS,
    STRING,
    STRING_ARRAY,
    check_parameter,
    coerce,
)
from prune2drive_ros.ros.synchronizer import LATE, TIME_JUMP, Synchronizer
from prune2drive_ros.ros.worker import LIVE, REPLAY, AnswerEvent, InferenceWorker, Question
from prune2drive_ros.settings import PRUNING_METHODS, VISION_BACKENDS, runner_values
from prune2drive_ros.settings import Setting as ParamSpec

__all__ = ["DYNAMIC_PARAMETERS", "NODE_NAME", "PRUNING_METHODS", "VISION_BACKENDS", "DriveVqaNode",
           "check_parameter", "main"]

NODE_NAME = "drive_vqa"

QUESTION_QUEUE_SIZE = 16
"""Live questions waiting for inference (a full queue drops its oldest)."""
REPLAY_QUEUE_SIZE = 64
"""Questions played back from a bag: a DriveLM keyframe asks up to ~20 at once."""
QUESTION_TIMEOUT_S = 30.0
"""How long a question waits for a synchronized camera set before it is dropped."""
REPLAY_PUBLISHERS = ("prune2drive_player", "rosbag2_player")
"""Node names of bag players (``prune2drive play``, ``ros2 bag play``): their questions are replayed ones."""
MAX_BATCH = 8
HEALTH_PERIOD_S = 1.0
LOG_PERIOD_S = 5.0
"""Repeats of one warning are summed up in one line at most this often."""
FRAME_LOG_PERIOD_S = 30.0
"""The same for frame drops (late frames, time jumps): a looping bag makes them routine."""
WORKER_STOP_TIMEOUT_S = 60.0
"""deactivate waits this long for a running inference (the model must not be closed under it)."""
SHUTDOWN_TIMEOUT_S = 2.0
"""On SIGINT/SIGTERM, wait this long for a running inference, then exit without it."""

# Drop reasons for frames (counted into frames_dropped) and for everything else.
FRAME_REASONS = ("no_stamp", "empty", "format", "encoding", "size", "length", "corrupt", "size_mismatch",
                 "time_jump", "late")
QUESTION_REASONS = ("empty_question", "long_question", "bad_question", "question_overflow", "no_camera_set",
                    "inference_error", "not_active", "shutdown")
OTHER_REASONS = (*QUESTION_REASONS, "budget", "publish_error", "worker_error", "kept_tokens")

_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}
_ROS_TYPES = {STRING: Parameter.Type.STRING, DOUBLE: Parameter.Type.DOUBLE, INTEGER: Parameter.Type.INTEGER,
              BOOL: Parameter.Type.BOOL, DOUBLE_ARRAY: Parameter.Type.DOUBLE_ARRAY,
              STRING_ARRAY: Parameter.Type.STRING_ARRAY}
# rclpy >= Iron hands a two-argument callback the message info, which names the publisher.
_HAS_MESSAGE_INFO = hasattr(Subscription, "CallbackType")


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    constraints = " | ".join(spec.choices)
    if spec.low is not None and spec.low_open:
        constraints = f"{spec.low:g} excluded"
    descriptor = ParameterDescriptor(
        description=spec.description + ("" if spec.dynamic else " (read-only: set at start-up)"),
        read_only=not spec.dynamic, additional_constraints=constraints)
    if spec.low is not None and spec.kind in (DOUBLE, DOUBLE_ARRAY):
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                              step=0.0)]
    elif spec.low is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return descriptor


def _ros_value(spec: ParamSpec, value: Any) -> Parameter:
    return Parameter(spec.name, _ROS_TYPES[spec.kind], value)


def _fix_hint(spec: ParamSpec) -> str:
    if spec.dynamic:
        return (f"set a valid value (ros2 param set /{NODE_NAME} {spec.name} VALUE) and configure again, "
                "or restart with a corrected value")
    return (f"{spec.name} is read-only: restart the node with a corrected value "
            f"({spec.name}:=VALUE on ros2 launch, -p {spec.name}:=VALUE with --ros-args)")


class _Throttle:
    """One log line per key at most every ``period`` s, saying how many were left out in between."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def __call__(self, key: str, period: float) -> int | None:
        """None: stay quiet; else the number of lines skipped since the last one."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < period:
                self._skipped[key] += 1
                return None
            self._last[key] = now
            return self._skipped.pop(key, 0)


class DriveVqaNode(LifecycleNode):
    """The driving VQA node; see the module docstring for the lifecycle and data flow."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        self._drops: Counter[str] = Counter()
        self._throttle = _Throttle()
        self.startup_errors: dict[str, str] = {}
        """Parameter -> why its start-up value was rejected; configure fails while any is left."""
        self._declare_parameters()
        # rclpy >= Iron: convert an integer to a double before the type check (`ros2 param set ... retain 1`).
        if hasattr(self, "add_pre_set_parameters_callback"):
            self.add_pre_set_parameters_callback(self._coerce_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Humble has no post-set callback: there the validated values are applied from the on-set callback.
        self._apply_on_set = not hasattr(self, "add_post_set_parameters_callback")
        if not self._apply_on_set:
            self.add_post_set_parameters_callback(self._after_set_parameters)
        self._runner: Any = None
        self._sync: Synchronizer | None = None
        self._health: HealthMonitor | None = None
        self._worker: InferenceWorker | None = None
        self._answer_pub = self._info_pub = self._diag_pub = self._kept_pub = None
        self._io_subscriptions: list[Any] = []
        self._io_timers: list[Any] = []
        self._render_kept = None
        self._publisher_sources: dict[tuple[int, ...], str] = {}
        self._health_logged = (OK, "")

    # -- parameters ------------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        overrides: Mapping[str, Parameter] = getattr(self, "_parameter_overrides", {})
        self.parameter_names = [spec.name for spec in PARAMETERS]
        for spec in PARAMETERS:
            default = _ROS_TYPES[spec.kind] if spec.default is None else spec.default
            value, ignore_override = default, False
            override = overrides.get(spec.name)
            if override is not None:
                given = override.value
                candidate = coerce(spec.name, given)
                reason = check_parameter(spec.name, candidate)
                if reason is not None:
                    self._reject_startup(spec, given, reason)
                    ignore_override = True
                elif candidate is not given:
                    value, ignore_override = candidate, True
            try:
                self.declare_parameter(spec.name, value, _descriptor(spec), ignore_override=ignore_override)
            except Exception as exc:  # whatever rclpy refuses: keep the default, never end the process
                self._reject_startup(spec, override.value if override else None, f"{type(exc).__name__}: {exc}")
                self.declare_parameter(spec.name, default, _descriptor(spec), ignore_override=True)

    def _reject_startup(self, spec: ParamSpec, given: Any, reason: str) -> None:
        default = "unset" if spec.default is None else repr(spec.default)
        message = f"start-up value {given!r} of {spec.name} rejected ({reason}); using {default} for now"
        self.startup_errors[spec.name] = f"{message}. To fix: {_fix_hint(spec)}"
        self.get_logger().error(f"parameter {self.startup_errors[spec.name]}")

    def _param(self, name: str) -> Any:
        """The value, or None for a parameter declared without a default and never set (view_ratios, questions)."""
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:
            return None
        return list(value) if BY_NAME[name].kind == DOUBLE_ARRAY and value is not None else value

    def _coerce_parameters(self, params: list[Parameter]) -> list[Parameter]:
        out = []
        for p in params:
            spec = BY_NAME.get(p.name)
            value = coerce(p.name, p.value)
            out.append(p if spec is None or value is p.value else _ros_value(spec, value))
        return out

    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Reject invalid values with the reason (read-only ones never get here: rclpy refuses them)."""
        for p in params:
            reason = check_parameter(p.name, coerce(p.name, p.value))
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        if self._apply_on_set:
            self._apply_parameters({p.name: p.value for p in params})
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: Sequence[Parameter]) -> None:
        self._apply_parameters({p.name: p.value for p in params})

    def _apply_parameters(self, changed: Mapping[str, Any]) -> None:
        """Apply run-time changes; ``changed`` holds the new values (on Humble they are not set yet)."""
        def value(name: str) -> Any:
            if name in changed:
                v = coerce(name, changed[name])
                return list(v) if v is not None and BY_NAME[name].kind == DOUBLE_ARRAY else v
            return self._param(name)

        for name in changed:
            if self.startup_errors.pop(name, None) is not None:
                self.get_logger().info(f"{name} is valid now ({value(name)!r}); configure can proceed")
        worker, health = self._worker, self._health
        if changed.keys() & {"retain", "view_ratios"} and worker is not None:
            worker.set_budgets(value("retain"), value("view_ratios"))
            self.get_logger().info(f"token budgets: retain={value('retain')} view_ratios={value('view_ratios')}")
        if "camera_timeout_s" in changed and health is not None and worker is not None:
            health.camera_timeout_s = value("camera_timeout_s")
            health.stall_after_s = self._stall_after(value("camera_timeout_s"))
            worker.max_set_age_s = self._max_set_age(value("camera_timeout_s"))
        if "questions" in changed and worker is not None:
            worker.set_standing(value("questions") or [])

    def _max_set_age(self, camera_timeout_s: float | None = None) -> float:
        # A set older than the camera timeout no longer shows the scene; questions wait for a new one.
        timeout = self._param("camera_timeout_s") if camera_timeout_s is None else camera_timeout_s
        return max(timeout, 2 * self._param("sync_slop_s"))

    @staticmethod
    def _stall_after(camera_timeout_s: float) -> float:
        return max(2.0, camera_timeout_s)

    def _camera_topics(self) -> list[str]:
        topics = list(self._param("camera_topics"))
        transport = self._param("image_transport")
        other = "raw" if transport == "compressed" else "compressed"
        if topics == default_topics(other):
            # The YAML lists the compressed defaults; `image_transport:=raw` alone should just work.
            return default_topics(transport)
        return topics

    # -- lifecycle -------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        # rclpy turns an exception in a transition into ERROR without saying why; say why here.
        try:
            return self._configure()
        except Exception as exc:
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self.release()
            return TransitionCallbackReturn.FAILURE

    def _configure(self) -> TransitionCallbackReturn:
        reasons = list(self.startup_errors.values())
        for name in self.parameter_names:
            if name not in self.startup_errors:
                reason = check_parameter(name, self._param(name))
                if reason is not None:
                    reasons.append(f"{reason}. To fix: {_fix_hint(BY_NAME[name])}")
        if reasons:
            for reason in reasons:
                self.get_logger().error(f"configure failed: {reason}")
            return TransitionCallbackReturn.FAILURE
        model = self._param("model")
        self.get_logger().info(f"configuring: loading {model!r}")
        try:
            # Imported here: torch and transformers take seconds to import, and a broken install must
            # fail this transition with a reason instead of the process.
            from prune2drive_ros.vlm import RunnerConfig, VLMRunner

            _quiet_progress_bars()
            values = {spec.name: self._param(spec.name) for spec in PARAMETERS}
            config = RunnerConfig(**runner_values(values))
            self._runner = VLMRunner.from_config(config)  # on a GPU this also captures the CUDA graphs
        except Exception as exc:  # any load failure is a failed transition, never a dead process
            self.get_logger().error(f"configure failed: cannot load model {model!r}: {type(exc).__name__}: {exc}")
            self._release_runner()
            return TransitionCallbackReturn.FAILURE

        self._sync = Synchronizer(NUM_CAMERAS, slop=self._param("sync_slop_s"),
                                  queue_size=self._param("sync_queue_size"))
        timeout = self._param("camera_timeout_s")
        self._health = HealthMonitor(CAMERA_NAMES, timeout, error_factor=ERROR_FACTOR,
                                     stall_after_s=self._stall_after(timeout))
        self._worker = InferenceWorker(
            self._runner,
            functools.partial(image_codec.decode, max_side=image_codec.DEFAULT_MAX_SIDE),
            on_answer=self._publish_answer,
            on_drop=self._drop,
            on_question_dropped=self._publish_dropped_question,
            max_questions=QUESTION_QUEUE_SIZE,
            max_replay_questions=REPLAY_QUEUE_SIZE,
            max_batch=MAX_BATCH,
            max_set_age_s=self._max_set_age(),
            question_timeout_s=QUESTION_TIMEOUT_S,
        )
        self._worker.set_standing(self._param("questions") or [])
        self._answer_pub = self.create_lifecycle_publisher(String, ANSWER_TOPIC, 10)
        self._info_pub = self.create_lifecycle_publisher(String, ANSWER_INFO_TOPIC, 50)
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 50)
        self._kept_pub = self.create_lifecycle_publisher(Image, KEPT_TOKENS_TOPIC, 2)
        backend_reason = getattr(getattr(self._runner, "vision", None), "reason", "")
        self.get_logger().info(
            f"configured: device={self._runner.device} vision_backend={self._runner.vision_backend_name}"
            + (f" ({backend_reason})" if backend_reason else "")
            + (f"; CUDA graphs captured in {self._runner.warmup_ms:.0f} ms" if getattr(self._runner, "warmup_ms", 0) else "")
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return self._activate(state)
        except Exception as exc:
            self.get_logger().error(f"activate failed: {type(exc).__name__}: {exc}")
            self._stop_io()
            super().on_deactivate(state)  # back to inactive: the lifecycle publishers too
            return TransitionCallbackReturn.FAILURE

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Publishers first, so the first answer is not published into an inactive publisher.
        result = super().on_activate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        reliability = (ReliabilityPolicy.BEST_EFFORT if self._param("qos_reliability") == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        # Shallow DDS queues: the synchronizer holds the history; stale frames only add latency.
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=reliability)
        msg_type = CompressedImage if self._param("image_transport") == "compressed" else Image
        topics = self._camera_topics()
        self._io_subscriptions = [
            self.create_subscription(msg_type, topic, functools.partial(self._on_image, index), qos)
            for index, topic in enumerate(topics)
        ]
        # A bag's DriveLM questions come 1 ms apart; a deep history keeps such a burst intact (the
        # worker's bounded queues still cap what waits for inference).
        callback = self._on_question_with_info if _HAS_MESSAGE_INFO else self._on_question
        self._io_subscriptions.append(
            self.create_subscription(String, QUESTION_TOPIC, callback, REPLAY_QUEUE_SIZE))
        self._health.start()
        self._sync.reset()
        self._io_timers = [self.create_timer(HEALTH_PERIOD_S, self._publish_health)]
        period = self._param("question_period_s")
        if period > 0.0:
            self._io_timers.append(self.create_timer(period, self._worker.standing_due))
        self._worker.start()
        self.get_logger().info(f"active: {msg_type.__name__} on {', '.join(topics)}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Back to unconfigured with nothing held, ready for another configure.
        self.get_logger().error(f"error while in {state.label}: releasing everything")
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def autostart(self) -> bool:
        """configure + activate; on failure the node stays up in the state it reached."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed (reasons above); the node stays up, unconfigured")
            return False
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: activate failed; staying inactive")
            return False
        return True

    def _stop_io(self, timeout: float = WORKER_STOP_TIMEOUT_S, reason: str = "not_active") -> bool:
        """Stop listening and answering; False if an inference is still running after ``timeout``."""
        for sub in self._io_subscriptions:
            self.destroy_subscription(sub)
        for t in self._io_timers:
            self.destroy_timer(t)
        self._io_subscriptions, self._io_timers = [], []
        stopped = True
        if self._worker is not None:
            stopped = self._worker.stop(timeout)
            if not stopped:
                self.get_logger().error(f"inference did not finish within {timeout:g} s")
            self._worker.drain(reason, "the node stopped listening before it was answered")
        if self._sync is not None:
            self._sync.reset()
        return stopped

    def release(self, timeout: float = WORKER_STOP_TIMEOUT_S, reason: str = "not_active") -> bool:
        """Stop everything and free the model. Idempotent. Returns False if an inference was still
        running after ``timeout`` s: the model is then left alone (it is in use) and the caller should
        end the process rather than wait."""
        stopped = self._stop_io(timeout, reason)
        for pub in (self._answer_pub, self._info_pub, self._diag_pub, self._kept_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._answer_pub = self._info_pub = self._diag_pub = self._kept_pub = None
        self._sync = self._health = None
        if stopped:
            self._worker = None
            self._release_runner()
        return stopped

    def _release_all(self) -> None:
        """Kept for callers of the earlier API."""
        self.release()

    def _release_runner(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            # Return the cached blocks too, so other processes see the memory free again.
            torch.cuda.empty_cache()

    # -- inputs ----------------------------------------------------------------------------------

    def _drop(self, reason: str, message: str) -> None:
        """Count a drop and log it; repeats of one reason are summed up in one line per period."""
        with self._lock:
            self._drops[reason] += 1
        period = FRAME_LOG_PERIOD_S if reason in FRAME_REASONS else LOG_PERIOD_S
        skipped = self._throttle(reason, period)
        if skipped is None:
            return
        more = f" (+{skipped} more {reason} in the last {period:g} s)" if skipped else ""
        logger = self.get_logger()
        if reason == "time_jump":
            logger.info(message + more)  # a looping bag does this every pass: routine, not a fault
        else:
            logger.warning(f"[{reason}] {message}{more}")

    def _on_image(self, index: int, msg: Any) -> None:
        camera = CAMERA_NAMES[index]
        health, sync, worker = self._health, self._sync, self._worker
        if health is None or sync is None or worker is None:
            return
        health.frame(index)
        stamp = msg.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        if stamp_ns <= 0:
            self._drop("no_stamp", f"{camera}: frame without a header stamp dropped")
            return
        try:
            image_codec.image_size(msg, max_side=image_codec.DEFAULT_MAX_SIDE)
        except ImageDecodeError as exc:
            self._drop(exc.reason, f"{camera}: frame dropped: {exc}")
            return
        outcome, sets = sync.add(index, stamp_ns, msg)
        if outcome == TIME_JUMP:
            worker.forget_set()
            self._drop("time_jump", f"{camera}: camera time went back (bag loop?); synchronizer reset")
        elif outcome == LATE:
            self._drop("late", f"{camera}: frame not newer than this camera's last one dropped")
        for synced in sets:
            health.synced()
            worker.submit(synced)

    def _on_question_with_info(self, msg: String, info: Any) -> None:
        self._on_question(msg, self._question_source(info))

    def _question_source(self, info: Any) -> str:
        """REPLAY if a bag player published it, else LIVE (also while its publisher is not discovered)."""
        gid = _gid_key(info)
        if gid is None:
            # rclpy before Kilted (Jazzy, Humble) gives no publisher GID with a message: a question counts
            # as replayed only while bag players are its topic's only publishers, so a person's is never
            # mistaken for one.
            publishers = self.get_publishers_info_by_topic(QUESTION_TOPIC)
            if publishers and all(p.node_name in REPLAY_PUBLISHERS for p in publishers):
                return REPLAY
            return LIVE
        source = self._publisher_sources.get(gid)
        if source is None:
            if len(self._publisher_sources) > 1024:  # publishers come and go: bound the cache
                self._publisher_sources.clear()
            for endpoint in self.get_publishers_info_by_topic(QUESTION_TOPIC):
                kind = REPLAY if endpoint.node_name in REPLAY_PUBLISHERS else LIVE
                self._publisher_sources[tuple(endpoint.endpoint_gid)] = kind
            source = self._publisher_sources.get(gid, LIVE)
        return source

    def _on_question(self, msg: String, source: str = LIVE) -> None:
        worker = self._worker
        if worker is None:
            return
        text = msg.data.strip()
        question = Question(text, source, time.monotonic())
        if not text:
            self._question_refused(question, "empty_question", "empty question ignored")
        elif len(text) > MAX_QUESTION_CHARS:
            self._question_refused(question, "long_question",
                                   f"question of {len(text)} characters ignored (bound {MAX_QUESTION_CHARS})")
        else:
            worker.ask(question)

    def _question_refused(self, question: Question, reason: str, message: str) -> None:
        self._drop(reason, message)
        self._publish_dropped_question(question, reason, message)

    # -- outputs ---------------------------------------------------------------------------------

    def _status(self, level: int, name: str, message: str, values: Sequence[tuple[str, str]]) -> DiagnosticStatus:
        return DiagnosticStatus(level=_LEVELS[level], name=f"{self.get_name()}: {name}", message=message,
                                hardware_id=self.get_fully_qualified_name(),
                                values=[KeyValue(key=k, value=str(v)) for k, v in values])

    def _publish_diagnostics(self, statuses: list[DiagnosticStatus]) -> None:
        pub = self._diag_pub
        if pub is not None:
            pub.publish(DiagnosticArray(header=self._header(), status=statuses))

    def _publish_info(self, record: dict[str, Any]) -> None:
        pub = self._info_pub
        if pub is not None:
            pub.publish(String(data=json.dumps(record, ensure_ascii=False)))

    def _header(self, stamp_ns: int | None = None) -> Header:
        header = Header()
        if stamp_ns is None:
            header.stamp = self.get_clock().now().to_msg()
        else:
            header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        return header

    def _publish_answer(self, event: AnswerEvent) -> None:
        """Called on the worker thread for each answered question."""
        runner, answer_pub = self._runner, self._answer_pub
        if runner is None or answer_pub is None:
            return
        answer = event.answer
        answer_pub.publish(String(data=answer.text))
        values = answer_values(
            answer,
            question=event.question,
            frame_stamp=event.synced.stamp,
            sync_wait_ms=event.synced.wait_s * 1000.0,
            image_decode_ms=event.image_decode_ms,
            vision_backend=runner.vision_backend_name,
            device=str(runner.device),
            extra={
                "question_id": event.question_id,
                "source": event.source,
                "question_wait_ms": f"{event.wait_ms:.1f}",
                "set_spread_ms": f"{event.synced.spread_s * 1000.0:.1f}",
                "set_age_ms": f"{event.set_age_ms:.1f}",
                "batch_size": event.batch_size,
                "prefix_reused": answer.prefix_reused,
                "pruning_method": self._param("pruning_method"),
                "vision_backend_reason": getattr(getattr(runner, "vision", None), "reason", ""),
                "runtime_path": getattr(answer, "path", ""),
            },
        )
        self._publish_info(_answer_record(event, values))
        self._publish_diagnostics([self._status(OK, "answer", answer.text[:200], values)])
        if self._param("publish_kept_tokens"):
            self._publish_kept_tokens(event)

    def _publish_dropped_question(self, question: Question, reason: str, message: str) -> None:
        """Called for every question that will not be answered (any thread)."""
        record = {"id": question.id, "status": "dropped", "question": question.text, "source": question.source,
                  "reason": reason, "detail": message}
        try:
            self._publish_info(record)
            values = [("question", question.text), ("question_id", question.id), ("source", question.source),
                      ("reason", reason)]
            self._publish_diagnostics([self._status(WARN, "question dropped", f"{reason}: {message}", values)])
        except Exception as exc:  # publishing while the node shuts down
            self._drop("publish_error", f"{type(exc).__name__}: {exc}")

    def _publish_kept_tokens(self, event: AnswerEvent) -> None:
        if self._render_kept is None:
            try:
                from prune2drive_ros.pruning import render_kept_tokens
            except ImportError as exc:
                self._drop("kept_tokens", f"kept-token mosaic unavailable: {exc}")
                return
            self._render_kept = render_kept_tokens
        tokens_per_view = getattr(self._runner, "tokens_per_view", 729)
        grid = math.isqrt(tokens_per_view)
        mosaic = self._render_kept(event.images, event.answer.kept_indices, grid=grid)
        height, width = mosaic.shape[:2]
        msg = Image(header=self._header(event.synced.stamp_ns), height=height, width=width, encoding="rgb8",
                    is_bigendian=0, step=width * 3, data=mosaic.tobytes())
        msg.header.frame_id = "kept_tokens"
        if self._kept_pub is not None:
            self._kept_pub.publish(msg)

    def health_counters(self) -> dict[str, Any]:
        """Counters of the health status (also handy in tests)."""
        sync, worker = self._sync, self._worker
        with self._lock:
            drops = dict(self._drops)
        counters: dict[str, Any] = {}
        if sync is not None:
            stats = sync.stats()
            counters.update(sets_total=stats.sets, frames_unmatched=stats.frames_unmatched,
                            sync_queue_sizes=",".join(map(str, stats.queue_sizes)),
                            sync_queue_max=max(stats.queue_sizes, default=0))
        if worker is not None:
            counters.update(worker.stats())
        counters["frames_dropped"] = sum(drops.get(r, 0) for r in FRAME_REASONS)
        for reason in (*FRAME_REASONS, *OTHER_REASONS):
            counters[f"dropped.{reason}"] = drops.get(reason, 0)
        return counters

    def _publish_health(self) -> None:
        health = self._health
        if health is None:
            return
        level, message, values = health.report(self.health_counters())
        self._publish_diagnostics([self._status(level, "health", message, values)])
        self._log_health(level, message)

    def _log_health(self, level: int, message: str) -> None:
        """Log health changes, and a standing WARN/ERROR again now and then (the same text as /diagnostics)."""
        kind = message.split(" for ")[0].split(" silent ")[0]  # the message without its running seconds
        changed = (level, kind) != self._health_logged
        self._health_logged = (level, kind)
        if level == OK:
            if changed:
                self.get_logger().info(f"health OK: {message}")
        elif changed or self._throttle(f"health:{kind}", FRAME_LOG_PERIOD_S) is not None:
            self.get_logger().warning(f"health {'WARN' if level == WARN else 'ERROR'}: {message}")


def _answer_record(event: AnswerEvent, values: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The /vlm/answer_info record of one answer."""
    v = dict(values)
    timings = {key[:-3]: float(v[key]) for key in v if key.endswith("_ms")}
    return {
        "id": event.question_id,
        "status": "answered",
        "question": event.question,
        "source": event.source,
        "answer": event.answer.text,
        "frame_stamp": event.synced.stamp,
        "frame_stamp_ns": event.synced.stamp_ns,
        "timings_ms": timings,
        "batch_size": event.batch_size,
        "visual_tokens": int(v["visual_tokens"]),
        "kept_per_view": [int(k) for k in v["kept_per_view"].split(",")],
        "flops_ratio": float(v["flops_ratio"]),
        "pruning_method": v.get("pruning_method", ""),
        "vision_backend": v["vision_backend"],
        "device": v["device"],
    }


def _gid_key(info: Any) -> tuple[int, ...] | None:
    """The publisher GID from rclpy's message info, comparable with TopicEndpointInfo.endpoint_gid."""
    gid = info.get("publisher_gid") if isinstance(info, Mapping) else getattr(info, "publisher_gid", None)
    if gid is None:
        return None
    data = gid.get("data") if isinstance(gid, Mapping) else getattr(gid, "data", gid)
    try:
        return tuple(int(b) for b in data)
    except TypeError:
        return None


def _quiet_progress_bars() -> None:
    """No tqdm bars in a node log (transformers' `Loading weights`, the hub's downloads)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


class _Signals:
    """SIGINT and SIGTERM ask the main loop to stop; they never raise inside the shutdown.

    rclpy's own handler shuts the context down at once and lets Python raise KeyboardInterrupt anywhere,
    also inside the clean-up (a second Ctrl-C). Instead the first signal sets a flag that the spin loop
    checks every ``SPIN_PERIOD_S``; while the model loads (which can take a minute and runs no loop), it
    raises KeyboardInterrupt once, where ``main`` catches it. Later signals only log.
    """

    SPIN_PERIOD_S = 0.1

    def __init__(self, logger: Any) -> None:
        self.requested = threading.Event()
        self._logger = logger
        self._interruptible = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            self._logger.info(f"{name} again: already shutting down")
            return
        self.requested.set()
        self._logger.info(f"{name}: shutting down")
        if self._interruptible:
            self._interruptible = False
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A signal inside this block raises KeyboardInterrupt (once) to abandon it."""
        if self.requested.is_set():
            raise KeyboardInterrupt
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None, *, hard_exit: bool = True) -> int:
    """Entry point of ``drive_vqa_node`` (console script and ``python -m``). Exit code 0 on SIGINT/SIGTERM.

    After the node has released everything and rclpy is shut down, the process ends with ``os._exit``
    (``hard_exit``): tearing down the interpreter with torch and transformers loaded can take seconds
    on a busy machine, and an inference that cannot be interrupted may still be running.
    """
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    node = DriveVqaNode()
    logger = node.get_logger()
    signals = _Signals(logger)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        with signals.interruptible():
            if node.get_parameter("autostart").value:
                node.autostart()
        while not signals.requested.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=_Signals.SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Signals only set the flag from here on, so nothing below can be interrupted halfway.
        started = time.monotonic()
        if not node.release(SHUTDOWN_TIMEOUT_S, reason="shutdown"):
            logger.warning("leaving a running inference behind")
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        logger.info(f"shut down in {time.monotonic() - started:.1f} s")
        rclpy.try_shutdown()
        signals.restore()
    if hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
