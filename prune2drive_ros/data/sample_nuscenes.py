"""``prune2drive make-sample-nuscenes``: a small synthetic data set in the nuScenes v1.0-mini layout.

What it writes under OUT (the dataroot), as the real v1.0-mini has it:

- ``v1.0-mini/*.json``: the 13 tables ``NuScenes('v1.0-mini', OUT)`` reads (category, attribute, visibility,
  instance, sensor, calibrated_sensor, ego_pose, log, scene, sample, sample_data, sample_annotation, map);
- ``samples/CAM_X/*.jpg`` (keyframes) and ``sweeps/CAM_X/*.jpg`` (the frames in between): 1600x900 JPEGs of
  six cameras at 12 Hz, each camera firing at its rig offset after the (virtual) LiDAR sweep, keyframes every
  0.5 s (every 6th frame);
- ``maps/*.png``: the drivable-surface/sidewalk semantic prior of each location;
- ``drivelm.json``: DriveLM questions for every keyframe, in the release format (see ``sample_drivelm``).

The scenes are the test bed's street (``testbed_scenes.testbed_world``: lit, textured, traffic cones among
look-alikes), and the questions are the test bed's kinds (vehicle status, cone presence, count and the
nearest cone per view, the ego's behaviour), so a demo with the shipped test-bed model asks what that
model was trained to answer. Cones are placed so that each stays in one camera's view for the whole
clip: a question about a view has the same answer on every frame, whichever frame the node answers on.

Only cameras are simulated (no LiDAR/radar sample_data). Tokens are deterministic for a given seed.
Imports neither rclpy nor nuscenes-devkit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from prune2drive_ros.cameras import CAMERAS
from prune2drive_ros.data import sample_drivelm
from prune2drive_ros.data import testbed_scenes as T
from prune2drive_ros.data.synthetic_world import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    ROAD_HALF_WIDTH,
    SCENARIOS,
    SIDEWALK_WIDTH,
    CameraModel,
    World,
    make_rig,
    quaternion_from_matrix,
    quaternion_from_yaw,
    render,
)

VERSION = "v1.0-mini"
CAMERA_HZ = 12
FRAMES_PER_KEYFRAME = 6  # 12 Hz cameras, 2 Hz keyframes
JPEG_QUALITY = 85
MAP_RESOLUTION = 0.1  # metres per pixel, the devkit's native map resolution
MAP_SIZE_PX = 2000  # 200 m x 200 m around the scenes
ANNOTATION_RANGE = 50.0  # metres; objects further away get no sample_annotation

# (location, right-hand traffic, vehicle, UTC offset): the four nuScenes locations.
LOCATIONS = (
    ("boston-seaport", True, "n008", -4),
    ("singapore-onenorth", False, "n015", 8),
    ("singapore-queenstown", False, "n015", 8),
    ("singapore-hollandvillage", False, "n015", 8),
)

CATEGORIES = (
    ("human.pedestrian.adult", "Adult subcategory.", 2),
    ("movable_object.trafficcone", "All types of traffic cone.", 12),
    ("vehicle.bus.rigid", "Rigid bus subcategory.", 16),
    ("vehicle.car", "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, wagons, vans, SUVs.", 17),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo including pick-ups, lorries, trucks and semi-tractors.",
     23),
)
ATTRIBUTES = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no immediate intent to move."),
    ("pedestrian.moving", "The human is moving."),
    ("pedestrian.standing", "The human is standing."),
)
VISIBILITY = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)
SCENE_TAGS = {
    "cruise": "Straight road, following a car, oncoming traffic, parked cars, peds on sidewalk",
    "crossing": "Wait at crosswalk, ped crossing, parked cars, oncoming traffic",
    "slow_follow": "Following a truck, car overtaking, parked cars, peds on sidewalk",
}


class Tokens:
    """Deterministic 32-hex tokens, like nuScenes', derived from the seed and a readable key."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, *key: object) -> str:
        return hashlib.md5(f"{self.seed}/{'/'.join(map(str, key))}".encode()).hexdigest()


@dataclass
class _Frame:
    camera: CameraModel
    scene_time: float  # seconds since the scene's first keyframe
    timestamp: int  # microseconds since the epoch
    keyframe: int | None  # keyframe index, or None for a sweep
    next_keyframe: int  # keyframe whose sample a sweep points to (the next one in time)
    filename: str


def make_sample_nuscenes(out: Path, scenes: int = 2, keyframes: int = 4, seed: int = 0, *, force: bool = False,
                         progress: bool = True) -> Path:
    """Write the synthetic data set under ``out`` (the dataroot) and return ``out``.

    ``keyframes`` per scene, 0.5 s apart, with the 12 Hz sweeps between them: each scene has
    ``(keyframes - 1) * 6 + 1`` frames per camera.
    """
    if scenes < 1 or keyframes < 1:
        raise ValueError("need at least one scene and one keyframe")
    out = Path(out)
    _prepare_output(out, force)
    rng = random.Random(seed)
    token = Tokens(seed)
    rig = make_rig()
    tables: dict[str, list[dict]] = {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
        "scene", "sample", "sample_data", "sample_annotation", "map")}
    _static_tables(tables, token)
    drivelm: dict[str, dict] = {}
    duration = (keyframes - 1) * 0.5
    frames_per_camera = (keyframes - 1) * FRAMES_PER_KEYFRAME + 1
    bar = tqdm(total=scenes * frames_per_camera * len(CAMERAS), desc="rendering", unit="img", disable=not progress)
    worlds_by_location: dict[str, list[World]] = {}
    try:
        for index in range(scenes):
            location, right_hand, vehicle, utc_offset = LOCATIONS[index % len(LOCATIONS)]
            scenario = SCENARIOS[index % len(SCENARIOS)]
            # Scenes of one location share the map: spread their roads over it with different headings.
            origin = (60.0 + 80.0 * rng.random(), 60.0 + 80.0 * rng.random())
            # Every frame time of the clip (12 Hz, plus the rig's firing offsets): cones must hold still in
            # their views over all of them.
            clip = [j / CAMERA_HZ for j in range(frames_per_camera)] + [duration + 0.06]
            world = T.testbed_world(rng, rig, scenario, origin, rng.uniform(-math.pi, math.pi), right_hand,
                                    times=clip)
            worlds_by_location.setdefault(location, []).append(world)

            local_start = datetime(2018, 7, 23, 10, 0, 0) + timedelta(days=index, minutes=7 * index)
            logfile = f"{vehicle}-{local_start:%Y-%m-%d-%H-%M-%S}{utc_offset:+03d}00"
            log_token = token("log", index)
            tables["log"].append({"token": log_token, "logfile": logfile, "vehicle": vehicle,
                                  "date_captured": f"{local_start:%Y-%m-%d}", "location": location})
            epoch = local_start.replace(tzinfo=timezone(timedelta(hours=utc_offset))).timestamp()
            scene_start_us = int(epoch * 1e6) + 20_000_000 + rng.randrange(1_000_000)

            calib = {}
            for cam in CAMERAS:
                model = rig[cam.name]
                calib[cam.name] = token("calibrated_sensor", index, cam.name)
                tables["calibrated_sensor"].append({
                    "token": calib[cam.name], "sensor_token": token("sensor", cam.name),
                    "translation": [float(v) for v in model.translation],
                    "rotation": quaternion_from_matrix(model.rotation),
                    "camera_intrinsic": model.intrinsic_list,
                })

            scene_token = token("scene", index)
            sample_tokens = [token("sample", index, k) for k in range(keyframes)]
            for k, sample_token in enumerate(sample_tokens):
                tables["sample"].append({
                    "token": sample_token, "timestamp": scene_start_us + k * 500_000, "scene_token": scene_token,
                    "prev": sample_tokens[k - 1] if k > 0 else "",
                    "next": sample_tokens[k + 1] if k + 1 < keyframes else "",
                })
            tables["scene"].append({
                "token": scene_token, "log_token": log_token, "nbr_samples": keyframes,
                "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                "name": f"scene-{index + 1:04d}", "description": SCENE_TAGS[scenario],
            })

            keyframe_infos: list[dict[str, dict]] = [{"times": {}, "files": {}} for _ in range(keyframes)]
            for cam in CAMERAS:
                frames = _camera_frames(rig[cam.name], cam.fire_offset_ms, logfile, scene_start_us, frames_per_camera,
                                        rng)
                tokens = [token("sample_data", index, cam.name, j) for j in range(len(frames))]
                for j, frame in enumerate(frames):
                    image = render(world, frame.camera, frame.scene_time)
                    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                    if not ok:
                        raise RuntimeError(f"JPEG encoding failed for {frame.filename}")
                    (out / frame.filename).write_bytes(jpeg.tobytes())
                    bar.update()

                    ego_translation, ego_yaw = world.ego_pose(frame.scene_time)
                    ego_token = token("ego_pose", index, cam.name, j)
                    tables["ego_pose"].append({
                        "token": ego_token, "timestamp": frame.timestamp,
                        "rotation": quaternion_from_yaw(ego_yaw), "translation": [float(v) for v in ego_translation],
                    })
                    tables["sample_data"].append({
                        "token": tokens[j], "sample_token": sample_tokens[frame.next_keyframe],
                        "ego_pose_token": ego_token, "calibrated_sensor_token": calib[cam.name],
                        "timestamp": frame.timestamp, "fileformat": "jpg", "is_key_frame": frame.keyframe is not None,
                        "height": IMAGE_HEIGHT, "width": IMAGE_WIDTH, "filename": frame.filename,
                        "prev": tokens[j - 1] if j > 0 else "", "next": tokens[j + 1] if j + 1 < len(frames) else "",
                    })
                    if frame.keyframe is not None:
                        keyframe_infos[frame.keyframe]["times"][cam.name] = frame.scene_time
                        keyframe_infos[frame.keyframe]["files"][cam.name] = frame.filename

            _annotate(tables, token, world, index, sample_tokens)
            drivelm[scene_token] = {
                "scene_description": sample_drivelm.SCENE_DESCRIPTIONS[scenario],
                "key_frames": {sample_tokens[k]: T.drivelm_entry(T.questions(world, rig, kf["times"]), kf["files"])
                               for k, kf in enumerate(keyframe_infos)},
            }
    finally:
        bar.close()

    for location, worlds in worlds_by_location.items():
        filename = f"maps/{token('map', location)}.png"
        cv2.imwrite(str(out / filename), _map_mask(worlds))
        log_tokens = [log["token"] for log in tables["log"] if log["location"] == location]
        tables["map"].append({"token": token("map", location), "category": "semantic_prior", "filename": filename,
                              "log_tokens": log_tokens})
    table_dir = out / VERSION
    for name, rows in tables.items():
        (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=1))
    (out / "drivelm.json").write_text(json.dumps(drivelm, indent=1))
    return out


def _prepare_output(out: Path, force: bool) -> None:
    """Create the layout; refuse to mix with an existing data set unless ``force`` (then replace only ours)."""
    ours = [out / VERSION, out / "samples", out / "sweeps", out / "maps", out / "drivelm.json"]
    existing = [p for p in ours if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds a data set ({existing[0].name}); pass --force to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for sub in [VERSION, "maps"] + [f"{kind}/{cam.name}" for kind in ("samples", "sweeps") for cam in CAMERAS]:
        (out / sub).mkdir(parents=True, exist_ok=True)


def _camera_frames(camera: CameraModel, offset_ms: float, logfile: str, scene_start_us: int, count: int,
                   rng: random.Random) -> list[_Frame]:
    """A camera's frames: 12 Hz from the first keyframe, each ``offset_ms`` after the sweep, with ~1 ms jitter."""
    frames = []
    for j in range(count):
        stamp = scene_start_us + round(j * 1e6 / CAMERA_HZ) + round(offset_ms * 1000) + rng.randint(-600, 600)
        keyframe = j // FRAMES_PER_KEYFRAME if j % FRAMES_PER_KEYFRAME == 0 else None
        folder = "samples" if keyframe is not None else "sweeps"
        frames.append(_Frame(
            camera=camera, scene_time=(stamp - scene_start_us) / 1e6, timestamp=stamp, keyframe=keyframe,
            next_keyframe=-(-j // FRAMES_PER_KEYFRAME),
            filename=f"{folder}/{camera.name}/{logfile}__{camera.name}__{stamp}.jpg",
        ))
    return frames


def _static_tables(tables: dict[str, list[dict]], token: Tokens) -> None:
    tables["category"] = [{"token": token("category", name), "name": name, "description": desc, "index": idx}
                          for name, desc, idx in CATEGORIES]
    tables["attribute"] = [{"token": token("attribute", name), "name": name, "description": desc}
                           for name, desc in ATTRIBUTES]
    tables["visibility"] = [{"token": tok, "level": level, "description": desc} for tok, level, desc in VISIBILITY]
    tables["sensor"] = [{"token": token("sensor", cam.name), "channel": cam.name, "modality": "camera"}
                        for cam in CAMERAS]


def _annotate(tables: dict[str, list[dict]], token: Tokens, world: World, scene: int, sample_tokens: list[str]) -> None:
    """3D boxes of every agent within range at each keyframe, chained per instance."""
    category_token = {name: token("category", name) for name, _, _ in CATEGORIES}
    for a, agent in enumerate(world.agents):
        anns = []
        for k, sample_token in enumerate(sample_tokens):
            t = k * 0.5
            box = world.agent_box(agent, t)
            ego_translation, _ = world.ego_pose(t)
            distance = float(np.linalg.norm(box.center[:2] - ego_translation[:2]))
            if distance > ANNOTATION_RANGE:
                continue
            if agent.kind == "cone":
                attribute = None  # nuScenes gives traffic cones no attribute
            elif agent.kind == "pedestrian":
                attribute = "pedestrian.moving" if agent.moving else "pedestrian.standing"
            else:
                attribute = "vehicle.moving" if agent.moving else ("vehicle.parked" if agent.role == "parked"
                                                                   else "vehicle.stopped")
            anns.append({
                "token": token("sample_annotation", scene, a, k), "sample_token": sample_token,
                "instance_token": token("instance", scene, a), "visibility_token": "4",
                "attribute_tokens": [token("attribute", attribute)] if attribute else [],
                "translation": [float(v) for v in box.center], "size": [float(v) for v in agent.size],
                "rotation": quaternion_from_yaw(box.yaw),
                # A plausible falloff with distance; there is no simulated LiDAR to count points with.
                "num_lidar_pts": max(1, round(3000 / max(distance, 1.0) ** 1.5)),
                "num_radar_pts": 0 if agent.kind == "pedestrian" else int(distance < 40.0) * 3,
            })
        if not anns:
            continue
        for i, ann in enumerate(anns):
            ann["prev"] = anns[i - 1]["token"] if i > 0 else ""
            ann["next"] = anns[i + 1]["token"] if i + 1 < len(anns) else ""
        tables["sample_annotation"].extend(anns)
        tables["instance"].append({
            "token": token("instance", scene, a), "category_token": category_token[agent.category],
            "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
            "last_annotation_token": anns[-1]["token"],
        })


def _map_mask(worlds: list[World]) -> np.ndarray:
    """Semantic prior (road + sidewalks = 255) in the devkit's map frame: x right, y up, 0.1 m per pixel."""
    mask = np.zeros((MAP_SIZE_PX, MAP_SIZE_PX), dtype=np.uint8)
    half = ROAD_HALF_WIDTH + SIDEWALK_WIDTH
    for world in worlds:
        quad = world.ground_quad(-300.0, 300.0, -half, half)[:, :2]
        px = np.stack([quad[:, 0] / MAP_RESOLUTION, MAP_SIZE_PX - quad[:, 1] / MAP_RESOLUTION], axis=1)
        cv2.fillPoly(mask, [np.round(px).astype(np.int32)], 255)
    return mask


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (the nuScenes dataroot)")
    parser.add_argument("--scenes", type=int, default=2, help="number of scenes (default 2)")
    parser.add_argument("--keyframes", type=int, default=4, help="keyframes per scene, 0.5 s apart (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace a data set already in OUT")


def run(args: argparse.Namespace) -> int:
    try:
        out = make_sample_nuscenes(args.out, args.scenes, args.keyframes, args.seed, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.scenes} scene(s) x {args.keyframes} keyframe(s) to {out} "
          f"(load with NuScenes('{VERSION}', '{out}'); questions in {out / 'drivelm.json'})")
    return 0
