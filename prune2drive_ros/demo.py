"""``prune2drive demo``: the whole product on one machine, end to end.

sample nuScenes (or ``--dataroot``) -> rosbag2 with DriveLM questions -> replay over DDS (localhost)
-> drive_vqa_node -> answers printed live -> a summary: each question with its answer, p50/p90 per
stage, the FLOPs ratio, kept tokens per camera, and the kept-token mosaic saved as a PNG.

Answers are read from the node's ``/vlm/answer_info`` records (JSON, one per question: answered or
dropped with a reason). The demo exits non-zero unless every question it asked was answered.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

from prune2drive_ros import settings
from prune2drive_ros.cameras import (
    ANSWER_INFO_TOPIC,
    CAMERA_NAMES,
    KEPT_TOKENS_TOPIC,
    QUESTION_TOPIC,
    default_topics,
)
from prune2drive_ros.discovery import localhost_discovery_env, ros_distro

STAGES = ("sync_wait", "image_decode", "preprocess", "vision", "prune", "prefill", "question", "decode",
          "total")
CHUNK = 8
"""Questions sent at once: the node's batch size, well inside its queue of live questions."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prune2drive"
GROUP_TIMEOUT_S = 120.0
RELEASE_TIMEOUT_S = 0.5
DEMO_SETTINGS = ("pruning", "retain", "prune_layer", "vision_backend", "device", "dtype", "weights",
                 "max_new_tokens")
"""The node settings the demo takes as flags (their defaults: ``prune2drive_ros.settings``)."""


TINY_BANNER = """\
+--------------------------------------------------------------------------------------------+
| No DriveMM / LLaVA-OneVision checkpoint was found, so the demo runs a tiny random-weight     |
| model with DriveMM's token geometry. Its answers are MEANINGLESS; timings and pruning are    |
| real. For real answers pass --model with:                                                   |
|   - a LLaVA-OneVision hub id or folder, e.g. llava-hf/llava-onevision-qwen2-0.5b-ov-hf       |
|     (download it once, e.g. with `hf download <id>`, or set PRUNE2DRIVE_MODEL), or           |
|   - DriveMM: download DriveMM/DriveMM, then `prune2drive convert-model SRC DST`              |
|     (or pass the original folder; it is converted in memory).                                |
+--------------------------------------------------------------------------------------------+"""


TESTBED_BANNER = """\
+--------------------------------------------------------------------------------------------+
| No DriveMM / LLaVA-OneVision checkpoint was found, so the demo runs the shipped test-bed     |
| model (models/testbed): a small VLM trained on this package's synthetic street, 8x8 tokens   |
| per view. Its answers fit the synthetic scenes only; it is not DriveMM. Pass --model for a   |
| real checkpoint (see README).                                                                |
+--------------------------------------------------------------------------------------------+"""


def _cached_checkpoints() -> list[Path]:
    """DriveMM / LLaVA-OneVision snapshots in the Hugging Face cache, DriveMM first."""
    hub = Path(os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
                              / "hub"))
    found = []
    for repo in sorted(hub.glob("models--*")):
        name = repo.name.lower()
        if "drivemm" not in name and "llava-onevision" not in name:
            continue
        for snapshot in sorted((repo / "snapshots").glob("*")):
            if (snapshot / "config.json").is_file() and any(snapshot.glob("*.safetensors")):
                found.append(snapshot)
    return sorted(found, key=lambda p: "drivemm" not in str(p).lower())


def choose_model(requested: str | None) -> tuple[str, str]:
    """(model, why): --model, $PRUNE2DRIVE_MODEL, a checkpoint in ~/.cache/prune2drive/models or the
    Hugging Face cache, then the shipped test-bed model, and only then the tiny random model."""
    if requested:
        return requested, "--model"
    if os.environ.get("PRUNE2DRIVE_MODEL"):
        return os.environ["PRUNE2DRIVE_MODEL"], "$PRUNE2DRIVE_MODEL"
    configured = sorted(p for p in (CACHE / "models").glob("*") if (p / "config.json").is_file())
    if configured:
        return str(configured[0]), f"found in {CACHE / 'models'}"
    cached = _cached_checkpoints()
    if cached:
        return str(cached[0]), "found in the Hugging Face cache"
    from prune2drive_ros.training import shipped_testbed

    testbed = shipped_testbed()
    if testbed is not None:
        print(TESTBED_BANNER)
        return str(testbed), "the shipped synthetic test-bed model"
    tiny = CACHE / "tiny-model"
    if not (tiny / "config.json").is_file():
        from prune2drive_ros.vlm.tiny import make_tiny_model

        make_tiny_model(tiny)
    print(TINY_BANNER)
    return str(tiny), "tiny random-weight model"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _Listener:
    """Collects the node's /vlm/answer_info records (answered or dropped) and the latest mosaic."""

    def __init__(self, node, verbose: bool = True):
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.records: list[dict] = []
        self.mosaic = None
        self.verbose = verbose
        self._lock = threading.Lock()
        node.create_subscription(String, ANSWER_INFO_TOPIC, self._on_info, 100)
        node.create_subscription(Image, KEPT_TOKENS_TOPIC, self._on_mosaic, 2)

    @property
    def answered(self) -> list[dict]:
        with self._lock:
            return [r for r in self.records if r.get("status") == "answered"]

    @property
    def dropped(self) -> list[dict]:
        with self._lock:
            return [r for r in self.records if r.get("status") == "dropped"]

    def _on_info(self, msg) -> None:
        record = json.loads(msg.data)
        with self._lock:
            self.records.append(record)
        if not self.verbose:
            return
        if record.get("status") == "answered":
            print(f"[{record['frame_stamp']:.2f}] Q: {record['question']}\n"
                  f"    A: {record['answer']}   ({record['timings_ms']['total']:.0f} ms, "
                  f"FLOPs {record['flops_ratio']:.1%})", flush=True)
        else:
            print(f"    dropped #{record.get('id')} {record.get('question', '')[:60]!r}: {record.get('reason')} "
                  f"({record.get('detail')})", flush=True)

    def _on_mosaic(self, msg) -> None:
        import numpy as np

        self.mosaic = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


def ground_truth(drivelm: Path | None) -> dict[str, set[str]]:
    """question -> every answer the DriveLM file gives it (one, unless keyframes or scenes disagree)."""
    if drivelm is None or not Path(drivelm).is_file():
        return {}
    truth: dict[str, set[str]] = {}
    for scene in json.loads(Path(drivelm).read_text()).values():
        for frame in scene.get("key_frames", {}).values():
            for group in frame.get("QA", {}).values():
                for qa in group:
                    truth.setdefault(qa["Q"], set()).add(qa["A"])
    return truth


def summary(records: list[dict], truth: dict[str, set[str]] | None = None) -> str:
    """The summary of the answered records (JSON records of /vlm/answer_info), each answer beside its
    ground truth from ``truth`` (``ground_truth``), and the accuracy on lettered multiple choice."""
    from prune2drive_ros.eval.metrics import parse_option_letter, question_options

    records = [r for r in records if r.get("status") == "answered"]
    if not records:
        return "no answers were produced"
    truth = truth or {}
    lines = ["", "answers (ground truth from the DriveLM file):"]
    right = scored = 0
    for r in records:
        answers = truth.get(r["question"], set())
        lines.append(f"  Q: {r['question'][:100]}")
        if len(answers) == 1 and question_options(r["question"]):  # lettered multiple choice: scored
            (expected,) = answers
            hit = parse_option_letter(r["answer"], r["question"]) == expected
            right, scored = right + hit, scored + 1
            lines.append(f"  A: {r['answer'][:70]:<70}  truth: {expected}  {'right' if hit else 'WRONG'}")
        elif answers:  # free-form or point answers, or a question whose answer differs between keyframes
            shown = " | ".join(sorted(answers))[:100]
            lines.append(f"  A: {r['answer'][:100]}\n     truth{' (differs by keyframe)' if len(answers) > 1 else ''}: "
                         f"{shown}")
        else:
            lines.append(f"  A: {r['answer'][:100]}   (no ground truth)")
    if scored:
        lines += ["", f"accuracy on lettered multiple choice: {right}/{scored} = {right / scored:.0%} "
                  "(this sample's frames, this run's pruning)"]
    lines += ["", f"{'stage':<18}{'p50 ms':>10}{'p90 ms':>10}"]
    for key in STAGES:
        values = [float(r["timings_ms"][key]) for r in records if key in r["timings_ms"]]
        if values:
            lines.append(f"{key:<18}{statistics.median(values):>10.1f}{_percentile(values, 0.9):>10.1f}")
    flops = [float(r["flops_ratio"]) for r in records]
    lines += ["", f"prefill FLOPs: {statistics.mean(flops):.1%} of dense (mean over {len(records)} answers)"]
    kept = [r["kept_per_view"] for r in records]
    per_camera = [statistics.mean(k[i] for k in kept) for i in range(len(CAMERA_NAMES))]
    lines.append("kept tokens per camera: " + ", ".join(
        f"{name}={n:.0f}" for name, n in zip(CAMERA_NAMES, per_camera)))
    lines.append(f"vision backend: {records[-1].get('vision_backend')}  device: {records[-1].get('device')}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder or hub id (default: see README)")
    parser.add_argument("--dataroot", type=Path, default=None, help="nuScenes root (default: synthetic sample)")
    parser.add_argument("--version", default="v1.0-mini", help="nuScenes version folder under --dataroot")
    parser.add_argument("--drivelm", type=Path, default=None, help="DriveLM file (default: the sample's)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="give up after this many seconds of replay (default 600)")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="bag, sample data and mosaic go here")
    settings.add_arguments(parser, DEMO_SETTINGS)
    parser.add_argument("--rate", type=float, default=1.0, help="replay speed")
    parser.add_argument("--keyframes", type=int, default=3, help="keyframes in the synthetic sample")
    parser.add_argument("--questions", type=int, default=16, help="DriveLM questions to ask (0 = all in the bag)")


def _prepare_bag(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The bag to replay, and the DriveLM file its questions (and their ground truth) come from."""
    from prune2drive_ros.data.nuscenes_to_bag import convert_nuscenes
    from prune2drive_ros.data.sample_nuscenes import make_sample_nuscenes

    args.out.mkdir(parents=True, exist_ok=True)
    dataroot, drivelm = args.dataroot, args.drivelm
    if dataroot is None:
        dataroot = args.out / "sample-nuscenes"
        if not (dataroot / "v1.0-mini").is_dir():
            print(f"writing a synthetic nuScenes sample to {dataroot}")
            make_sample_nuscenes(dataroot, scenes=1, keyframes=args.keyframes, progress=False)
        drivelm = drivelm or dataroot / "drivelm.json"
    bag = args.out / "bag"
    print(f"converting {dataroot} -> {bag}")
    return convert_nuscenes(dataroot, args.version, bag, drivelm=drivelm, force=True, progress=False), drivelm


def run(args: argparse.Namespace) -> int:
    # Demo traffic stays on this machine and off other people's domain unless the user says otherwise.
    for name, value in localhost_discovery_env(ros_distro()).items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    model, why = choose_model(args.model)
    print(f"model: {model} ({why})")
    bag, drivelm = _prepare_bag(args)

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from prune2drive_ros.data.player import BagPlayer
    from prune2drive_ros.ros.node import DriveVqaNode

    # Ctrl-C stays a KeyboardInterrupt (rclpy's handler would only shut the context down).
    context = rclpy.Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    overrides = [Parameter("model", value=model)]
    overrides += [Parameter(settings.BY_NAME[name].param_name, value=value)
                  for name, value in settings.from_args(args, DEMO_SETTINGS).items()]
    overrides += [
        Parameter("publish_kept_tokens", value=True),
        Parameter("qos_reliability", value="reliable"),  # a demo should not lose frames to best effort
    ]
    node = DriveVqaNode(parameter_overrides=overrides, context=context)
    listener_node = rclpy.create_node("prune2drive_demo", context=context)
    listener = _Listener(listener_node)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    executor.add_node(listener_node)
    # Our own loop, not executor.spin(): shutdown must wait until no spin_once is in flight, or rclpy may
    # hand a callback to a thread pool that shutdown() has just closed (a traceback at Ctrl-C).
    spinning = threading.Event()
    spinning.set()
    spinner = threading.Thread(target=_spin_while, args=(executor, spinning), name="demo_spin", daemon=True)
    spinner.start()
    stop = threading.Event()
    try:
        print("loading the model (configure) ...", flush=True)
        node.autostart()
        if node.runner_info() is None:
            print("the node failed to configure; see the log above")
            return 1
        groups = _bag_questions(bag, args.questions)
        player = BagPlayer(bag, rate=args.rate, loop=True, topics=default_topics("compressed"),
                           wait_for_subscribers=5.0)
        replay = threading.Thread(target=player.run, kwargs={"stop_event": stop}, daemon=True)
        print(f"replaying the cameras of {bag} at {args.rate}x (looping: each loop shows as a time jump); "
              f"asking {sum(map(len, groups))} DriveLM questions from the bag", flush=True)
        replay.start()
        asked = _ask(node, listener, listener_node, groups, deadline=time.monotonic() + (args.seconds or 600.0))
        stop.set()
        replay.join(timeout=10.0)
    finally:
        stop.set()
        # Done or interrupted, the demo ends now: an inference still in its prefill is left behind.
        node.release(RELEASE_TIMEOUT_S, reason="shutdown")
        spinning.clear()
        spinner.join(timeout=5.0)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        listener_node.destroy_node()
        context.try_shutdown()
        context.destroy()
    print(summary(listener.records, ground_truth(drivelm)))
    if listener.mosaic is not None:
        import cv2

        path = args.out / "kept_tokens.png"
        cv2.imwrite(str(path), cv2.cvtColor(listener.mosaic, cv2.COLOR_RGB2BGR))
        print(f"kept-token mosaic: {path}")
    answered = len(listener.answered)
    if asked == 0 or answered < asked:
        reasons = Counter(r.get("reason") for r in listener.dropped)
        print(f"FAILED: {answered} of {asked} question(s) answered; "
              f"{asked - answered} unanswered (dropped: {dict(reasons) or 'none reported'})")
        return 1
    print(f"all {asked} questions answered")
    return 0


def _spin_while(executor, spinning: threading.Event) -> None:
    while spinning.is_set() and executor.context.ok():
        executor.spin_once(timeout_sec=0.1)


def _bag_questions(bag: Path, limit: int) -> list[list[str]]:
    """The bag's DriveLM questions, grouped per keyframe (they are recorded milliseconds apart)."""
    from rosbags.highlevel import AnyReader

    from prune2drive_ros.data.nuscenes_to_bag import ros2_typestore

    groups: list[list[str]] = []
    last = None
    with AnyReader([bag], default_typestore=ros2_typestore()) as reader:
        connections = [c for c in reader.connections if c.topic == QUESTION_TOPIC]
        for connection, stamp, raw in reader.messages(connections=connections):
            if last is None or stamp - last > 250_000_000:
                groups.append([])
            groups[-1].append(reader.deserialize(raw, connection.msgtype).data)
            last = stamp
    if limit > 0:
        kept, budget = [], limit
        for group in groups:
            if budget <= 0:
                break
            kept.append(group[:budget])
            budget -= len(kept[-1])
        groups = kept
    return groups


def _ask(node, listener: _Listener, client, groups: list[list[str]], deadline: float) -> int:
    """Ask each keyframe's questions (at most CHUNK at once: they share one visual prefix) and wait until
    the node has accounted for each, answered or dropped. Returns how many were asked."""
    from std_msgs.msg import String

    publisher = client.create_publisher(String, QUESTION_TOPIC, 64)
    while publisher.get_subscription_count() == 0 or node.health_counters().get("sets_total", 0) == 0:
        if time.monotonic() > deadline:
            print("no synchronized camera set arrived; is the replay running?")
            return 0
        time.sleep(0.1)
    asked = 0
    for group in groups:
        for start in range(0, len(group), CHUNK):
            chunk = group[start:start + CHUNK]
            expected = len(listener.records) + len(chunk)
            for question in chunk:
                publisher.publish(String(data=question))
            asked += len(chunk)
            chunk_deadline = min(deadline, time.monotonic() + GROUP_TIMEOUT_S)
            while len(listener.records) < expected and time.monotonic() < chunk_deadline:
                time.sleep(0.05)
            if len(listener.records) < expected:
                counters = node.health_counters()
                print(f"{expected - len(listener.records)} question(s) not accounted for in time; node counters: "
                      f"queue={counters.get('question_queue_depth')} sets={counters.get('sets_total')}")
            if time.monotonic() >= deadline:
                print("time is up (--seconds)")
                return asked
    return asked
