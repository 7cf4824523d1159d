"""The ROS-free synchronizer: nuScenes firing offsets, jitter, reordering, drops, bag loops, bounds."""

from __future__ import annotations

import random
import subprocess
import sys
import threading

import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from prune2drive_ros.cameras import CAMERAS, NUM_CAMERAS
from prune2drive_ros.ros.synchronizer import LATE, NS_PER_S, TIME_JUMP, Synchronizer, to_ns

PERIOD_NS = NS_PER_S // 12
OFFSETS_NS = [int(c.fire_offset_ms * 1e6) for c in CAMERAS]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rig_frames(sweeps: int, *, start_ns: int = 10 * NS_PER_S, jitter_ms: float = 0.0, seed: int = 0,
               skip: set[tuple[int, int]] = frozenset()):
    """(sweep, camera, stamp_ns) for 12 Hz sweeps with the nuScenes firing offsets, in stamp order."""
    rng = random.Random(seed)
    frames = []
    for k in range(sweeps):
        for cam, offset in enumerate(OFFSETS_NS):
            if (k, cam) in skip:
                continue
            jitter = round(rng.uniform(-jitter_ms, jitter_ms) * 1e6)
            frames.append((k, cam, start_ns + k * PERIOD_NS + offset + jitter))
    frames.sort(key=lambda f: f[2])
    return frames


def feed(sync: Synchronizer, frames, clock: FakeClock | None = None):
    sets = []
    for k, cam, stamp in frames:
        if clock is not None:
            clock.now = stamp / NS_PER_S
        _, out = sync.add(cam, stamp, (k, cam))
        sets.extend(out)
    return sets


def sweeps_of(sets) -> list[set[int]]:
    return [{k for k, _ in s.items} for s in sets]


def test_stamp_units() -> None:
    assert to_ns(1.5) == 1_500_000_000
    assert to_ns(1_500_000_000) == 1_500_000_000
    with pytest.raises(TypeError):
        to_ns(True)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="slop"):
        Synchronizer(slop=0)
    with pytest.raises(ValueError, match="queue_size"):
        Synchronizer(queue_size=1)
    with pytest.raises(IndexError):
        Synchronizer().add(6, 1.0)


def test_nuscenes_sweeps_group_exactly() -> None:
    clock = FakeClock()
    sync = Synchronizer(slop=0.08, clock=clock)
    sets = feed(sync, rig_frames(40), clock)
    # The last sweep is not certified yet: no frame after it has arrived.
    assert sweeps_of(sets) == [{k} for k in range(39)]
    for s in sets:
        assert [cam for _, cam in s.items] == list(range(NUM_CAMERAS))
        assert s.spread_s == pytest.approx(0.042, abs=1e-9)
        # Certified when the next sweep's last camera fires: about one period after completion.
        assert 0.04 < s.wait_s < 0.14
    stats = sync.stats()
    assert stats.sets == 39 and stats.frames_unmatched == 0 and stats.late == 0
    assert stats.frames_in == [40] * NUM_CAMERAS


def test_tighter_slop_than_the_rig_never_fires() -> None:
    sync = Synchronizer(slop=0.03)
    assert feed(sync, rig_frames(30)) == []
    assert max(sync.queue_sizes()) <= sync.queue_size
    assert sync.stats().frames_unmatched > 0


def test_jitter_and_arrival_reordering() -> None:
    frames = rig_frames(60, jitter_ms=4.0, seed=3)
    rng = random.Random(7)
    # Shuffle arrival order within a 60 ms horizon across cameras, keep each camera in order
    # (transport reorders streams against each other, not a camera against itself).
    arrival = sorted(frames, key=lambda f: f[2] + rng.uniform(0, 60e6))
    by_cam: dict[int, list] = {}
    for f in arrival:
        by_cam.setdefault(f[1], []).append(f)
    for cam_frames in by_cam.values():
        cam_frames.sort(key=lambda f: f[2])
    order = []
    cursor = dict.fromkeys(by_cam, 0)
    for _, cam, _ in arrival:
        order.append(by_cam[cam][cursor[cam]])
        cursor[cam] += 1
    sets = feed(Synchronizer(slop=0.08), order)
    assert sweeps_of(sets) == [{k} for k in range(len(sets))]
    assert len(sets) >= 58


def test_a_camera_overtaking_itself_costs_at_most_that_sweep() -> None:
    # DDS keeps one writer's samples in order, so this is rare: CAM_FRONT's sweep-2 frame arrives
    # before its sweep-1 frame. The rule assumes in-order streams, so sweep 1 is lost, never mixed.
    frames = rig_frames(5)
    front = [i for i, f in enumerate(frames) if f[1] == 0]
    a, b = front[1], front[2]
    frames[a], frames[b] = frames[b], frames[a]
    sync = Synchronizer()
    sets = feed(sync, frames)
    assert sweeps_of(sets) == [{0}, {2}, {3}]
    assert sync.stats().frames_unmatched == 6


def test_a_late_camera_within_the_sweep_is_waited_for() -> None:
    frames = rig_frames(5)
    # CAM_BACK_LEFT's sweep-1 frame arrives ~80 ms late, after the other cameras' sweep-2 frames.
    late = next(i for i, f in enumerate(frames) if f[:2] == (1, 4))
    frame = frames.pop(late)
    frames.insert(next(i for i, f in enumerate(frames) if f[:2] == (2, 4)), frame)
    assert sweeps_of(feed(Synchronizer(), frames)) == [{0}, {1}, {2}, {3}]


def test_a_dropped_frame_loses_only_its_sweep() -> None:
    # First-fit would pair sweep 5's rear cameras with sweep 6's front ones (spread 76 ms < slop) and
    # stay out of phase; the smallest-spread rule drops sweep 5 and resumes at sweep 6.
    sync = Synchronizer(slop=0.08)
    sets = feed(sync, rig_frames(20, skip={(5, 0)}))
    assert sweeps_of(sets) == [{k} for k in range(19) if k != 5]
    assert sync.stats().frames_unmatched == 5


def test_start_in_the_middle_of_a_sweep() -> None:
    frames = [f for f in rig_frames(10) if not (f[0] == 0 and f[1] in (1, 0, 2))]
    sets = feed(Synchronizer(), frames)
    assert sweeps_of(sets) == [{k} for k in range(1, 9)]


def test_late_and_duplicate_frames_are_counted() -> None:
    sync = Synchronizer()
    feed(sync, rig_frames(4))
    outcome, sets = sync.add(0, rig_frames(4)[6][2], "old")  # sweep 1 (consumed), not a rewind
    assert (outcome, sets) == (LATE, [])
    stamp = rig_frames(4)[-1][2]
    assert sync.add(4, stamp, "dup")[0] == LATE
    assert sync.stats().late == 2


def test_bag_loop_resets_and_keeps_going() -> None:
    clock = FakeClock()
    sync = Synchronizer(slop=0.08, jump_threshold=1.0, clock=clock)
    first = rig_frames(30, start_ns=100 * NS_PER_S)
    sets = feed(sync, first, clock)
    assert len(sets) == 29
    # The bag starts over: stamps jump back by 2.5 s; two old frames are still in flight.
    looped = rig_frames(30, start_ns=100 * NS_PER_S - 2 * NS_PER_S - NS_PER_S // 2, seed=1)
    outcome, _ = sync.add(looped[0][1], looped[0][2], looped[0][:2])
    assert outcome == TIME_JUMP
    assert sync.add(3, first[-1][2] + PERIOD_NS, "straggler")[0] == LATE
    more = feed(sync, looped[1:])
    assert len(more) == 29
    assert sweeps_of(more) == [{k} for k in range(29)]
    stats = sync.stats()
    assert stats.time_jumps == 1
    assert stats.late == 1


def play_loops(sync: Synchronizer, clock: FakeClock, bag_sweeps: int, loops: int) -> list[list[set[int]]]:
    """Sweeps of the sets each pass of a looping bag yields; the clock follows the bag time."""
    bag = rig_frames(bag_sweeps, start_ns=50 * NS_PER_S)
    per_pass = []
    for loop in range(loops):
        sets = []
        for k, cam, stamp in bag:
            clock.now = loop * bag_sweeps / 12 + (stamp - bag[0][2]) / NS_PER_S
            sets += sync.add(cam, stamp, (k, cam))[1]
        per_pass.append(sweeps_of(sets))
    return per_pass


@pytest.mark.parametrize("bag_sweeps", [12, 5])
def test_a_short_bag_looping_keeps_forming_sets(bag_sweeps: int) -> None:
    """A 1 s bag (12 sweeps) and a 0.4 s one played in a loop: the old and new timelines overlap in
    stamps, the rewind is seen at its first frame and every pass yields its sets."""
    clock = FakeClock()
    sync = Synchronizer(slop=0.08, clock=clock)
    per_pass = play_loops(sync, clock, bag_sweeps, 6)
    # One reset per pass; each pass loses only the sweep that was waiting for its certificate.
    assert sync.stats().time_jumps == 5
    assert per_pass == [[{k} for k in range(bag_sweeps - 1)]] * 6


def test_a_rewind_below_the_jump_threshold_is_found_by_its_late_frames() -> None:
    # 3 sweeps: a step back of 0.17 s, inside jump_threshold; only late frames arrive until late_reset_s.
    clock = FakeClock()
    sync = Synchronizer(slop=0.08, clock=clock)
    per_pass = play_loops(sync, clock, 3, 24)
    assert sync.stats().time_jumps >= 1
    recovered = [i for i, sets in enumerate(per_pass) if i > 0 and sets]
    assert recovered and recovered[0] <= 1 + round(sync.late_reset_s * 12 / 3) + 1, per_pass
    assert all(len(s) == 1 for sets in per_pass for s in sets)


def test_stragglers_of_the_old_timeline_do_not_reset_twice() -> None:
    clock = FakeClock()
    sync = Synchronizer(slop=0.08, jump_threshold=0.5, clock=clock)
    first = rig_frames(12, start_ns=10 * NS_PER_S)
    feed(sync, first)
    # CAM_FRONT loops first; CAM_BACK's next frame of the old timeline is still in flight.
    assert sync.add(0, first[0][2], (0, 0))[0] == TIME_JUMP
    back_last = max(f[2] for f in first if f[1] == 3)
    assert sync.add(3, back_last + PERIOD_NS, (99, 3))[0] == LATE
    more = feed(sync, [f for f in rig_frames(12, start_ns=10 * NS_PER_S) if f[:2] != (0, 0)])
    assert sweeps_of(more) == [{k} for k in range(11)]
    assert sync.stats().time_jumps == 1


def test_queues_stay_bounded_when_a_camera_stops() -> None:
    sync = Synchronizer(queue_size=5)
    frames = [f for f in rig_frames(50) if not (f[1] == 3 and f[0] >= 10)]
    sets = feed(sync, frames)
    # Sweep 9 is complete but never certified: CAM_BACK delivers nothing after it.
    assert len(sets) == 9
    assert max(sync.queue_sizes()) == 5
    stats = sync.stats()
    # Every frame ends up emitted, pending or counted as unmatched.
    assert sum(stats.frames_in) == 6 * stats.sets + stats.frames_unmatched + sum(stats.queue_sizes)


def test_thread_safety() -> None:
    sync = Synchronizer(queue_size=20)
    frames = rig_frames(200)
    per_cam = [[f for f in frames if f[1] == cam] for cam in range(NUM_CAMERAS)]
    emitted = []
    lock = threading.Lock()

    def run(cam: int) -> None:
        for k, c, stamp in per_cam[cam]:
            _, out = sync.add(c, stamp, (k, c))
            with lock:
                emitted.extend(out)

    threads = [threading.Thread(target=run, args=(cam,)) for cam in range(NUM_CAMERAS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    stats = sync.stats()
    assert sum(stats.frames_in) == len(frames)
    assert sum(stats.frames_in) == 6 * stats.sets + stats.frames_unmatched + stats.late + sum(stats.queue_sizes)
    for s in emitted:
        assert len({k for k, _ in s.items}) == 1
        assert s.spread_s <= 0.08


def test_does_not_import_rclpy() -> None:
    code = (
        "import sys, prune2drive_ros.ros.synchronizer, prune2drive_ros.ros.image_codec,"
        " prune2drive_ros.ros.worker, prune2drive_ros.ros.diagnostics;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs', 'std_msgs')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


# -- properties ------------------------------------------------------------------------------------

frame_lists = st.lists(
    st.tuples(st.integers(0, NUM_CAMERAS - 1), st.integers(0, 3 * NS_PER_S)), min_size=0, max_size=300
)


@settings(max_examples=150, deadline=None)
@given(frames=frame_lists, slop_ms=st.integers(1, 200), queue_size=st.integers(2, 12),
       jump=st.sampled_from([0.5, 10.0]))
def test_property_bounded_and_within_slop(frames, slop_ms, queue_size, jump) -> None:
    # jump=0.5 s makes arbitrary stamps rewind often: resets must keep every invariant.
    sync = Synchronizer(slop=slop_ms / 1000, queue_size=queue_size, jump_threshold=jump)
    last_set_stamps, jumps = [-1] * NUM_CAMERAS, 0
    for cam, stamp in frames:
        _, sets = sync.add(cam, stamp, (cam, stamp))
        assert max(sync.queue_sizes()) <= queue_size
        for s in sets:
            assert s.spread_s <= slop_ms / 1000 + 1e-9
            assert [c for c, _ in s.items] == list(range(NUM_CAMERAS))
            assert [st for _, st in s.items] == list(s.stamps_ns)
            # Between resets, sets come out in time order per camera and never reuse a frame.
            if sync.stats().time_jumps == jumps:
                assert all(a > b for a, b in zip(s.stamps_ns, last_set_stamps, strict=True))
            last_set_stamps, jumps = list(s.stamps_ns), sync.stats().time_jumps
    stats = sync.stats()
    assert sum(stats.frames_in) == 6 * stats.sets + stats.frames_unmatched + stats.late + sum(stats.queue_sizes)


@settings(max_examples=60, deadline=None)
@given(
    sweeps=st.integers(3, 25),
    jitter_ms=st.floats(0, 5),
    horizon_ms=st.floats(0, 80),
    seed=st.integers(0, 10_000),
    drops=st.sets(st.tuples(st.integers(0, 24), st.integers(0, 5)), max_size=6),
)
def test_property_reordering_never_mixes_sweeps(sweeps, jitter_ms, horizon_ms, seed, drops) -> None:
    frames = rig_frames(sweeps, jitter_ms=jitter_ms, seed=seed, skip=drops)
    rng = random.Random(seed)
    # Cross-camera arrival reordering up to `horizon_ms`, each camera kept in order.
    keyed = sorted(frames, key=lambda f: f[2] + rng.uniform(0, horizon_ms * 1e6))
    per_cam: dict[int, list] = {}
    for f in sorted(frames, key=lambda f: f[2]):
        per_cam.setdefault(f[1], []).append(f)
    order = [per_cam[cam].pop(0) for _, cam, _ in keyed]
    sets = feed(Synchronizer(slop=0.08), order)
    # Every complete sweep comes out whole, in order, once every camera has delivered a later frame.
    newest = [max((f[2] for f in frames if f[1] == c), default=-1) for c in range(NUM_CAMERAS)]
    complete = {k for k in range(sweeps) if sum(f[0] == k for f in frames) == NUM_CAMERAS}
    expected = [k for k in sorted(complete)
                if all(n > max(f[2] for f in frames if f[0] == k) for n in newest)]
    got = sweeps_of(sets)
    assert [next(iter(g)) for g in got if len(g) == 1 and g <= complete] == expected
    # Other sets exist only where drops left no whole sweep: they mix incomplete sweeps within the slop.
    for s, g in zip(sets, got, strict=True):
        assert s.spread_s <= 0.08 + 1e-9
        if len(g) > 1:
            assert not g & complete, (g, complete)
    if not drops:
        assert all(len(g) == 1 for g in got)
