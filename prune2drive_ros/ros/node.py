"""``drive_vqa_node``: the rclpy side of the driving VQA service (``service.VqaService`` does the work).

    ros2 run prune2drive_ros drive_vqa_node --ros-args --params-file config/drive_vqa.yaml
    python -m prune2drive_ros.ros.node --ros-args -p model:=/path/to/checkpoint

A managed (lifecycle) node:

- configure loads the VLM runner (``model``, or the shipped test bed when the default hub model is not
  in the local cache) and builds the service. A failure fails the transition with the reason logged;
  the process stays up in ``unconfigured``.
- activate subscribes to the cameras, ``/vlm/question`` and ``/vlm/cancel``, starts the service and
  the 1 Hz health status; the lifecycle publishers go live.
- deactivate stops all that (decoding questions stop within a step); cleanup releases the model.
- ``autostart`` (default true) walks configure + activate at start-up, so ``ros2 launch`` just works.

Parameters come from ``prune2drive_ros.settings``. A start-up value that is out of range or of the wrong
type never ends the process: it is logged with the reason, the default is declared in its place and
configure fails until it is fixed. An integer where a double is expected (``retain:=1``) is taken.

SIGINT and SIGTERM, once or repeatedly, end the process with exit code 0 within a few seconds, also
while an answer is being computed (see ``main``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from prune2drive_ros import cameras
from prune2drive_ros.model_source import choose_node_model, quiet_progress_bars
from prune2drive_ros.ros.diagnostics import ERROR, OK, WARN
from prune2drive_ros.ros.parameters import NodeParameters
from prune2drive_ros.ros.records import Status
from prune2drive_ros.ros.service import REPLAY_QUEUE_SIZE, SERVICE_SETTINGS, Outputs, QuestionSources, VqaService
from prune2drive_ros.ros.worker import LIVE
from prune2drive_ros.settings import DYNAMIC_PARAMETERS, runner_values
from prune2drive_ros.vlm.info import RunnerInfo

__all__ = ["DYNAMIC_PARAMETERS", "NODE_NAME", "DriveVqaNode", "main"]

NODE_NAME = "drive_vqa"
HEALTH_PERIOD_S = 1.0
WORKER_STOP_TIMEOUT_S = 60.0
"""deactivate waits this long for a running inference (the model must not be closed under it)."""
SHUTDOWN_TIMEOUT_S = 2.0
"""On SIGINT/SIGTERM, wait this long for a running inference, then exit without it."""

_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}
# rclpy >= Iron hands a two-argument callback the message info, which names the publisher.
_HAS_MESSAGE_INFO = hasattr(Subscription, "CallbackType")


def _gid(info: Any) -> tuple[int, ...] | None:
    """The publisher GID from rclpy's message info, comparable with TopicEndpointInfo.endpoint_gid."""
    gid = info.get("publisher_gid") if isinstance(info, Mapping) else getattr(info, "publisher_gid", None)
    data = gid.get("data") if isinstance(gid, Mapping) else getattr(gid, "data", gid)
    try:
        return None if gid is None else tuple(int(b) for b in data)
    except TypeError:
        return None


class DriveVqaNode(LifecycleNode):
    """The driving VQA node; see the module docstring for the lifecycle and data flow."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.service: VqaService | None = None
        self.parameters = NodeParameters(self, on_change=self._apply)
        self._pubs: dict[str, Any] = {}
        self._io: list[Any] = []  # subscriptions and timers of the active state
        self._sources = QuestionSources(lambda: [(e.node_name, tuple(e.endpoint_gid))
                                                 for e in self.get_publishers_info_by_topic(cameras.QUESTION_TOPIC)])

    @property
    def startup_errors(self) -> dict[str, str]:
        """Parameter -> why its start-up value was rejected; configure fails while any is left."""
        return self.parameters.errors

    def _param(self, name: str) -> Any:
        return self.parameters.value(name)

    def _apply(self, changed: dict[str, Any]) -> None:
        if self.service is not None:
            self.service.update(changed)

    def _camera_topics(self) -> list[str]:
        topics, transport = list(self._param("camera_topics")), self._param("image_transport")
        other = "raw" if transport == "compressed" else "compressed"
        # The YAML lists the compressed defaults; `image_transport:=raw` alone should just work.
        return cameras.default_topics(transport) if topics == cameras.default_topics(other) else topics

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
        reasons = self.parameters.problems()
        for reason in reasons:
            self.get_logger().error(f"configure failed: {reason}")
        if reasons:
            return TransitionCallbackReturn.FAILURE
        values = self.parameters.values()
        choice = choose_node_model(values["model"])
        if choice.warning:
            self.get_logger().warning(choice.warning)
        self.get_logger().info(f"configuring: loading {choice.model!r}")
        runner = None
        try:
            # Imported here: torch and transformers take seconds to import, and a broken install must
            # fail this transition with a reason instead of the process.
            from prune2drive_ros.vlm import RunnerConfig, VLMRunner

            quiet_progress_bars()
            config = RunnerConfig(**{**runner_values(values), "model": choice.model})
            runner = VLMRunner.from_config(config)  # on a GPU this also captures the CUDA graphs
            self.service = VqaService(runner, {k: values[k] for k in SERVICE_SETTINGS}, self._outputs(),
                                      self.get_logger(), name=self.get_name())
        except Exception as exc:  # any load failure is a failed transition, never a dead process
            self.get_logger().error(f"configure failed: cannot load model {choice.model!r}: {type(exc).__name__}: {exc}")
            if runner is not None:
                runner.close()
            return TransitionCallbackReturn.FAILURE
        pub = self.create_lifecycle_publisher
        self._pubs = {"answer": pub(String, cameras.ANSWER_TOPIC, 10),
                      "info": pub(String, cameras.ANSWER_INFO_TOPIC, 50),
                      "stream": pub(String, cameras.ANSWER_STREAM_TOPIC, 50),
                      "diagnostics": pub(DiagnosticArray, cameras.DIAGNOSTICS_TOPIC, 50),
                      "kept_tokens": pub(Image, cameras.KEPT_TOKENS_TOPIC, 2)}
        info = self.service.info
        self.get_logger().info(
            f"configured: device={info.device} dtype={info.dtype} vision_backend={info.vision_backend} "
            f"({info.vision_reason}) pruning={info.pruning} at layer {info.prune_layer}"
            + (f"; CUDA graphs captured in {info.warmup_ms:.0f} ms" if info.warmup_ms else ""))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            # Publishers first, so the first answer is not published into an inactive publisher.
            result = super().on_activate(state)
            return self._activate() if result == TransitionCallbackReturn.SUCCESS else result
        except Exception as exc:
            self.get_logger().error(f"activate failed: {type(exc).__name__}: {exc}")
            self._stop_io()
            super().on_deactivate(state)  # back to inactive: the lifecycle publishers too
            return TransitionCallbackReturn.FAILURE

    def _activate(self) -> TransitionCallbackReturn:
        service = self.service
        reliable = self._param("qos_reliability") == "reliable"
        # Shallow DDS queues: the synchronizer holds the history; stale frames only add latency.
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        msg_type = CompressedImage if self._param("image_transport") == "compressed" else Image
        topics = self._camera_topics()
        self._io = [self.create_subscription(msg_type, topic, functools.partial(service.image, index), qos)
                    for index, topic in enumerate(topics)]
        # A bag's DriveLM questions come 1 ms apart; a deep history keeps such a burst intact (the
        # service's bounded queues still cap what waits for inference).
        on_question = self._on_question_with_info if _HAS_MESSAGE_INFO else self._on_question
        self._io.append(self.create_subscription(String, cameras.QUESTION_TOPIC, on_question, REPLAY_QUEUE_SIZE))
        self._io.append(self.create_subscription(String, cameras.CANCEL_TOPIC, lambda m: service.cancel(m.data), 10))
        self._io.append(self.create_timer(HEALTH_PERIOD_S, service.publish_health))
        period = self._param("question_period_s")
        if period > 0.0:
            self._io.append(self.create_timer(period, service.standing_due))
        service.start()
        self.get_logger().info(f"active: {msg_type.__name__} on {', '.join(topics)}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release(reason="shutdown")
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
        for entity in self._io:
            (self.destroy_timer if isinstance(entity, Timer) else self.destroy_subscription)(entity)
        self._io = []
        return self.service.stop(timeout, reason) if self.service is not None else True

    def release(self, timeout: float = WORKER_STOP_TIMEOUT_S, reason: str = "not_active") -> bool:
        """Stop everything and free the model. Idempotent. Returns False if an inference was still
        running after ``timeout`` s: the model is then left alone (it is in use) and the caller should
        end the process rather than wait."""
        stopped = self._stop_io(timeout, reason)
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if stopped and self.service is not None:
            service, self.service = self.service, None
            service.close()
        return stopped

    # -- what others may read --------------------------------------------------------------------

    def runner_info(self) -> RunnerInfo | None:
        """The loaded runner's facts (None while unconfigured)."""
        return None if self.service is None else self.service.info

    def health_counters(self) -> dict[str, Any]:
        """The counters of the health status (empty while unconfigured)."""
        return {} if self.service is None else self.service.counters()

    # -- callbacks -------------------------------------------------------------------------------

    def _on_question_with_info(self, msg: String, info: Any) -> None:
        self._on_question(msg, self._sources.source(_gid(info)))

    def _on_question(self, msg: String, source: str = LIVE) -> None:
        if self.service is not None:
            self.service.question(msg.data, source)

    def _outputs(self) -> Outputs:
        def publish(key: str, msg: Any) -> None:
            pub = self._pubs.get(key)
            if pub is not None:
                pub.publish(msg)

        return Outputs(answer=lambda text: publish("answer", String(data=text)),
                       info=lambda text: publish("info", String(data=text)),
                       stream=lambda text: publish("stream", String(data=text)),
                       diagnostics=lambda statuses: publish("diagnostics", self._diagnostics(statuses)),
                       kept_tokens=lambda mosaic, stamp_ns: publish("kept_tokens", _image(mosaic, stamp_ns)))

    def _diagnostics(self, statuses: list[Status]) -> DiagnosticArray:
        header = Header(stamp=self.get_clock().now().to_msg())
        return DiagnosticArray(header=header, status=[
            DiagnosticStatus(level=_LEVELS[s.level], name=s.name, message=s.message,
                             hardware_id=self.get_fully_qualified_name(),
                             values=[KeyValue(key=k, value=str(v)) for k, v in s.values]) for s in statuses])


def _image(mosaic: np.ndarray, stamp_ns: int) -> Image:
    height, width = mosaic.shape[:2]
    msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3, data=mosaic.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = "kept_tokens"
    return msg


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
    on a busy machine.
    """
    context = rclpy.Context()
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = DriveVqaNode(context=context)
    logger = node.get_logger()
    signals = _Signals(logger)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        with signals.interruptible():
            if node.get_parameter("autostart").value:
                node.autostart()
        while not signals.requested.is_set() and context.ok():
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
        # DDS goes down here, not whenever the garbage collector finds the node's reference cycles.
        context.try_shutdown()
        context.destroy()
        signals.restore()
    if hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
