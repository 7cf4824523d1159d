"""A synthetic six-camera rig: nuScenes-like streams without a bag, for demos and the node tests.

    python -m prune2drive_ros.ros.fake_cameras --ros-args -p rate_hz:=12.0 -p image_transport:=raw

Every sweep (12 Hz) publishes the six cameras with header stamps ``sweep + Camera.fire_offset_ms``
(plus optional jitter), like the nuScenes rig. Frames are small synthetic pictures encoded once, so
the rig costs little CPU. Tests can mute cameras, corrupt their payloads or rewind the timeline (a bag
loop) at run time.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from collections.abc import Sequence

import cv2
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from prune2drive_ros.cameras import CAMERAS, NUM_CAMERAS, default_topics

NS = 1_000_000_000
VARIANTS = 4


def synthetic_views(width: int, height: int, variants: int = VARIANTS) -> list[list[np.ndarray]]:
    """RGB pictures per camera and variant: a per-camera colour ramp with a moving bar."""
    y, x = np.mgrid[0:height, 0:width]
    views = []
    for cam in range(NUM_CAMERAS):
        base = np.stack([(x * 255 // max(width, 1) + 40 * cam) % 256,
                         y * 255 // max(height, 1),
                         np.full_like(x, 30 * cam)], axis=2).astype(np.uint8)
        frames = []
        for v in range(variants):
            frame = base.copy()
            left = (v * width) // variants
            frame[:, left:left + max(width // 10, 1)] = 255
            frames.append(frame)
        views.append(frames)
    return views


class FakeCameraRig(Node):
    def __init__(self, node_name: str = "fake_cameras", *, rate_hz: float = 12.0, transport: str = "compressed",
                 width: int = 160, height: int = 90, jitter_ms: float = 0.0, reliability: str = "best_effort",
                 topics: Sequence[str] | None = None, autostart: bool = True, loop_sweeps: int = 0,
                 **kwargs) -> None:
        """``loop_sweeps`` > 0 replays the same stamps every that many sweeps, like a short bag in a loop."""
        super().__init__(node_name, **kwargs)
        self.rate_hz = self.declare_parameter("rate_hz", rate_hz).value
        self.transport = self.declare_parameter("image_transport", transport).value
        self.jitter_ms = self.declare_parameter("jitter_ms", jitter_ms).value
        width = self.declare_parameter("width", width).value
        height = self.declare_parameter("height", height).value
        topics = list(topics or default_topics(self.transport))
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
                         else ReliabilityPolicy.RELIABLE)
        msg_type = CompressedImage if self.transport == "compressed" else Image
        self.camera_pubs = [self.create_publisher(msg_type, topic, qos) for topic in topics]
        self._frames = [[self._message(view) for view in views] for views in synthetic_views(width, height)]
        self._lock = threading.Lock()
        self._rng = random.Random(0)
        self.muted: set[int] = set()
        self.corrupt: set[int] = set()
        self.zero_stamp: set[int] = set()
        self.overrides: dict[int, object] = {}
        """Camera index -> a message to publish instead of the synthetic frame (stamp still set)."""
        self.sweep = 0
        self.loop_sweeps = loop_sweeps
        self.published = 0
        self._base_ns = self.get_clock().now().nanoseconds
        # create_timer(..., autostart=) is newer than Humble: cancel instead.
        self._timer = self.create_timer(1.0 / self.rate_hz, self._tick)
        if not autostart:
            self._timer.cancel()

    def _message(self, rgb: np.ndarray):
        if self.transport == "compressed":
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert ok
            return CompressedImage(format="jpeg", data=buf.tobytes())
        h, w = rgb.shape[:2]
        return Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=rgb.tobytes())

    def start(self) -> None:
        self._timer.reset()

    def stop(self) -> None:
        self._timer.cancel()

    def rewind(self, seconds: float) -> None:
        """Make the stamps jump back, as a looping ``ros2 bag play`` does."""
        with self._lock:
            self._base_ns -= int(seconds * NS)

    def _tick(self) -> None:
        with self._lock:
            k = self.sweep
            self.sweep += 1
            stamp_k = k % self.loop_sweeps if self.loop_sweeps else k
            sweep_ns = self._base_ns + int(stamp_k * NS / self.rate_hz)
        order = sorted(range(NUM_CAMERAS), key=lambda i: CAMERAS[i].fire_offset_ms)
        for cam in order:
            if cam in self.muted:
                continue
            msg = self.overrides.get(cam) or self._frames[cam][k % VARIANTS]
            jitter = self._rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
            stamp = 0 if cam in self.zero_stamp else sweep_ns + int((CAMERAS[cam].fire_offset_ms + jitter) * 1e6)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS)
            msg.header.frame_id = CAMERAS[cam].frame_id
            if cam in self.corrupt and self.transport == "compressed":
                msg = CompressedImage(header=msg.header, format="jpeg",
                                      data=b"\xff\xd8\xff" + bytes(self._rng.getrandbits(8) for _ in range(256)))
            self.camera_pubs[cam].publish(msg)
            self.published += 1


def main(argv: list[str] | None = None) -> int:
    """Publish until Ctrl-C (exit code 130) or until the context is shut down (0)."""
    # Ctrl-C must raise KeyboardInterrupt here, also when a script started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    context = rclpy.Context()
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = FakeCameraRig(context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    code = 0
    try:
        executor.spin()
    except KeyboardInterrupt:
        code = 130
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()
        context.destroy()  # DDS goes down now, not in a garbage-collector pass
    return code


if __name__ == "__main__":
    sys.exit(main())
