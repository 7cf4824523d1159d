"""``prune2drive convert-nuscenes``: nuScenes (via nuscenes-devkit) -> rosbag2 (via rosbags), no ROS needed.

Per camera of the rig it writes ``/CAM_X/image_rect_compressed`` (sensor_msgs/CompressedImage, the JPEG
file's bytes untouched, format "jpeg") and ``/CAM_X/camera_info`` (sensor_msgs/CameraInfo, K from
calibrated_sensor), both stamped with the camera's own timestamp and carrying the camera's frame id. With
``--drivelm`` the questions of each keyframe go to ``/vlm/question`` (std_msgs/String), just after that
keyframe's images, so a replay asks the benchmark's questions about the frames it has just shown.

Time: every ``header.stamp`` is the original nuScenes timestamp. The bag's own (receive) timestamps,
which players pace by, equal them within a scene, but scenes are laid end to end ``SCENE_GAP_S`` apart:
v1.0-mini's scenes come from logs days apart, and ``ros2 bag play`` would otherwise wait out those days.
``keep_gaps=True`` keeps the original timeline instead.

Does not import rclpy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from prune2drive_ros.cameras import CAMERAS, QUESTION_TOPIC, Camera

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# rosbag2 metadata versions rosbags writes. 8 stores each topic's offered_qos_profiles as a YAML
# string, which every distro from Humble on reads; 9 (what Jazzy and Kilted write) stores a YAML
# list, which Humble's rosbag2 tries to read as a string, so `ros2 bag play` fails there.
BAG_VERSIONS = (8, 9)
DEFAULT_BAG_VERSION = 8
SCENE_GAP_S = 1.0
QUESTION_DELAY_NS = 5_000_000  # after the keyframe's last image, so the node already holds the frame set
QUESTION_SPACING_NS = 1_000_000  # keeps one keyframe's questions in a stable order

# Offered QoS recorded for every topic, which `ros2 bag play` adopts when it publishes. Keep-last 10 and
# volatile, as a sensor stream; RELIABLE rather than the usual best-effort of camera drivers because a
# reliable publisher matches both reliable and best-effort subscriptions (rviz, `ros2 topic echo`, our
# node), while a best-effort one would leave reliable subscribers with nothing. Unset times = defaults.
_ZERO = QosTime(0, 0)
OFFERED_QOS = Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE, _ZERO, _ZERO,
                  QosLiveliness.AUTOMATIC, _ZERO, False)


def ros2_typestore():
    """The newest ROS 2 store this rosbags knows, Kilted where available (the distro of our wheels)."""
    for name in ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_HUMBLE"):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    return get_typestore(Stores.LATEST)


@dataclass(frozen=True)
class _Event:
    """One message to write. ``order`` breaks ties: camera_info before its image, questions last."""

    bag_ns: int
    order: int
    seq: int
    topic: str
    stamp_ns: int = 0
    camera: Camera | None = None
    path: Path | None = None  # image file
    calib_token: str = ""
    width: int = 0
    height: int = 0
    text: str = ""


class ConversionError(RuntimeError):
    """The input cannot be converted (unknown scene, bad DriveLM file, ...)."""


def convert_nuscenes(dataroot: str | Path, version: str, out: str | Path, *,
                     scenes: Sequence[str] | None = None, keyframes_only: bool = False, storage: str = "mcap",
                     drivelm: str | Path | None = None, force: bool = False, keep_gaps: bool = False,
                     progress: bool = True, bag_version: int = DEFAULT_BAG_VERSION) -> Path:
    """Convert nuScenes scenes (all, or those named) to a rosbag2 at ``out``; returns ``out``.

    Raises FileExistsError if ``out`` exists and not ``force``; FileNotFoundError naming the first missing
    image file (checked before anything is written); ConversionError for bad arguments or inputs.
    """
    if storage not in STORAGES:
        raise ConversionError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if bag_version not in BAG_VERSIONS:
        raise ConversionError(f"bag version must be one of {', '.join(map(str, BAG_VERSIONS))}, got {bag_version!r}")
    dataroot, out = Path(dataroot), Path(out)
    if out.exists() and not force:  # fail before the slow table load
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    questions = load_drivelm_questions(drivelm) if drivelm is not None else {}
    nusc = _load_nuscenes(dataroot, version)
    selected = _select_scenes(nusc, scenes)
    events = _plan(nusc, selected, keyframes_only, questions, keep_gaps)
    events.sort(key=lambda e: (e.bag_ns, e.order, e.seq))
    for event in events:
        if event.path is not None and not event.path.is_file():
            raise FileNotFoundError(f"image file missing: {event.path} (camera {event.camera.name})")
    if drivelm is not None and not any(e.topic == QUESTION_TOPIC for e in events):
        # Legitimate (DriveLM covers only some scenes) but more often the wrong file for this data set.
        warnings.warn(f"{drivelm} has no questions for the converted keyframes; {QUESTION_TOPIC} stays empty",
                      stacklevel=2)

    _make_room(out, force)
    _write_bag(nusc, events, out, storage, selected, version, progress, bag_version)
    return out


def load_drivelm_questions(path: str | Path) -> dict[str, list[str]]:
    """``sample_token -> [question, ...]`` from a DriveLM file in the nested release format, in the order
    perception, prediction, planning, behavior (the order DriveLM's reasoning graph runs)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"DriveLM file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from None
    questions: dict[str, list[str]] = {}
    try:
        for scene in data.values():
            for sample_token, frame in scene["key_frames"].items():
                qa = frame["QA"]
                groups = [g for g in ("perception", "prediction", "planning", "behavior") if g in qa]
                groups += [g for g in qa if g not in groups]
                questions[sample_token] = [item["Q"] for g in groups for item in qa[g]]
    except (AttributeError, KeyError, TypeError) as exc:
        raise ConversionError(f"{path} is not a DriveLM file in the nested release format "
                              f"({{scene_token: {{'key_frames': {{sample_token: {{'QA': ...}}}}}}}}): {exc!r}") from None
    return questions


def _load_nuscenes(dataroot: Path, version: str):
    if not (dataroot / version).is_dir():
        raise FileNotFoundError(f"no nuScenes tables at {dataroot / version} (wrong --dataroot or --version?)")
    from nuscenes.nuscenes import NuScenes  # heavy (matplotlib, sklearn); only when converting

    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


def _select_scenes(nusc, names: Sequence[str] | None) -> list[dict]:
    by_name = {scene["name"]: scene for scene in nusc.scene}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConversionError(f"unknown scene(s) {', '.join(unknown)}; this set has {', '.join(sorted(by_name))}")
        chosen = [by_name[n] for n in dict.fromkeys(names)]
    else:
        chosen = list(nusc.scene)
    # Chronological, so the concatenated timeline follows the data.
    return sorted(chosen, key=lambda s: nusc.get("sample", s["first_sample_token"])["timestamp"])


def _camera_chain(nusc, scene: dict, channel: str) -> list[dict]:
    """All sample_data of one camera in a scene, in time order (sweeps included)."""
    first = nusc.get("sample", scene["first_sample_token"])
    record = nusc.get("sample_data", first["data"][channel])

    def in_scene(sd: dict) -> bool:
        return nusc.get("sample", sd["sample_token"])["scene_token"] == scene["token"]

    while record["prev"] and in_scene(nusc.get("sample_data", record["prev"])):
        record = nusc.get("sample_data", record["prev"])
    chain = [record]
    while record["next"]:
        record = nusc.get("sample_data", record["next"])
        if not in_scene(record):
            break
        chain.append(record)
    return chain


def _plan(nusc, scenes: list[dict], keyframes_only: bool, questions: dict[str, list[str]],
          keep_gaps: bool) -> list[_Event]:
    events: list[_Event] = []
    previous_end: int | None = None
    for scene in scenes:
        scene_events = list(_plan_scene(nusc, scene, keyframes_only, questions, len(events)))
        if not scene_events:
            continue
        if not keep_gaps and previous_end is not None:
            # Shift the scene's bag time (not its header stamps) to start SCENE_GAP_S after the last one.
            shift = previous_end + int(SCENE_GAP_S * 1e9) - min(e.bag_ns for e in scene_events)
            scene_events = [replace(e, bag_ns=e.bag_ns + shift) for e in scene_events]
        previous_end = max(e.bag_ns for e in scene_events)
        events.extend(scene_events)
    return events


def _plan_scene(nusc, scene: dict, keyframes_only: bool, questions: dict[str, list[str]],
                seq: int) -> Iterable[_Event]:
    """Images and camera_info of every camera in one scene, then its keyframes' questions (bag time = stamp)."""
    chains = {cam.name: _camera_chain(nusc, scene, cam.name) for cam in CAMERAS}
    keyframe_last: dict[str, int] = {}
    for cam in CAMERAS:
        for sd in chains[cam.name]:
            if keyframes_only and not sd["is_key_frame"]:
                continue
            stamp = sd["timestamp"] * 1000  # nuScenes stamps are microseconds
            common = {"bag_ns": stamp, "stamp_ns": stamp, "camera": cam}
            yield _Event(order=0, seq=seq, topic=cam.info_topic, calib_token=sd["calibrated_sensor_token"],
                         width=sd["width"], height=sd["height"], **common)
            yield _Event(order=1, seq=seq + 1, topic=cam.compressed_topic,
                         path=Path(nusc.dataroot) / sd["filename"], **common)
            seq += 2
            if sd["is_key_frame"]:
                keyframe_last[sd["sample_token"]] = max(keyframe_last.get(sd["sample_token"], 0), stamp)
    for sample_token, last in keyframe_last.items():
        for i, text in enumerate(questions.get(sample_token, [])):
            yield _Event(bag_ns=last + QUESTION_DELAY_NS + i * QUESTION_SPACING_NS, order=2, seq=seq,
                         topic=QUESTION_TOPIC, text=text)
            seq += 1


def _make_room(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    # --force deletes only what looks like a bag, never an arbitrary folder given by mistake.
    looks_like_bag = out.is_dir() and all(
        p.name == "metadata.yaml" or p.suffix in {".mcap", ".db3", ".zstd", ".tmp"} for p in out.iterdir()
    )
    if not looks_like_bag:
        raise FileExistsError(f"{out} exists and is not a rosbag2 folder; not deleting it, even with --force")
    shutil.rmtree(out)


def _write_bag(nusc, events: list[_Event], out: Path, storage: str, scenes: list[dict], version: str,
               progress: bool, bag_version: int) -> None:
    store = ros2_typestore()
    types = store.types
    header_t, time_t = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    image_t, info_t = types["sensor_msgs/msg/CompressedImage"], types["sensor_msgs/msg/CameraInfo"]
    roi_t, string_t = types["sensor_msgs/msg/RegionOfInterest"], types["std_msgs/msg/String"]

    writer = Writer(out, version=bag_version, storage_plugin=STORAGES[storage])
    writer.open()
    try:
        writer.set_custom_data("prune2drive.source", f"nuScenes {version}")
        writer.set_custom_data("prune2drive.scenes", " ".join(s["name"] for s in scenes))
        connections = {}
        for cam in CAMERAS:
            connections[cam.info_topic] = writer.add_connection(
                cam.info_topic, info_t.__msgtype__, typestore=store, offered_qos_profiles=[OFFERED_QOS])
            connections[cam.compressed_topic] = writer.add_connection(
                cam.compressed_topic, image_t.__msgtype__, typestore=store, offered_qos_profiles=[OFFERED_QOS])
        if any(e.topic == QUESTION_TOPIC for e in events):
            connections[QUESTION_TOPIC] = writer.add_connection(
                QUESTION_TOPIC, string_t.__msgtype__, typestore=store, offered_qos_profiles=[OFFERED_QOS])

        info_cache: dict[str, np.ndarray] = {}
        for event in tqdm(events, desc="writing bag", unit="msg", disable=not progress):
            if event.topic == QUESTION_TOPIC:
                msg = string_t(data=event.text)
            else:
                header = header_t(stamp=time_t(sec=event.stamp_ns // 1_000_000_000, nanosec=event.stamp_ns % 1_000_000_000),
                                  frame_id=event.camera.frame_id)
                if event.path is not None:
                    jpeg = event.path.read_bytes()
                    msg = image_t(header=header, format="jpeg", data=np.frombuffer(jpeg, dtype=np.uint8))
                else:
                    if event.calib_token not in info_cache:
                        k = nusc.get("calibrated_sensor", event.calib_token)["camera_intrinsic"]
                        info_cache[event.calib_token] = np.array(k, dtype=np.float64).reshape(3, 3)
                    msg = _camera_info(info_t, roi_t, header, info_cache[event.calib_token], event.width, event.height)
            writer.write(connections[event.topic], event.bag_ns, store.serialize_cdr(msg, msg.__msgtype__))
    except BaseException:
        # Leave nothing half-written behind: a later run without --force would trip over it.
        writer.abort()
        shutil.rmtree(out, ignore_errors=True)
        raise
    writer.close()


def _camera_info(info_t, roi_t, header, k: np.ndarray, width: int, height: int):
    """nuScenes images are already undistorted: plumb_bob with zero distortion, P = [K | 0]."""
    p = np.zeros((3, 4))
    p[:, :3] = k
    return info_t(header=header, height=height, width=width, distortion_model="plumb_bob", d=np.zeros(5),
                  k=k.ravel().copy(), r=np.eye(3).ravel(), p=p.ravel(), binning_x=0, binning_y=0,
                  roi=roi_t(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataroot", type=Path, required=True, help="nuScenes root (holds v1.0-*/, samples/, sweeps/)")
    parser.add_argument("--version", default="v1.0-mini", help="table version (default v1.0-mini)")
    parser.add_argument("--out", type=Path, required=True, help="bag folder to create")
    parser.add_argument("--scenes", nargs="+", metavar="NAME", help="scene names to convert (default: all)")
    parser.add_argument("--keyframes-only", action="store_true", help="only the 2 Hz keyframes, not the 12 Hz sweeps")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="mcap", help="bag storage (default mcap)")
    parser.add_argument("--drivelm", type=Path, metavar="FILE", help=f"DriveLM questions to publish on {QUESTION_TOPIC}")
    parser.add_argument("--keep-gaps", action="store_true",
                        help="keep the original time gaps between scenes (default: scenes played back to back)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing bag")
    parser.add_argument("--bag-version", type=int, choices=BAG_VERSIONS, default=DEFAULT_BAG_VERSION,
                        help=f"rosbag2 metadata version (default {DEFAULT_BAG_VERSION}: read by Humble, Jazzy and "
                             "Kilted; 9 is Jazzy/Kilted only)")


def run(args: argparse.Namespace) -> int:
    try:
        out = convert_nuscenes(args.dataroot, args.version, args.out, scenes=args.scenes,
                               keyframes_only=args.keyframes_only, storage=args.storage, drivelm=args.drivelm,
                               force=args.force, keep_gaps=args.keep_gaps, bag_version=args.bag_version)
    except (FileExistsError, FileNotFoundError, ConversionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (play with `ros2 bag play {out}` or `prune2drive play {out}`)")
    return 0
