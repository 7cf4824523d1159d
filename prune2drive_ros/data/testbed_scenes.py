"""Scenes and questions for the trained test bed: traffic cones on a lit, textured street full of look-alikes.

Each test-bed sample is one keyframe of a ``synthetic_world`` street: sun, shadows, exposure and grain,
patched asphalt, windows, trees and lamp posts (``dress_street``), and things that share a cone's
colour or shape: pedestrians in orange, orange cars, red tail lights, orange and amber road signs,
striped barriers, tapered bollards. Into that street go 0-3 traffic cones per camera, at continuous
positions (range and bearing drawn from intervals, so no two scenes share a cone's pixel) and of
different heights, so a near cone covers several visual tokens and a far one part of one.

Questions, all answered from the world itself, in DriveLM's wording and tags:

- ``behavior``: multiple choice on the ego vehicle's behaviour (stopped / slow / normal speed);
- ``status``: multiple choice on the moving status of a vehicle tagged ``<c1,CAM,x,y>``;
- ``presence``: yes/no (as a two-option multiple choice) "Is there a traffic cone in the front view?";
- ``count``: multiple choice "How many traffic cones are in the back left view?" (0-3);
- ``nearest``: "Where is the nearest traffic cone in the back view?", answered with a tag
  ``<c1,CAM,x,y>`` (the centre of its box) that the match metric scores within 16 px.

``TRAINING`` holds the ranges that training, development and test scenes are drawn from;
``OUT_OF_DISTRIBUTION`` draws cone ranges, look-alikes and looks outside them. ``drivelm_entry``
writes a keyframe's questions in the DriveLM release format (with the challenge's metric tags); the
evaluation sets (``write_drivelm_set``) and the nuScenes-style sample the demo plays
(``sample_nuscenes``) both use it, so the demo asks what the test bed was trained to answer.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from prune2drive_ros.cameras import CAMERAS
from prune2drive_ros.data import sample_drivelm as D
from prune2drive_ros.data.synthetic_world import (
    BUILDING_COLORS,
    ROAD_HALF_WIDTH,
    SCENARIOS,
    SIDEWALK_WIDTH,
    Agent,
    CameraModel,
    Look,
    ObjectView,
    World,
    dress_street,
    make_rig,
    make_world,
    project_agent,
    render,
)

RENDER_SCALE = 0.25  # views are drawn at 400 x 225; the model sees them at its own input size anyway
MAX_CONES = 3
KINDS = ("behavior", "status", "presence", "count", "nearest")
MC_KINDS = ("behavior", "status", "presence", "count")
# The DriveLM challenge's metric tags: 0 accuracy, 2 language, 3 match.
KIND_TAGS = {"behavior": [0], "status": [0], "presence": [0], "count": [0], "nearest": [2, 3]}
_GROUP = {"behavior": "behavior", "status": "perception", "presence": "perception", "count": "perception",
          "nearest": "perception"}
CONE_COLORS = ((0, 110, 255), (10, 95, 240), (0, 130, 250))  # BGR oranges
ORANGE_CLOTHES = (("an orange vest", (30, 140, 245)), ("an orange jacket", (20, 105, 235)))
ORANGE_CAR = ("orange", (10, 115, 240))
SIGN_COLORS = ((0, 120, 250), (0, 170, 250), (160, 80, 20), (40, 40, 200))  # orange, amber, blue, red
BOLLARD_COLORS = ((0, 200, 235), (150, 150, 150), (225, 225, 225))
BIN_COLORS = ((0, 120, 240), (0, 175, 235))
OOD_BUILDING_COLORS = ((60, 70, 150), (50, 90, 160), (90, 60, 110), (70, 110, 90))  # brick, ochre, plum, olive


@dataclass(frozen=True)
class SceneRanges:
    """What a set of test-bed scenes is drawn from."""

    # Metres from the camera, a union of intervals. Nearer than 9 m a cone is at least half a token tall at
    # 8x8 tokens per view; out to 16 m the small model's vision did not learn to count them from answers
    # within the training budget (development set).
    cone_distance: tuple[tuple[float, float], ...] = ((2.5, 9.0),)
    cone_bearing: float = 0.8  # largest bearing from the optical axis, as a share of the half field of view
    cone_height: tuple[float, float] = (0.5, 0.95)
    count_weights: tuple[float, ...] = (0.35, 0.25, 0.2, 0.2)  # P(0..3 cones in a view)
    orange_clothes: float = 0.3  # share of pedestrians in orange
    orange_cars: float = 0.15
    signs: tuple[int, int] = (0, 3)
    barriers: tuple[int, int] = (0, 2)
    bollards: tuple[int, int] = (0, 4)
    bins: tuple[int, int] = (0, 0)
    look: Look = field(default_factory=Look)


TRAINING = SceneRanges()
"""Training, development and test scenes (different seeds) come from these ranges."""

OUT_OF_DISTRIBUTION = SceneRanges(
    cone_distance=((1.8, 2.5), (9.0, 13.0)),  # nearer and farther than any training cone
    orange_clothes=0.5, orange_cars=0.3, signs=(2, 4), barriers=(1, 3), bollards=(3, 6),
    bins=(1, 3),  # orange rubbish bins: a look-alike training never showed
    look=Look(exposure=(0.5, 0.7), sun_elevation=(0.1, 0.3), warmth=(0.08, 0.15), grain=(5.0, 8.0),
              asphalt=(48, 68), building_colors=OOD_BUILDING_COLORS, lit_windows=0.4),
)
"""Cone distances, look-alikes (more of them, and bins) and looks (dusk light, wet road, other
buildings) outside ``TRAINING``; reported relative to dense, never trained or tuned on."""

assert set(OOD_BUILDING_COLORS).isdisjoint(BUILDING_COLORS)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str
    camera: str | None = None  # the view a question is about
    point: tuple[float, float] | None = None  # the pixel the answer's tag names
    objects: tuple[tuple[str, dict], ...] = ()  # (tag, DriveLM key_object_info) of every object it names


@dataclass(frozen=True)
class Seen:
    """One road user or cone as a camera sees it (full-resolution pixels); training reads these as labels."""

    kind: str  # car, truck, pedestrian, cone
    bbox: tuple[float, float, float, float]
    depth: float
    bearing: float  # degrees left of the camera's optical axis

    @property
    def point(self) -> tuple[float, float]:
        """The box centre: the pixel a DriveLM tag names."""
        return (self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2


@dataclass
class TestbedScene:
    world: World
    scenario: str
    images: list[np.ndarray]  # RGB uint8, camera order
    qas: list[QA]
    cones: dict[str, int] = field(default_factory=dict)  # cones seen per camera
    seen: dict[str, list[Seen]] = field(default_factory=dict)  # every road user and cone, per camera


def _choice_question(question: str, correct: str, options: list[str]) -> tuple[str, str]:
    """``question`` with ``options`` listed as A-D in the given (fixed) order; returns (Q, letter).

    The order is fixed per question kind (DriveLM shuffles it): the test bed measures what the views
    tell the model, and a small model learns a fixed answer sheet much faster than reading options.
    """
    listed = " ".join(f"{letter}. {option}" for letter, option in zip(D.LETTERS, options, strict=False))
    return f"{question} {D.MCQ_SUFFIX} {listed}", D.LETTERS[options.index(correct)]


# ---------------------------------------------------------------- the world


def _overlaps(world: World, agent: Agent, times: Sequence[float]) -> bool:
    """Whether ``agent`` comes within 0.3 m of a road user or a piece of furniture at any of ``times``."""
    for t in times:
        sa, la = agent.road_position(t)
        for other in world.agents + world.decor:
            sb, lb = other.road_position(t)
            if abs(sa - sb) < (max(agent.size[:2]) + max(other.size[:2])) / 2 + 0.3 and \
                    abs(la - lb) < (max(agent.size[:2]) + max(other.size[:2])) / 2 + 0.3:
                return True
    return False


def _hidden(world: World, view: ObjectView, rig: dict[str, CameraModel], t: float) -> bool:
    """Whether anything nearer (a road user, a cone, furniture) covers the object's box centre in that camera."""
    cx, cy = (view.bbox[0] + view.bbox[2]) / 2, (view.bbox[1] + view.bbox[3]) / 2
    s_ego = world.ego_speed * t
    for other in world.agents + world.decor:
        s, lateral = other.road_position(t)
        if math.hypot(s - s_ego, lateral - world.ego_lane) - max(other.size) > view.depth + 3.0:
            continue  # farther from the ego than the object from its camera (mounted within 2 m): behind it
        ov = project_agent(world, other, rig[view.camera], t)
        if ov is not None and ov.depth < view.depth - 0.05 and \
                ov.bbox[0] - 20 <= cx <= ov.bbox[2] + 20 and ov.bbox[1] - 20 <= cy <= ov.bbox[3] + 20:
            return True
    return False


def _uniform_in(rng: random.Random, intervals: Sequence[tuple[float, float]]) -> float:
    """Uniform within one of ``intervals``, each picked equally often (a near and a far band get equal shares)."""
    return rng.uniform(*rng.choice(intervals))


def add_look_alikes(world: World, rng: random.Random, ranges: SceneRanges, s_range: tuple[float, float] = (-30, 45),
                    times: Sequence[float] = (0.0,)) -> None:
    """Things a cone detector must not count: orange clothes and cars, signs, barriers, bollards (and bins)."""
    for agent in world.agents:
        if agent.kind == "pedestrian" and rng.random() < ranges.orange_clothes:
            agent.color_name, agent.color = rng.choice(ORANGE_CLOTHES)
        elif agent.kind == "car" and rng.random() < ranges.orange_cars:
            agent.color_name, agent.color = ORANGE_CAR

    def put(kind: str, size: tuple[float, float, float], lateral: float, color, heading: float = 0.0) -> None:
        item = Agent(kind, "", size, color, "", rng.uniform(*s_range), rng.choice([-1.0, 1.0]) * lateral,
                     heading=heading, role="decor")
        if not _overlaps(world, item, times):
            world.decor.append(item)

    for _ in range(rng.randint(*ranges.signs)):  # facing the traffic, at the kerb
        put("sign", (0.75, 0.05, rng.uniform(2.0, 2.5)), ROAD_HALF_WIDTH + rng.uniform(0.2, 0.6),
            rng.choice(SIGN_COLORS), rng.choice([0.0, math.pi]))
    for _ in range(rng.randint(*ranges.barriers)):  # on the parking strip or the sidewalk, along or across
        put("barrier", (rng.uniform(1.3, 1.8), 0.25, rng.uniform(0.9, 1.1)),
            ROAD_HALF_WIDTH + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.4), CONE_COLORS[0],
            rng.choice([0.0, math.pi / 2]))
    for _ in range(rng.randint(*ranges.bollards)):
        put("bollard", (0.25, 0.25, rng.uniform(0.75, 1.0)), ROAD_HALF_WIDTH + 0.25, rng.choice(BOLLARD_COLORS))
    for _ in range(rng.randint(*ranges.bins)):
        put("bin", (0.6, 0.6, 1.0), ROAD_HALF_WIDTH + rng.uniform(1.8, 2.4), rng.choice(BIN_COLORS))


def place_cones(world: World, rig: dict[str, CameraModel], rng: random.Random, ranges: SceneRanges = TRAINING,
                times: Sequence[float] = (0.0,)) -> None:
    """Add 0-3 cones to each camera's view at continuous positions: on the street, free, unhidden, seen by
    that camera alone at every one of ``times``, and each clearly nearer or farther than the view's others."""
    s_ego = world.ego_speed * times[0]
    kerb = ROAD_HALF_WIDTH + SIDEWALK_WIDTH - 0.4
    for cam in CAMERAS:
        model = rig[cam.name]
        want = rng.choices(range(MAX_CONES + 1), weights=ranges.count_weights)[0]
        axis = math.atan2(model.rotation[1, 2], model.rotation[0, 2])  # optical z in the ego frame
        half_fov = math.atan(model.k[0, 2] / model.k[0, 0])
        placed: list[ObjectView] = []
        for _ in range(60):
            if len(placed) == want:
                break
            distance = _uniform_in(rng, ranges.cone_distance)
            angle = axis + rng.uniform(-1.0, 1.0) * ranges.cone_bearing * half_fov
            x = model.translation[0] + distance * math.cos(angle)
            y = model.translation[1] + distance * math.sin(angle)
            height = rng.uniform(*ranges.cone_height)
            width = height * rng.uniform(0.5, 0.62)
            cone = Agent("cone", "movable_object.trafficcone", (width, width, height), rng.choice(CONE_COLORS),
                         "orange", s_ego + x, world.ego_lane + y, role="cone")
            if abs(cone.l0) > kerb or _overlaps(world, cone, times):
                continue
            views = [[v for c in CAMERAS if (v := project_agent(world, cone, rig[c.name], t)) is not None]
                     for t in times]
            if any(len(seen) != 1 or seen[0].camera != cam.name or _hidden(world, seen[0], rig, t)
                   for seen, t in zip(views, times, strict=True)):
                continue
            view = views[0][0]
            if any(abs(view.depth - other.depth) < 1.5 or _boxes_touch(view.bbox, other.bbox) for other in placed):
                continue
            world.agents.append(cone)
            placed.append(view)


def _boxes_touch(a: tuple[float, ...], b: tuple[float, ...], margin: float = 12.0) -> bool:
    return a[0] - margin < b[2] and b[0] - margin < a[2] and a[1] - margin < b[3] and b[1] - margin < a[3]


def testbed_world(rng: random.Random, rig: dict[str, CameraModel], scenario: str, origin: tuple[float, float],
                  yaw: float, right_hand_traffic: bool, ranges: SceneRanges = TRAINING,
                  times: Sequence[float] = (0.0,)) -> World:
    """A street for ``scenario``, dressed, with look-alikes and cones that hold still in their views over ``times``."""
    world = make_world(rng, scenario, origin, yaw, right_hand_traffic, max(times) + 1.0)
    # Only the buildings along the visible stretch: far ones cost most of the drawing time at this scale.
    here = world.road_to_global(world.ego_speed * times[0], 0.0)
    world.buildings = [b for b in world.buildings if abs(b.center[:2] - here).max() < 90.0]
    dress_street(world, rng, ranges.look)
    add_look_alikes(world, rng, ranges, times=times)
    place_cones(world, rig, rng, ranges, times)
    return world


# ---------------------------------------------------------------- questions


def _cone_views(world: World, rig: dict[str, CameraModel],
                times: dict[str, float]) -> dict[str, list[tuple[Agent, ObjectView]]]:
    out: dict[str, list[tuple[Agent, ObjectView]]] = {c.name: [] for c in CAMERAS}
    for agent in world.agents:
        if agent.kind != "cone":
            continue
        for cam in CAMERAS:
            view = project_agent(world, agent, rig[cam.name], times[cam.name])
            if view is not None:
                out[cam.name].append((agent, view))
    return out


def _key_object(agent: Agent, view: ObjectView) -> dict:
    category = {"pedestrian": "Pedestrian", "cone": "Traffic element"}.get(agent.kind, "Vehicle")
    return {"Category": category,
            "Status": ("Moving" if agent.moving else "Stationary") if category == "Vehicle" else None,
            "Visual_description": agent.describe().capitalize() + ".",
            "2d_bbox": [round(v, 1) for v in view.bbox]}


def questions(world: World, rig: dict[str, CameraModel], times: dict[str, float] | None = None) -> list[QA]:
    """Every test-bed question about the keyframe whose cameras fired at ``times`` (default: all at 0).

    Order: vehicle status, cone presence per view, cone counts, nearest cones, then the ego behaviour
    (DriveLM's perception group before its behaviour group).
    """
    times = times or {c.name: 0.0 for c in CAMERAS}
    kf = D.KeyframeInfo("", times, {})
    qas: list[QA] = []
    vehicles = []
    for agent in world.agents:
        if agent.kind in ("car", "truck", "bus"):
            view = D.best_view(world, agent, rig, kf)
            if view is not None:
                vehicles.append((view.depth, agent, view))
    vehicles.sort(key=lambda item: item[0])
    for _, agent, view in vehicles[:2]:
        tag = D.object_tag(1, view)
        q, a = _choice_question(f"What is the moving status of object {tag}?", D.moving_status(agent),
                                ["Going ahead.", "Stopped.", "Turn left.", "Turn right."])
        qas.append(QA(q, a, "status", view.camera, objects=((tag, _key_object(agent, view)),)))

    cone_views = _cone_views(world, rig, times)
    for cam in CAMERAS:
        q, a = _choice_question(f"Is there a traffic cone in the {cam.label}?",
                                "Yes." if cone_views[cam.name] else "No.", ["Yes.", "No."])
        qas.append(QA(q, a, "presence", cam.name))
    for cam in CAMERAS:
        q, a = _choice_question(f"How many traffic cones are in the {cam.label}?",
                                str(min(len(cone_views[cam.name]), MAX_CONES)), [str(i) for i in range(MAX_CONES + 1)])
        qas.append(QA(q, a, "count", cam.name))
    for cam in CAMERAS:
        if cone_views[cam.name]:
            agent, nearest = min(cone_views[cam.name], key=lambda item: item[1].depth)
            tag = D.object_tag(1, nearest)
            x1, y1, x2, y2 = nearest.bbox
            qas.append(QA(f"Where is the nearest traffic cone in the {cam.label}?",
                          f"The nearest traffic cone in the {cam.label} is {tag}.", "nearest", cam.name,
                          ((x1 + x2) / 2, (y1 + y2) / 2), ((tag, _key_object(agent, nearest)),)))

    distractors = [f"The ego vehicle is going straight. The ego vehicle is {speed}."
                   for speed in ("not moving", "driving slowly", "driving with normal speed", "driving fast")]
    q, a = _choice_question("Predict the behavior of the ego vehicle.", D.ego_behavior(world), distractors)
    qas.append(QA(q, a, "behavior"))
    return qas


def drivelm_entry(qas: Sequence[QA], image_paths: dict[str, str]) -> dict:
    """One ``key_frames[sample_token]`` value in the DriveLM release format: key objects, QA groups, images.

    Each QA also carries the challenge test file's metric ``tag`` and the test bed's ``kind``.
    """
    groups: dict[str, list[dict]] = {"perception": [], "prediction": [], "planning": [], "behavior": []}
    infos: dict[str, dict] = {}
    for item in qas:
        entry = D.qa_record(item.question, item.answer)
        entry["tag"] = KIND_TAGS[item.kind]
        entry["kind"] = item.kind
        groups[_GROUP[item.kind]].append(entry)
        infos.update(dict(item.objects))
    return {"key_object_infos": infos, "QA": groups, "image_paths": dict(image_paths)}


# ---------------------------------------------------------------- scenes


def _seen(agent: Agent, view: ObjectView, camera: CameraModel) -> Seen:
    x = (view.bbox[0] + view.bbox[2]) / 2
    bearing = math.degrees(math.atan2(camera.k[0, 2] - x, camera.k[0, 0]))  # bearings count to the left
    return Seen(agent.kind, view.bbox, view.depth, bearing)


def make_scene(rng: random.Random, rig: dict[str, CameraModel] | None = None, scale: float = RENDER_SCALE,
               draw: bool = True, ranges: SceneRanges = TRAINING) -> TestbedScene:
    """One random test-bed keyframe: world, six RGB views drawn at ``scale`` (none if not ``draw``), questions."""
    rig = rig or make_rig()
    scenario = rng.choice(SCENARIOS)
    world = testbed_world(rng, rig, scenario, (0.0, 0.0), rng.uniform(-math.pi, math.pi), rng.random() < 0.5, ranges)
    qas = questions(world, rig)
    seen = {c.name: [_seen(a, v, rig[c.name]) for a in world.agents
                     if (v := project_agent(world, a, rig[c.name], 0.0)) is not None] for c in CAMERAS}
    counts = {cam: sum(s.kind == "cone" for s in items) for cam, items in seen.items()}
    images = [cv2.cvtColor(render(world, rig[c.name], 0.0, scale), cv2.COLOR_BGR2RGB) for c in CAMERAS] if draw else []
    return TestbedScene(world, scenario, images, qas, counts, seen)


def make_scenes(count: int, seed: int, ranges: SceneRanges = TRAINING, draw: bool = True) -> list[TestbedScene]:
    """``count`` scenes of one seeded stream: the same seed always gives the same scenes."""
    rng = random.Random(seed)
    rig = make_rig()
    return [make_scene(rng, rig, draw=draw, ranges=ranges) for _ in range(count)]


def write_drivelm_set(out: str | Path, scenes: int, seed: int, *, ranges: SceneRanges = TRAINING,
                      progress: bool = True) -> Path:
    """Write ``scenes`` keyframes as ``OUT/drivelm.json`` + ``OUT/samples/CAM_*/*.png``; returns the JSON path.

    Every question carries its DriveLM challenge tag, so accuracy, language and match see exactly the
    intended questions.
    """
    from tqdm import tqdm

    out = Path(out)
    for cam in CAMERAS:
        (out / "samples" / cam.name).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rig = make_rig()
    data: dict[str, dict] = {}
    for i in tqdm(range(scenes), desc="test-bed scenes", unit="scene", disable=not progress):
        scene = make_scene(rng, rig, ranges=ranges)
        scene_token, sample_token = f"testbed{seed}-scene{i:04d}", f"testbed{seed}-sample{i:04d}"
        paths = {}
        for cam, image in zip(CAMERAS, scene.images, strict=True):
            rel = f"samples/{cam.name}/{sample_token}__{cam.name}.png"
            cv2.imwrite(str(out / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            paths[cam.name] = rel
        data[scene_token] = {"scene_description": D.SCENE_DESCRIPTIONS[scene.scenario],
                             "key_frames": {sample_token: drivelm_entry(scene.qas, paths)}}
    path = out / "drivelm.json"
    path.write_text(json.dumps(data, indent=1))
    return path

