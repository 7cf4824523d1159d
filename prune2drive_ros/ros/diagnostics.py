"""Node health on /diagnostics, as plain key/value lists (no ROS; the node wraps them).

Once a second: input rate and silence per camera (WARN after ``camera_timeout_s``, ERROR after
``error_factor`` times that), synchronized sets per second, everything dropped and why, queue depths
and GPU memory. Cameras that stream while no set forms for ``stall_after_s`` are WARN too, with the
likely reason read from the drop counters. (The per-answer status comes from ``records``.)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


def gpu_memory_mb() -> float | None:
    """CUDA memory held by torch tensors in this process, or None without CUDA (torch not imported here)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.memory_allocated() / 2**20


# Counter -> why growing it stops the sets, most specific first.
_STALL_CAUSES = {
    "dropped.late": "frames arrive older than their camera's last set (stamps went back?)",
    "frames_unmatched": "frames of the six cameras do not meet within sync_slop_s (check their stamps)",
    "frames_dropped": "frames are refused at the door (see the dropped.* counters)",
}


def stall_reason(growth: Mapping[str, float]) -> str:
    """The likely reason no set forms, from how much each counter grew since the last report."""
    key = max(_STALL_CAUSES, key=lambda k: growth.get(k, 0.0))
    if growth.get(key, 0.0) <= 0:
        return "frames arrive but none is kept (see the dropped.* counters)"
    return f"{_STALL_CAUSES[key]}; {key} +{growth[key]:.0f}"


class HealthMonitor:
    """Input rates and camera silence; thread-safe, O(cameras) memory."""

    def __init__(self, names: Sequence[str], camera_timeout_s: float, *, error_factor: float = 3.0,
                 stall_after_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.names = list(names)
        self.camera_timeout_s = camera_timeout_s
        self.error_factor = error_factor
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        """Begin watching: silence counts from now, so a camera that never publishes goes WARN too."""
        now = self._clock()
        with self._lock:
            self._last_seen = [now] * len(self.names)
            self._frames = [0] * len(self.names)
            self._sets = 0
            self._prev_frames = [0] * len(self.names)
            self._prev_sets = 0
            self._prev_time = now
            self._last_set = now
            self._prev_counters: dict[str, float] = {}

    def frame(self, index: int) -> None:
        now = self._clock()
        with self._lock:
            self._frames[index] += 1
            self._last_seen[index] = now

    def synced(self, count: int = 1) -> None:
        now = self._clock()
        with self._lock:
            self._sets += count
            self._last_set = now

    def camera_levels(self) -> list[tuple[int, float]]:
        """(level, seconds since the last frame) per camera."""
        now = self._clock()
        with self._lock:
            silences = [now - t for t in self._last_seen]
        out = []
        for silence in silences:
            if silence > self.camera_timeout_s * self.error_factor:
                out.append((ERROR, silence))
            elif silence > self.camera_timeout_s:
                out.append((WARN, silence))
            else:
                out.append((OK, silence))
        return out

    def report(self, counters: Mapping[str, Any]) -> tuple[int, str, list[tuple[str, str]]]:
        """(level, message, values) of the health status; rates cover the time since the last report."""
        levels = self.camera_levels()
        now = self._clock()
        with self._lock:
            dt = max(now - self._prev_time, 1e-6)
            rates = [(f - p) / dt for f, p in zip(self._frames, self._prev_frames, strict=True)]
            sets_rate = (self._sets - self._prev_sets) / dt
            self._prev_frames, self._prev_sets, self._prev_time = list(self._frames), self._sets, now
            no_set_s = now - self._last_set
            growth = {key: float(counters.get(key, 0)) - self._prev_counters.get(key, 0.0) for key in _STALL_CAUSES}
            self._prev_counters = {key: float(counters.get(key, 0)) for key in _STALL_CAUSES}
        level = max((lvl for lvl, _ in levels), default=OK)
        lost = [f"{name} silent {silence:.1f} s" for name, (lvl, silence) in zip(self.names, levels, strict=True)
                if lvl != OK]
        message = "; ".join(lost) if lost else "all cameras streaming"
        if level == OK and no_set_s > self.stall_after_s:
            level = WARN
            message = f"cameras streaming but no synchronized set for {no_set_s:.1f} s: {stall_reason(growth)}"
        values: list[tuple[str, str]] = []
        for name, rate, (lvl, silence) in zip(self.names, rates, levels, strict=True):
            values.append((f"rate_hz.{name}", f"{rate:.2f}"))
            values.append((f"camera.{name}", LEVEL_NAMES[lvl] if lvl == OK else f"{LEVEL_NAMES[lvl]} {silence:.1f} s"))
        values.append(("sets_per_s", f"{sets_rate:.2f}"))
        gpu = gpu_memory_mb()
        values.append(("gpu_memory_mb", "n/a (no CUDA)" if gpu is None else f"{gpu:.1f}"))
        values += [(k, str(v)) for k, v in counters.items()]
        return level, message, values
