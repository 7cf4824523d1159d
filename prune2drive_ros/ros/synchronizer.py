"""Group the six camera streams into synchronized sets by header stamp, without ROS.

The nuScenes cameras fire one after another as the LiDAR sweeps (7 to 49 ms after the sweep stamp,
see ``Camera.fire_offset_ms``), so the frames of one sweep spread over ~42 ms while the streams run at
12 Hz (83 ms apart). A slop of 80 ms therefore admits both the true sweep and some sets that mix two
sweeps; a first-fit rule locks onto such a mixed phase after a single dropped frame and never leaves
it. This synchronizer picks, like message_filters' ApproximateTime, the set with the smallest spread.

Rule (oldest first, smallest spread, emitted once it is certain):

1. Per stream, pending frames are kept sorted by stamp in a bounded queue.
2. The candidates are the "heads" sets: the oldest pending frame of every stream; the next candidate
   drops the overall oldest head (advances that stream), and so on. This walks through every set that
   can be the tightest one, oldest first.
3. The best candidate is the one with the smallest spread (newest minus oldest stamp) within ``slop``;
   ties keep the older set. The walk stops at the first candidate that starts after the best one ends:
   every later candidate is disjoint from it and is left for a later set.
4. The best set is emitted once that stopping candidate is known, i.e. once every stream has delivered
   a frame newer than the set's newest member. For in-order streams this proves that no frame still to
   come can form a tighter set with any of its members; the cost is latency, about one frame period
   (83 ms at 12 Hz) after the set completes, small next to an inference.
5. Emitting consumes the set and drops every older pending frame; those, frames that can no longer
   meet all other streams within ``slop``, and frames pushed out of a full queue are counted as
   ``frames_unmatched``.

A stream that fires late is simply reordered into its queue. A frame older than what its stream has
already delivered into a set is ``late`` and dropped.

Time running backwards (a bag loop, a restarted replay, a simulator reset) must never stall the sets:

- A stream whose stamp steps back more than ``jump_threshold`` behind its own previous frame has
  started another timeline (each stream arrives in order; DDS keeps one writer's samples in order).
- A stream that keeps delivering only ``late`` frames for ``late_reset_s`` seconds has too, by less
  than the threshold (a bag shorter than it).

Either resets the synchronizer: everything pending is dropped and ``time_jumps`` counted. The other
streams' frames of the old timeline still in flight (newer than that stream's last frame) are
dropped as ``late`` until that stream steps back itself (or ``straggler_window`` seconds pass),
rather than triggering a second reset. This works whatever the length of the bag, also when the old
and new timelines overlap in stamps.

Stamps are ``int`` nanoseconds or ``float`` seconds. ``add`` never blocks beyond a short lock and does
O(queued frames) work, so it can run in a subscription callback.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prune2drive_ros import settings
from prune2drive_ros.cameras import NUM_CAMERAS

NS_PER_S = 1_000_000_000

# add() outcomes, also the keys of the per-reason drop counters.
QUEUED = "queued"
LATE = "late"
TIME_JUMP = "time_jump"


def to_ns(stamp: float | int) -> int:
    """``int`` stamps are nanoseconds, ``float`` stamps seconds."""
    if isinstance(stamp, bool):
        raise TypeError("a stamp is int nanoseconds or float seconds, not bool")
    if isinstance(stamp, int):
        return stamp
    return round(float(stamp) * NS_PER_S)


@dataclass(frozen=True)
class SyncedSet:
    """One frame per stream, in stream (camera) order."""

    items: tuple[Any, ...] = field(repr=False)
    stamps_ns: tuple[int, ...]
    first_arrival: float
    """Clock reading when the earliest member arrived."""
    completed: float
    """Clock reading when the set was emitted."""

    @property
    def stamp_ns(self) -> int:
        """The set's stamp: its newest member's, the moment the scene was fully seen."""
        return max(self.stamps_ns)

    @property
    def stamp(self) -> float:
        return self.stamp_ns / NS_PER_S

    @property
    def spread_s(self) -> float:
        return (max(self.stamps_ns) - min(self.stamps_ns)) / NS_PER_S

    @property
    def wait_s(self) -> float:
        """How long the synchronizer held the set's first frame before emitting it."""
        return self.completed - self.first_arrival


@dataclass
class SyncStats:
    frames_in: list[int]
    sets: int = 0
    frames_unmatched: int = 0
    late: int = 0
    time_jumps: int = 0
    queue_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Frame:
    stamp: int
    arrival: float
    item: Any


class Synchronizer:
    """Approximate-time synchronizer for ``num_streams`` streams (see the module docstring)."""

    def __init__(
        self,
        num_streams: int = NUM_CAMERAS,
        *,
        slop: float = settings.default("sync_slop_s"),
        queue_size: int = settings.default("sync_queue_size"),
        jump_threshold: float = 0.25,
        straggler_window: float = 1.0,
        late_reset_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if num_streams < 1:
            raise ValueError("num_streams must be >= 1")
        if not slop > 0:
            raise ValueError(f"slop must be > 0 s, got {slop}")
        # Certifying a set needs the frame after it, so each queue must hold two frames.
        if queue_size < 2:
            raise ValueError(f"queue_size must be >= 2, got {queue_size}")
        if not jump_threshold > 0:
            raise ValueError(f"jump_threshold must be > 0 s, got {jump_threshold}")
        self.num_streams = num_streams
        self.slop_ns = to_ns(float(slop))
        self.queue_size = queue_size
        self.jump_ns = to_ns(float(jump_threshold))
        self.straggler_window = straggler_window
        self.late_reset_s = late_reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._frames_in = [0] * num_streams
        self._sets = 0
        self._unmatched = 0
        self._late = 0
        self._time_jumps = 0
        self._clear()

    # -- public API ---------------------------------------------------------------------------

    def add(self, index: int, stamp: float | int, item: Any = None) -> tuple[str, list[SyncedSet]]:
        """Queue one frame; return the outcome (QUEUED, LATE, TIME_JUMP) and the sets it completed."""
        if not 0 <= index < self.num_streams:
            raise IndexError(f"stream index {index} out of range 0..{self.num_streams - 1}")
        stamp_ns = to_ns(stamp)
        now = self._clock()
        with self._lock:
            self._frames_in[index] += 1
            outcome = QUEUED
            if self._is_straggler(index, stamp_ns, now):
                self._late += 1
                return LATE, []
            last = self._last[index]
            if last is not None and stamp_ns < last - self.jump_ns:
                self._time_jump_locked(index, now)
                outcome = TIME_JUMP
            queue = self._queues[index]
            stamps = self._stamps[index]
            pos = bisect.bisect_left(stamps, stamp_ns)
            # Older than this stream's last set member, or a duplicate stamp (no new information).
            if stamp_ns <= self._consumed[index] or (pos < len(stamps) and stamps[pos] == stamp_ns):
                self._late += 1
                since = self._late_since[index]
                if since is None:
                    self._late_since[index] = now
                    return LATE, []
                if now - since <= self.late_reset_s:
                    return LATE, []
                # Only late frames for a while: this stream went back by less than jump_threshold.
                self._time_jump_locked(index, now)
                self._late -= 1
                outcome = TIME_JUMP
                queue, stamps, pos = self._queues[index], self._stamps[index], 0
            self._late_since[index] = None
            queue.insert(pos, _Frame(stamp_ns, now, item))
            stamps.insert(pos, stamp_ns)
            if len(queue) > self.queue_size:
                del queue[0], stamps[0]
                self._unmatched += 1
            self._last[index] = stamp_ns if last is None or outcome == TIME_JUMP else max(last, stamp_ns)
            return outcome, self._process_locked(now)

    def reset(self) -> None:
        """Drop everything pending (counted as unmatched); the counters survive."""
        with self._lock:
            self._reset_locked(None)

    def stats(self) -> SyncStats:
        with self._lock:
            return SyncStats(
                frames_in=list(self._frames_in),
                sets=self._sets,
                frames_unmatched=self._unmatched,
                late=self._late,
                time_jumps=self._time_jumps,
                queue_sizes=[len(q) for q in self._queues],
            )

    def queue_sizes(self) -> list[int]:
        with self._lock:
            return [len(q) for q in self._queues]

    # -- internals (call with the lock held) ----------------------------------------------------

    def _clear(self) -> None:
        self._queues: list[list[_Frame]] = [[] for _ in range(self.num_streams)]
        self._stamps: list[list[int]] = [[] for _ in range(self.num_streams)]
        # Newest stamp each stream has delivered, and the stamp of its last member of an emitted set.
        self._last: list[int | None] = [None] * self.num_streams
        self._consumed = [-(2**63)] * self.num_streams
        self._late_since: list[float | None] = [None] * self.num_streams
        # After a time jump: each stream's newest stamp of the old timeline, until it steps back too.
        self._old_last: list[int | None] = [None] * self.num_streams
        self._rewound_at = 0.0

    def _reset_locked(self, now: float | None) -> None:
        self._unmatched += sum(len(q) for q in self._queues)
        self._clear()

    def _time_jump_locked(self, index: int, now: float) -> None:
        old_last = list(self._last)
        self._reset_locked(now)
        self._time_jumps += 1
        self._old_last = old_last
        self._old_last[index] = None  # this stream is on the new timeline already
        self._rewound_at = now

    def _is_straggler(self, index: int, stamp_ns: int, now: float) -> bool:
        """A frame of the timeline before a jump, from a stream that has not stepped back yet."""
        old_last = self._old_last[index]
        if old_last is None:
            return False
        if now - self._rewound_at > self.straggler_window or stamp_ns <= old_last:
            self._old_last[index] = None  # this stream has joined the new timeline (or went quiet)
            return False
        return True

    def _process_locked(self, now: float) -> list[SyncedSet]:
        emitted: list[SyncedSet] = []
        while True:
            self._drop_orphans()
            if not all(self._queues):
                return emitted
            best = self._find_best()
            if best is None:
                return emitted
            emitted.append(self._emit(best, now))

    def _drop_orphans(self) -> None:
        """Drop oldest heads that can no longer meet every other stream within the slop."""
        while all(self._queues):
            oldest = min(range(self.num_streams), key=lambda i: self._stamps[i][0])
            t0 = self._stamps[oldest][0]
            window_end = t0 + self.slop_ns
            orphan = False
            for i in range(self.num_streams):
                if i == oldest:
                    continue
                # Every pending frame is >= t0 (t0 is the oldest head), so "in window" is "<= end".
                if self._stamps[i][0] > window_end:
                    orphan = True
                    break
            if not orphan:
                return
            del self._queues[oldest][0], self._stamps[oldest][0]
            self._unmatched += 1

    def _find_best(self) -> list[int] | None:
        """Positions (one per stream) of the set to emit now, or None to wait for more frames."""
        n = self.num_streams
        pos = [0] * n
        best: list[int] | None = None
        best_spread = best_end = 0
        while True:
            heads = [self._stamps[i][pos[i]] for i in range(n)]
            start, end = min(heads), max(heads)
            if best is not None and start > best_end:
                return best
            spread = end - start
            if spread <= self.slop_ns and (best is None or spread < best_spread):
                best, best_spread, best_end = list(pos), spread, end
            oldest = heads.index(start)
            pos[oldest] += 1
            if pos[oldest] == len(self._stamps[oldest]):
                # The next candidate needs a frame this stream has not delivered yet.
                return None

    def _emit(self, positions: Sequence[int], now: float) -> SyncedSet:
        items, stamps, arrivals = [], [], []
        for i, p in enumerate(positions):
            frame = self._queues[i][p]
            items.append(frame.item)
            stamps.append(frame.stamp)
            arrivals.append(frame.arrival)
            self._unmatched += p
            del self._queues[i][: p + 1], self._stamps[i][: p + 1]
            self._consumed[i] = frame.stamp
        self._sets += 1
        return SyncedSet(tuple(items), tuple(stamps), min(arrivals), now)
