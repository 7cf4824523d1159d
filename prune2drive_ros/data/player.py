"""``prune2drive play``: replay a rosbag2 with rclpy, for machines without rosbag2 (the pip wheels).

Reads the bag with rosbags (MCAP or sqlite3), deserializes each message, converts it to the rclpy class of
its type (``rosmsg.to_rclpy``) and publishes it, paced by the bag's timestamps scaled by ``--rate``.
Header stamps are left as recorded. Where ``ros2 bag play`` exists, prefer it; this covers the same
everyday use (rate, loop, topic filter, /clock).

QoS: RELIABLE, keep-last 10 (100 for the question bursts), volatile on every topic. Our node subscribes
best-effort, and a best-effort subscription matches a reliable publisher (never the other way round), so
reliable serves it as well as ``ros2 topic echo``, rviz and other reliable subscribers. /clock uses rclpy's
own clock profile (best effort, depth 1), which is what rclpy's TimeSource subscribes with.

Looping: the cameras repeat, but the bag's questions (``/vlm/question``) are sent on the first pass only
(``loop_questions`` / ``--loop-questions`` repeats them too): a recorded question asked again on every
pass would only crowd the node's queue. The node recognises this player (node name
``prune2drive_player``) and queues its questions behind a person's.

rclpy is imported only when a player runs, and each player lives in its own rclpy context, so it can run
next to a node (in a thread, as the demo does) without touching the default context.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLOCK_TOPIC = "/clock"
QUESTION_TOPIC = "/vlm/question"
QOS_DEPTH = 10
QUESTION_QOS_DEPTH = 100
DRAIN_TIMEOUT_S = 2.0  # after the last message, wait this long at most for reliable deliveries to be acked


class BagPlayer:
    """Publishes a bag's messages with rclpy in (scaled) real time.

    ``run()`` blocks until the bag ends (or, with ``loop``, until stopped) and returns the number of
    messages published, also kept in ``published``. Stop it from another thread with ``stop_event`` (or
    ``stop()``); ``max_duration`` caps wall-clock seconds.
    """

    def __init__(self, bag: str | Path, rate: float = 1.0, loop: bool = False, topics: Sequence[str] | None = None,
                 clock: bool = False, *, clock_hz: float = 40.0, wait_for_subscribers: float = 0.0,
                 serialized: bool = False, loop_questions: bool = False,
                 node_name: str = "prune2drive_player") -> None:
        """
        Args:
            bag: rosbag2 folder (or its .mcap/.db3 file's folder).
            rate: playback speed factor, > 0 (2.0 plays twice as fast).
            loop: start over at the end, until stopped.
            topics: only these topics (default all); unknown names raise ValueError.
            clock: also publish rosgraph_msgs/Clock on /clock with the bag time, at ``clock_hz``.
            wait_for_subscribers: before playing, wait up to this many seconds until every topic that has
                subscribers in the ROS graph is matched by our publisher (DDS discovery takes a moment; without
                the wait the first messages can go to nobody).
            serialized: publish the bag's CDR bytes as they are instead of converting messages (faster; the bag's
                type definitions must match the installed ones).
            loop_questions: with ``loop``, send the bag's questions on every pass (default: the first only).
        """
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.bag = Path(bag)
        if not self.bag.exists():
            raise FileNotFoundError(f"bag not found: {self.bag}")
        self.rate = rate
        self.loop = loop
        self.topics = list(topics) if topics else None
        self.clock = clock
        self.clock_hz = clock_hz
        self.wait_for_subscribers = wait_for_subscribers
        self.serialized = serialized
        self.loop_questions = loop_questions
        self.node_name = node_name
        self.published = 0
        self.loops_completed = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, stop_event: threading.Event | None = None, max_duration: float | None = None) -> int:
        """Play the bag; returns the number of messages published."""
        import rclpy
        from rclpy.context import Context
        from rosbags.highlevel import AnyReader

        from prune2drive_ros.data.nuscenes_to_bag import ros2_typestore

        stop = _AnyEvent(self._stop, stop_event)
        deadline = None if max_duration is None else time.monotonic() + max_duration
        context = Context()
        node = None
        try:
            rclpy.init(context=context)
            node = rclpy.create_node(self.node_name, context=context)
            with AnyReader([self.bag], default_typestore=ros2_typestore()) as reader:
                connections = self._select(reader)
                publishers = self._publishers(node, connections)
                clock_pub = self._clock_publisher(node) if self.clock else None
                self._wait_for_matches(node, publishers, stop, deadline)
                passes = 0
                while not stop.is_set():
                    selected = connections
                    if passes and not self.loop_questions:
                        selected = [c for c in connections if c.topic != QUESTION_TOPIC] or connections
                    finished = self._play_once(reader, selected, publishers, clock_pub, stop, deadline)
                    passes += 1
                    if not finished or not self.loop:
                        break
                    self.loops_completed += 1
                for publisher in publishers.values():
                    publisher.wait_for_all_acked(_duration(DRAIN_TIMEOUT_S))
        finally:
            if node is not None:
                node.destroy_node()
            # DDS goes down here, not whenever the garbage collector gets to the context.
            context.try_shutdown()
            context.destroy()
        return self.published

    # --- internals --------------------------------------------------------------------------------------

    def _select(self, reader: Any) -> list:
        available = sorted({c.topic for c in reader.connections})
        if self.topics is None:
            return list(reader.connections)
        unknown = [t for t in self.topics if t not in available]
        if unknown:
            raise ValueError(f"topic(s) not in the bag: {', '.join(unknown)}; the bag has {', '.join(available)}")
        return [c for c in reader.connections if c.topic in self.topics]

    def _publishers(self, node: Any, connections: list) -> dict:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        from prune2drive_ros.data.rosmsg import message_class

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        # A keyframe's questions are recorded 1 ms apart: a keep-last-10 writer could overwrite some of such a
        # burst before the reader has them.
        burst_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=QUESTION_QOS_DEPTH,
                               reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        publishers: dict = {}
        by_topic: dict = {}
        for conn in connections:
            if conn.topic not in by_topic:
                by_topic[conn.topic] = node.create_publisher(message_class(conn.msgtype), conn.topic,
                                                             burst_qos if conn.topic == QUESTION_TOPIC else qos)
            publishers[conn.id] = by_topic[conn.topic]
        return publishers

    def _clock_publisher(self, node: Any) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        return node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))

    def _wait_for_matches(self, node: Any, publishers: dict, stop: _AnyEvent, deadline: float | None) -> None:
        if self.wait_for_subscribers <= 0:
            return
        end = time.monotonic() + self.wait_for_subscribers
        unique = {id(p): p for p in publishers.values()}.values()
        while time.monotonic() < end and not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            wanted = [(p, node.count_subscribers(p.topic_name)) for p in unique]
            if any(n for _, n in wanted) and all(p.get_subscription_count() >= n for p, n in wanted):
                return
            stop.wait(0.02)

    def _play_once(self, reader: Any, connections: list, publishers: dict, clock_pub: Any, stop: _AnyEvent,
                   deadline: float | None) -> bool:
        """One pass over the bag; False if stopped or out of time before the end."""
        from prune2drive_ros.data.rosmsg import to_rclpy

        wall_start = time.monotonic()
        bag_start: int | None = None
        tick = 1.0 / self.clock_hz if self.clock else 0.1
        for conn, timestamp, raw in reader.messages(connections=connections):
            if bag_start is None:
                bag_start = timestamp
            due = wall_start + (timestamp - bag_start) / 1e9 / self.rate
            # Sleep in short slices so a stop request, the deadline and /clock ticks are never held up.
            while True:
                now = time.monotonic()
                if stop.is_set() or (deadline is not None and now >= deadline):
                    return False
                if now >= due:
                    break
                stop.wait(min(due - now, tick))
                if clock_pub is not None:
                    elapsed = (time.monotonic() - wall_start) * self.rate
                    self._publish_clock(clock_pub, bag_start + int(min(elapsed * 1e9, timestamp - bag_start)))
            if clock_pub is not None:
                self._publish_clock(clock_pub, timestamp)
            message = bytes(raw) if self.serialized else to_rclpy(reader.deserialize(raw, conn.msgtype),
                                                                     publishers[conn.id].msg_type)
            publishers[conn.id].publish(message)
            self.published += 1
        return True

    @staticmethod
    def _publish_clock(publisher: Any, nanoseconds: int) -> None:
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        publisher.publish(Clock(clock=Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)))


class _AnyEvent:
    """Set when any of the given events is set; waits on the first (ours) in short slices."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

    def wait(self, timeout: float) -> None:
        end = time.monotonic() + max(timeout, 0.0)
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            self.events[0].wait(min(left, 0.05))


def _duration(seconds: float) -> Any:
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="rosbag2 folder (MCAP or sqlite3)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="play again from the start until Ctrl-C")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", help="only these topics (default: all)")
    parser.add_argument("--clock", action="store_true", help=f"publish the bag time on {CLOCK_TOPIC}")
    parser.add_argument("--clock-hz", type=float, default=40.0, help="/clock rate in Hz (default 40)")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to SECONDS for subscribers that exist to be matched before playing")
    parser.add_argument("--serialized", action="store_true",
                        help="publish the stored CDR bytes without converting messages (faster)")
    parser.add_argument("--loop-questions", action="store_true",
                        help=f"with --loop, send the bag's {QUESTION_TOPIC} messages on every pass (default: first only)")


def run(args: argparse.Namespace) -> int:
    try:
        player = BagPlayer(args.bag, rate=args.rate, loop=args.loop, topics=args.topics, clock=args.clock,
                           clock_hz=args.clock_hz, wait_for_subscribers=args.wait_for_subscribers,
                           serialized=args.serialized, loop_questions=args.loop_questions)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        print(f"playing {args.bag} at rate {args.rate}{' in a loop' if args.loop else ''}; Ctrl-C stops", flush=True)
        player.run()
    except KeyboardInterrupt:
        # run() has already closed the bag and the ROS context in its finally block.
        print(f"\nstopped after {player.published} messages", file=sys.stderr)
        return 130
    except ModuleNotFoundError:
        raise  # the command line names the extra that brings it
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"published {player.published} messages in {time.monotonic() - started:.1f} s")
    return 0
