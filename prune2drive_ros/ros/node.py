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

Inputs are checked in the subscription callbacks (stamp, encoding, sizes, JPEG/PNG header, all without
decoding) and grouped by the ROS-free ``Synchronizer``; the ``InferenceWorker`` thread decodes and
answers only the sets it uses. Bad input is dropped with a throttled warning and counted by reason in
the health status; nothing is allowed to kill the node or to grow without bound.
"""

from __future__ import annotations

import functools
import gc
import math
import re
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from prune2drive_ros.cameras import (
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
from prune2drive_ros.ros.synchronizer import LATE, TIME_JUMP, Synchronizer
from prune2drive_ros.ros.worker import AnswerEvent, InferenceWorker

NODE_NAME = "drive_vqa"

# Copies of prune2drive_ros.pruning.PRUNER_NAMES and vlm.backends.FALLBACK_CHAIN (a test keeps them equal):
# importing those pulls in torch, and the node should be up and answering lifecycle calls in a blink.
PRUNING_METHODS = ("none", "tfps", "divprune", "fastv", "random", "pool", "mvpruner")
VISION_BACKENDS = ("tensorrt", "onnxruntime", "torch")
DTYPES = ("auto", "float32", "float16", "bfloat16")
TRANSPORTS = ("compressed", "raw")
RELIABILITIES = ("best_effort", "reliable")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

MAX_QUESTION_CHARS = 2000
"""Longer questions are dropped at the door; the runner also bounds the prompt in tokens."""
QUESTION_QUEUE_SIZE = 16
MAX_BATCH = 8
HEALTH_PERIOD_S = 1.0
WARN_THROTTLE_S = 5.0
WORKER_STOP_TIMEOUT_S = 60.0
ERROR_FACTOR = 3.0
"""A camera silent for camera_timeout_s is WARN, for ERROR_FACTOR times that ERROR."""

# Drop reasons for frames (counted into frames_dropped) and for everything else.
FRAME_REASONS = ("no_stamp", "empty", "format", "encoding", "size", "length", "corrupt", "size_mismatch",
                 "time_jump", "late")
OTHER_REASONS = ("empty_question", "long_question", "bad_question", "question_overflow", "inference_error",
                 "budget", "publish_error", "worker_error", "kept_tokens")

_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}

# Parameters whose change takes effect at run time; every other one is read-only (set at start).
DYNAMIC_PARAMETERS = ("retain", "view_ratios", "camera_timeout_s", "questions", "publish_kept_tokens")


def _descriptor(description: str, *, read_only: bool = True, floating: tuple[float, float] | None = None,
                integer: tuple[int, int] | None = None, constraints: str = "") -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                     additional_constraints=constraints)
    if floating is not None:
        descriptor.floating_point_range = [FloatingPointRange(from_value=floating[0], to_value=floating[1], step=0.0)]
    if integer is not None:
        descriptor.integer_range = [IntegerRange(from_value=integer[0], to_value=integer[1], step=1)]
    return descriptor


def check_parameter(name: str, value: Any) -> str | None:
    """Why ``value`` is invalid for ``name``, or None. Shared by the set-parameters callback and configure."""
    if name == "model":
        return None if isinstance(value, str) and value.strip() else "model must name a checkpoint folder or hub id"
    if name == "pruning_method" and value not in PRUNING_METHODS:
        return f"pruning_method must be one of {', '.join(PRUNING_METHODS)}, got {value!r}"
    if name == "retain" and not (isinstance(value, float) and 0.0 < value <= 1.0):
        return f"retain must be in (0, 1], got {value!r}"
    if name == "view_ratios" and value:
        ratios = list(value)
        if len(ratios) != NUM_CAMERAS:
            return f"view_ratios needs {NUM_CAMERAS} values in camera order ({', '.join(CAMERA_NAMES)}), got {len(ratios)}"
        if not all(0.0 < r <= 1.0 and math.isfinite(r) for r in ratios):
            return f"each view ratio must be in (0, 1], got {ratios}"
    if name == "vision_backend" and value not in VISION_BACKENDS:
        return f"vision_backend must be one of {', '.join(VISION_BACKENDS)}, got {value!r}"
    if name == "device" and not DEVICE_PATTERN.match(str(value)):
        return f"device must be auto, cpu, cuda or cuda:N, got {value!r}"
    if name == "dtype" and value not in DTYPES:
        return f"dtype must be one of {', '.join(DTYPES)}, got {value!r}"
    if name == "camera_topics":
        topics = list(value or [])
        if len(topics) != NUM_CAMERAS or not all(isinstance(t, str) and t.strip() for t in topics):
            return f"camera_topics needs {NUM_CAMERAS} non-empty topics in camera order, got {topics}"
        if len(set(topics)) != NUM_CAMERAS:
            return f"camera_topics must be distinct, got {topics}"
    if name == "image_transport" and value not in TRANSPORTS:
        return f"image_transport must be one of {', '.join(TRANSPORTS)}, got {value!r}"
    if name == "qos_reliability" and value not in RELIABILITIES:
        return f"qos_reliability must be one of {', '.join(RELIABILITIES)}, got {value!r}"
    if name in ("sync_slop_s", "camera_timeout_s") and not (isinstance(value, float) and value > 0.0):
        return f"{name} must be > 0 s, got {value!r}"
    if name == "sync_queue_size" and not (isinstance(value, int) and value >= 2):
        return f"sync_queue_size must be >= 2 (a set is confirmed by the frame after it), got {value!r}"
    if name == "question_period_s" and not (isinstance(value, float) and value >= 0.0):
        return f"question_period_s must be >= 0 (0 = off), got {value!r}"
    if name == "questions":
        for q in value or []:
            if not q.strip() or len(q) > MAX_QUESTION_CHARS:
                return f"standing questions must be non-empty and at most {MAX_QUESTION_CHARS} characters"
    return None


QUESTION_HISTORY_DEPTH = 64


class DriveVqaNode(LifecycleNode):
    """The driving VQA node; see the module docstring for the lifecycle and data flow."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self._lock = threading.Lock()
        self._drops: Counter[str] = Counter()
        self._warn_loggers: dict[str, Any] = {}
        self._runner: Any = None
        self._sync: Synchronizer | None = None
        self._health: HealthMonitor | None = None
        self._worker: InferenceWorker | None = None
        self._answer_pub = self._diag_pub = self._kept_pub = None
        self._io_subscriptions: list[Any] = []
        self._io_timers: list[Any] = []
        self._render_kept = None

    # -- parameters ------------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        d = _descriptor
        self.parameter_names: list[str] = []

        def declare(name: str, value: Any, descriptor: ParameterDescriptor) -> None:
            self.declare_parameter(name, value, descriptor)
            self.parameter_names.append(name)

        declare("model", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", d(
            "checkpoint: transformers LLaVA-OneVision folder or hub id, or a DriveMM (LLaVA-NeXT) folder"))
        declare("pruning_method", "tfps", d(
            "visual token pruning method", constraints=" | ".join(PRUNING_METHODS)))
        declare("retain", 0.1, d(
            "fraction of visual tokens kept per view (run-time changeable)", read_only=False, floating=(0.0, 1.0)))
        declare("view_ratios", Parameter.Type.DOUBLE_ARRAY, d(
            "six per-camera kept fractions in DriveMM camera order; unset or empty = use retain (run-time changeable)",
            read_only=False, floating=(0.0, 1.0)))
        declare("prune_layer", 1, d(
            "decoder layer K at which tokens are pruned (0 = before the LLM)", integer=(0, 256)))
        declare("vision_backend", "tensorrt", d(
            "vision encoder backend; falls back tensorrt -> onnxruntime -> torch", constraints=" | ".join(VISION_BACKENDS)))
        declare("engine_dir", "", d("TensorRT / ONNX engine cache; empty = ~/.cache/prune2drive/engines"))
        declare("device", "auto", d("auto | cpu | cuda | cuda:N"))
        declare("dtype", "auto", d("model dtype", constraints=" | ".join(DTYPES)))
        declare("max_new_tokens", 64, d("answer length cap in tokens", integer=(1, 4096)))
        declare("camera_topics", default_topics("compressed"), d(
            "six image topics in DriveMM camera order; the cameras.py defaults follow image_transport"))
        declare("image_transport", "compressed", d(
            "sensor_msgs/CompressedImage (JPEG/PNG) or sensor_msgs/Image", constraints=" | ".join(TRANSPORTS)))
        declare("qos_reliability", "best_effort", d(
            "camera subscription reliability", constraints=" | ".join(RELIABILITIES)))
        declare("sync_slop_s", 0.08, d(
            "max stamp spread of a synchronized set; nuScenes cameras fire over ~50 ms", floating=(0.001, 10.0)))
        declare("sync_queue_size", 10, d("synchronizer queue per camera", integer=(2, 1000)))
        declare("camera_timeout_s", 1.0, d(
            f"silence before a camera is WARN (ERROR after {ERROR_FACTOR:g}x) (run-time changeable)",
            read_only=False, floating=(0.01, 3600.0)))
        declare("questions", Parameter.Type.STRING_ARRAY, d(
            "standing questions asked every question_period_s (run-time changeable)", read_only=False))
        declare("question_period_s", 0.0, d(
            "period of the standing questions; 0 = off", floating=(0.0, 86400.0)))
        declare("publish_kept_tokens", False, d(
            f"publish the kept-token mosaic on {KEPT_TOKENS_TOPIC} (run-time changeable)", read_only=False))
        declare("autostart", True, d("configure and activate at start-up"))

    def _param(self, name: str) -> Any:
        """The value, or None for a parameter declared without a default and never set (view_ratios, questions)."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Reject invalid values with the reason (read-only ones never get here: rclpy refuses them)."""
        for p in params:
            reason = check_parameter(p.name, p.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: Sequence[Parameter]) -> None:
        names = {p.name for p in params}
        if names & {"retain", "view_ratios"} and self._worker is not None:
            self._worker.set_budgets(self._param("retain"), self._param("view_ratios"))
            self.get_logger().info(f"token budgets: retain={self._param('retain')} view_ratios={self._param('view_ratios')}")
        if "camera_timeout_s" in names and self._health is not None and self._worker is not None:
            self._health.camera_timeout_s = self._param("camera_timeout_s")
            self._worker.max_set_age_s = self._max_set_age()
        if "questions" in names and self._worker is not None:
            self._worker.set_standing(self._param("questions") or [])

    def _max_set_age(self) -> float:
        # A set older than the camera timeout no longer shows the scene; questions wait for a new one.
        return max(self._param("camera_timeout_s"), 2 * self._param("sync_slop_s"))

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
            self._release_all()
            return TransitionCallbackReturn.FAILURE

    def _configure(self) -> TransitionCallbackReturn:
        for name in self.parameter_names:
            reason = check_parameter(name, self._param(name))
            if reason is not None:
                self.get_logger().error(f"configure failed: {reason}")
                return TransitionCallbackReturn.FAILURE
        model = self._param("model")
        self.get_logger().info(f"configuring: loading {model!r}")
        try:
            # Imported here: torch and transformers take seconds to import, and a broken install must
            # fail this transition with a reason instead of the process.
            from prune2drive_ros.vlm import RunnerConfig, VLMRunner

            device, dtype = self._param("device"), self._param("dtype")
            config = RunnerConfig(
                model=model,
                pruning=self._param("pruning_method"),
                retain=self._param("retain"),
                view_ratios=self._param("view_ratios") or None,
                prune_layer=self._param("prune_layer"),
                device=None if device == "auto" else device,
                dtype=None if dtype == "auto" else dtype,
                vision_backend=self._param("vision_backend"),
                engine_dir=self._param("engine_dir") or None,
                max_new_tokens=self._param("max_new_tokens"),
            )
            self._runner = VLMRunner.from_config(config)  # on a GPU this also captures the CUDA graphs
        except Exception as exc:  # any load failure is a failed transition, never a dead process
            self.get_logger().error(f"configure failed: cannot load model {model!r}: {type(exc).__name__}: {exc}")
            self._release_runner()
            return TransitionCallbackReturn.FAILURE

        self._sync = Synchronizer(NUM_CAMERAS, slop=self._param("sync_slop_s"),
                                  queue_size=self._param("sync_queue_size"))
        self._health = HealthMonitor(CAMERA_NAMES, self._param("camera_timeout_s"), error_factor=ERROR_FACTOR)
        self._worker = InferenceWorker(
            self._runner,
            functools.partial(image_codec.decode, max_side=image_codec.DEFAULT_MAX_SIDE),
            on_answer=self._publish_answer,
            on_drop=self._drop,
            max_questions=QUESTION_QUEUE_SIZE,
            max_batch=MAX_BATCH,
            max_set_age_s=self._max_set_age(),
        )
        self._worker.set_standing(self._param("questions") or [])
        self._answer_pub = self.create_lifecycle_publisher(String, ANSWER_TOPIC, 10)
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
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
        # DriveLM replays publish a keyframe's questions 1 ms apart; a deep history keeps a burst intact
        # (the worker's bounded queue still caps what waits for inference).
        self._io_subscriptions.append(
            self.create_subscription(String, QUESTION_TOPIC, self._on_question, QUESTION_HISTORY_DEPTH))
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
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Back to unconfigured with nothing held, ready for another configure.
        self.get_logger().error(f"error while in {state.label}: releasing everything")
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def autostart(self) -> bool:
        """configure + activate; on failure the node stays up in the state it reached."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed; staying unconfigured (fix it and configure again)")
            return False
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: activate failed; staying inactive")
            return False
        return True

    def _stop_io(self) -> None:
        for sub in self._io_subscriptions:
            self.destroy_subscription(sub)
        for timer in self._io_timers:
            self.destroy_timer(timer)
        self._io_subscriptions, self._io_timers = [], []
        if self._worker is not None and not self._worker.stop(WORKER_STOP_TIMEOUT_S):
            self.get_logger().error(f"inference did not finish within {WORKER_STOP_TIMEOUT_S:g} s")
        if self._sync is not None:
            self._sync.reset()

    def _release_all(self) -> None:
        self._stop_io()
        for pub in (self._answer_pub, self._diag_pub, self._kept_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._answer_pub = self._diag_pub = self._kept_pub = None
        self._worker = self._sync = self._health = None
        self._release_runner()

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
        """Count a drop and warn, throttled per reason (one call site per logger keeps them apart)."""
        with self._lock:
            self._drops[reason] += 1
            logger = self._warn_loggers.get(reason)
            if logger is None:
                logger = self._warn_loggers[reason] = self.get_logger().get_child(reason)
        logger.warning(message, throttle_duration_sec=WARN_THROTTLE_S)

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
            self._drop("time_jump", f"{camera}: time ran backwards (bag loop?); synchronizer reset")
        elif outcome == LATE:
            self._drop("late", f"{camera}: frame older than this camera's last synchronized set dropped")
        for synced in sets:
            health.synced()
            worker.submit(synced)

    def _on_question(self, msg: String) -> None:
        worker = self._worker
        if worker is None:
            return
        question = msg.data.strip()
        if not question:
            self._drop("empty_question", "empty question ignored")
        elif len(question) > MAX_QUESTION_CHARS:
            self._drop("long_question", f"question of {len(question)} characters ignored (bound {MAX_QUESTION_CHARS})")
        else:
            worker.ask(question)

    # -- outputs ---------------------------------------------------------------------------------

    def _status(self, level: int, name: str, message: str, values: Sequence[tuple[str, str]]) -> DiagnosticStatus:
        return DiagnosticStatus(level=_LEVELS[level], name=f"{self.get_name()}: {name}", message=message,
                                hardware_id=self.get_fully_qualified_name(),
                                values=[KeyValue(key=k, value=v) for k, v in values])

    def _publish_diagnostics(self, statuses: list[DiagnosticStatus]) -> None:
        pub = self._diag_pub
        if pub is not None:
            pub.publish(DiagnosticArray(header=self._header(), status=statuses))

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
                "set_spread_ms": f"{event.synced.spread_s * 1000.0:.1f}",
                "set_age_ms": f"{event.set_age_ms:.1f}",
                "batch_size": event.batch_size,
                "prefix_reused": answer.prefix_reused,
                "pruning_method": self._param("pruning_method"),
                "vision_backend_reason": getattr(getattr(runner, "vision", None), "reason", ""),
                "runtime_path": getattr(answer, "path", ""),
            },
        )
        self._publish_diagnostics([self._status(OK, "answer", answer.text[:200], values)])
        if self._param("publish_kept_tokens"):
            self._publish_kept_tokens(event)

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
            stats = worker.stats()
            counters.update(sets_dropped=stats["sets_dropped"], inferences=stats["inferences"],
                            answers=stats["answers"], question_queue_depth=stats["question_queue_depth"],
                            questions_dropped=stats["questions_dropped"])
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``drive_vqa_node`` (console script and ``python -m``)."""
    rclpy.init(args=argv)
    node = DriveVqaNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            node.autostart()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._release_all()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
