"""Scenes and questions for the trained test bed: the synthetic street plus small traffic cones.

Each test-bed sample is one keyframe of a ``synthetic_world`` street (all six cameras at t = 0), with
0-3 traffic cones placed in each camera's view. Cones are small (a few percent of a view, about one
visual token at 12 x 12 tokens per view), so questions about them are the ones a pruning method can
break: a method that drops a cone's token loses the answer.

Questions, all answered from the world itself:

- ``behavior``: multiple choice on the ego vehicle's behaviour (stopped / slow / normal speed);
- ``status``: multiple choice on the moving status of a vehicle tagged ``<c1,CAM,x,y>``;
- ``presence``: yes/no (as a two-option multiple choice) "Is there a traffic cone in the front view?";
- ``count``: multiple choice "How many traffic cones are in the back left view?" (0-3);
- ``nearest``: "Where is the nearest traffic cone in the back view?", answered with a tag
  ``<c1,CAM,x,y>`` that the match metric scores.

Cones stand on a fixed set of slots per camera (bearings and ranges relative to the camera), so the
pixel point of a cone on a given slot is the same in every scene: a small model can learn to name it
within the match metric's 16 px. ``write_drivelm_set`` writes scenes as a DriveLM file (nested
release format, with the challenge's metric tags) plus PNG views, which ``prune2drive eval`` reads.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from prune2drive_ros.cameras import CAMERAS
from prune2drive_ros.data import sample_drivelm as D
from prune2drive_ros.data.synthetic_world import (
    SCENARIOS,
    SHIRT_COLORS,
    Agent,
    CameraModel,
    World,
    make_rig,
    make_world,
    project_agent,
    render,
)

CONE_SIZE = (0.5, 0.5, 0.8)  # width, length, height (m)
CONE_BGR = (0, 110, 255)
CONE_BEARINGS_DEG = (-16.0, -5.0, 5.0, 16.0)  # relative to the camera's optical axis; inside its own view
CONE_RANGES_M = (5.0, 7.5, 10.5)  # from the camera
COUNT_WEIGHTS = (0.35, 0.25, 0.2, 0.2)  # P(0..3 cones in a view)
MAX_CONES = len(COUNT_WEIGHTS) - 1
RENDER_SCALE = 0.25  # views are drawn at 400 x 225; the model sees them at its own input size anyway

KINDS = ("behavior", "status", "presence", "count", "nearest")
MC_KINDS = ("behavior", "status", "presence", "count")
# The DriveLM challenge's metric tags: 0 accuracy, 2 language, 3 match.
KIND_TAGS = {"behavior": [0], "status": [0], "presence": [0], "count": [0], "nearest": [2, 3]}
_GROUP = {"behavior": "behavior", "status": "perception", "presence": "perception", "count": "perception",
          "nearest": "perception"}
_LABEL = {c.name: c.label for c in CAMERAS}
# Pedestrians in orange vests look like cones at this resolution; the test bed dresses them otherwise.
_SHIRTS = tuple(s for s in SHIRT_COLORS if "orange" not in s[0])


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str
    camera: str | None = None  # the view a question is about
    point: tuple[float, float] | None = None  # the pixel the answer's tag names


@dataclass(frozen=True)
class Seen:
    """One object as a camera sees it (full-resolution pixels); training reads these as per-patch labels."""

    kind: str  # car, truck, pedestrian, cone
    bbox: tuple[float, float, float, float]
    depth: float
    slot: int = -1  # a cone's slot: range index * len(CONE_BEARINGS_DEG) + bearing index

    @property
    def point(self) -> tuple[float, float]:
        """The box centre: the pixel a DriveLM tag names."""
        return (self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2


CONE_SLOTS = len(CONE_RANGES_M) * len(CONE_BEARINGS_DEG)


def _seen(agent: Agent, view, camera: CameraModel) -> Seen:
    slot = -1
    if agent.kind == "cone":  # recover the slot from where the cone stands in the camera's view
        x = (view.bbox[0] + view.bbox[2]) / 2
        bearing = math.degrees(math.atan2(camera.k[0, 2] - x, camera.k[0, 0]))  # bearings count to the left
        b = min(range(len(CONE_BEARINGS_DEG)), key=lambda i: abs(bearing - CONE_BEARINGS_DEG[i]))
        r = min(range(len(CONE_RANGES_M)), key=lambda i: abs(view.depth - CONE_RANGES_M[i]))
        slot = r * len(CONE_BEARINGS_DEG) + b
    return Seen(agent.kind, view.bbox, view.depth, slot)


@dataclass
class TestbedScene:
    world: World
    scenario: str
    images: list[np.ndarray]  # RGB uint8, camera order
    qas: list[QA]
    cones: dict[str, int] = field(default_factory=dict)  # cones seen per camera
    drivelm_qas: list[QA] = field(default_factory=list)  # the sample set's DriveLM questions (the demo asks them)
    seen: dict[str, list[Seen]] = field(default_factory=dict)  # every road user and cone, per camera



def _choice_question(question: str, correct: str, options: list[str]) -> tuple[str, str]:
    """``question`` with ``options`` listed as A-D in the given (fixed) order; returns (Q, letter).

    The order is fixed per question kind (DriveLM shuffles it): the test bed measures what the views
    tell the model, and a small model learns a fixed answer sheet much faster than reading options.
    """
    listed = " ".join(f"{letter}. {option}" for letter, option in zip(D.LETTERS, options, strict=False))
    return f"{question} {D.MCQ_SUFFIX} {listed}", D.LETTERS[options.index(correct)]


def _cone(s: float, lateral: float) -> Agent:
    return Agent("cone", "movable_object.trafficcone", CONE_SIZE, CONE_BGR, "orange", s, lateral, role="cone")


def _overlaps(world: World, agent: Agent, t: float) -> bool:
    sa, la = agent.road_position(t)
    for other in world.agents:
        sb, lb = other.road_position(t)
        if abs(sa - sb) < (max(agent.size[:2]) + max(other.size[:2])) / 2 + 0.3 and \
                abs(la - lb) < (min(agent.size[:2]) + min(other.size[:2])) / 2 + 0.3:
            return True
    return False


def _hidden(world: World, view, rig: dict[str, CameraModel], t: float) -> bool:
    """Whether a nearer road user covers the cone's box centre in that camera."""
    cx, cy = (view.bbox[0] + view.bbox[2]) / 2, (view.bbox[1] + view.bbox[3]) / 2
    for other in world.agents:
        if other.kind == "cone":
            continue
        ov = project_agent(world, other, rig[view.camera], t)
        if ov is not None and ov.depth < view.depth + 1.0 and \
                ov.bbox[0] - 20 <= cx <= ov.bbox[2] + 20 and ov.bbox[1] - 20 <= cy <= ov.bbox[3] + 20:
            return True
    return False


def place_cones(world: World, rig: dict[str, CameraModel], rng: random.Random, t: float = 0.0) -> None:
    """Add 0-3 cones to each camera's view, on free, unoccluded slots seen by that camera only."""
    s_ego = world.ego_speed * t
    for cam in CAMERAS:
        model = rig[cam.name]
        want = rng.choices(range(MAX_CONES + 1), weights=COUNT_WEIGHTS)[0]
        axis = math.atan2(model.rotation[1, 2], model.rotation[0, 2])  # optical z in the ego frame
        slots = [(b, r) for b in CONE_BEARINGS_DEG for r in CONE_RANGES_M]
        rng.shuffle(slots)
        used_bearings: set[float] = set()
        placed = 0
        for bearing, rng_m in slots:
            if placed == want:
                break
            if bearing in used_bearings:  # two cones on one bearing would hide each other
                continue
            angle = axis + math.radians(bearing)
            x = model.translation[0] + rng_m * math.cos(angle)
            y = model.translation[1] + rng_m * math.sin(angle)
            cone = _cone(s_ego + x, world.ego_lane + y)
            if _overlaps(world, cone, t):
                continue
            views = [v for c in CAMERAS if (v := project_agent(world, cone, rig[c.name], t)) is not None]
            if len(views) != 1 or views[0].camera != cam.name or _hidden(world, views[0], rig, t):
                continue
            world.agents.append(cone)
            used_bearings.add(bearing)
            placed += 1


def _cone_views(world: World, rig: dict[str, CameraModel], t: float) -> dict[str, list]:
    out: dict[str, list] = {c.name: [] for c in CAMERAS}
    for agent in world.agents:
        if agent.kind != "cone":
            continue
        for cam in CAMERAS:
            view = project_agent(world, agent, rig[cam.name], t)
            if view is not None:
                out[cam.name].append(view)
    return out


def questions(world: World, rig: dict[str, CameraModel], t: float = 0.0) -> tuple[list[QA], dict[str, int]]:
    """Every test-bed question about the keyframe at ``t``, and the number of cones per camera."""
    qas: list[QA] = []
    correct = D._ego_behavior(world)
    distractors = [f"The ego vehicle is going straight. The ego vehicle is {speed}."
                   for speed in ("not moving", "driving slowly", "driving with normal speed", "driving fast")]
    q, a = _choice_question("Predict the behavior of the ego vehicle.", correct, distractors)
    qas.append(QA(q, a, "behavior"))

    kf = D.KeyframeInfo("", {c.name: t for c in CAMERAS}, {})
    vehicles = []
    for agent in world.agents:
        if agent.kind in ("car", "truck", "bus"):
            view = D._best_view(world, agent, rig, kf)
            if view is not None:
                vehicles.append((view.depth, agent, view))
    vehicles.sort(key=lambda item: item[0])
    for _, agent, view in vehicles[:2]:
        options = ["Going ahead.", "Stopped.", "Turn left.", "Turn right."]
        q, a = _choice_question(f"What is the moving status of object {D._tag(1, view)}?",
                                D._moving_status(agent), options)
        qas.append(QA(q, a, "status", view.camera))

    cone_views = _cone_views(world, rig, t)
    counts = {cam: len(views) for cam, views in cone_views.items()}
    for cam in CAMERAS:
        n, label = counts[cam.name], cam.label
        q, a = _choice_question(f"Is there a traffic cone in the {label}?", "Yes." if n else "No.",
                                ["Yes.", "No."])
        qas.append(QA(q, a, "presence", cam.name))
        q, a = _choice_question(f"How many traffic cones are in the {label}?", str(min(n, MAX_CONES)),
                                [str(i) for i in range(MAX_CONES + 1)])
        qas.append(QA(q, a, "count", cam.name))
        if n:
            nearest = min(cone_views[cam.name], key=lambda v: v.depth)
            qas.append(QA(f"Where is the nearest traffic cone in the {label}?",
                          f"The nearest traffic cone in the {label} is {D._tag(1, nearest)}.", "nearest", cam.name,
                          ((nearest.bbox[0] + nearest.bbox[2]) / 2, (nearest.bbox[1] + nearest.bbox[3]) / 2)))
    return qas, counts


def make_scene(rng: random.Random, rig: dict[str, CameraModel] | None = None,
               scale: float = RENDER_SCALE, draw: bool = True, with_drivelm: bool = True) -> TestbedScene:
    """One random test-bed keyframe: world, six RGB views drawn at ``scale`` (none if not ``draw``), questions."""
    rig = rig or make_rig()
    scenario = rng.choice(SCENARIOS)
    world = make_world(rng, scenario, (0.0, 0.0), rng.uniform(-math.pi, math.pi), rng.random() < 0.5, 1.0)
    # Only the buildings along the visible stretch: far ones cost most of the drawing time at this scale.
    world.buildings = [b for b in world.buildings if abs(b.center[:2] - world.road_to_global(0.0, 0.0)).max() < 90.0]
    for agent in world.agents:
        if agent.kind == "pedestrian" and "orange" in agent.color_name:
            agent.color_name, agent.color = rng.choice(_SHIRTS)
    place_cones(world, rig, rng)
    qas, counts = questions(world, rig)
    seen = {c.name: [_seen(a, v, rig[c.name]) for a in world.agents
                     if (v := project_agent(world, a, rig[c.name], 0.0)) is not None] for c in CAMERAS}
    drivelm_qas = []
    if with_drivelm:
        kf = D.KeyframeInfo("", {c.name: 0.0 for c in CAMERAS}, {c.name: "" for c in CAMERAS})
        groups = D.keyframe_entry(world, scenario, rig, kf, rng)["QA"]
        drivelm_qas = [QA(item["Q"], item["A"], "drivelm") for group in groups.values() for item in group]
    images = [cv2.cvtColor(render(world, rig[c.name], 0.0, scale), cv2.COLOR_BGR2RGB) for c in CAMERAS] if draw else []
    return TestbedScene(world, scenario, images, qas, counts, drivelm_qas, seen)


def write_drivelm_set(out: str | Path, scenes: int, seed: int, *, progress: bool = True) -> Path:
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
        scene = make_scene(rng, rig)
        scene_token, sample_token = f"testbed{seed}-scene{i:04d}", f"testbed{seed}-sample{i:04d}"
        paths = {}
        for cam, image in zip(CAMERAS, scene.images, strict=True):
            rel = f"samples/{cam.name}/{sample_token}__{cam.name}.png"
            cv2.imwrite(str(out / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            paths[cam.name] = rel
        qa: dict[str, list] = {"perception": [], "prediction": [], "planning": [], "behavior": []}
        for item in scene.qas:
            entry = D._qa(item.question, item.answer)
            entry["tag"] = KIND_TAGS[item.kind]
            entry["kind"] = item.kind
            qa[_GROUP[item.kind]].append(entry)
        data[scene_token] = {
            "scene_description": D.SCENE_DESCRIPTIONS[scene.scenario],
            "key_frames": {sample_token: {"key_object_infos": {}, "QA": qa, "image_paths": paths}},
        }
    path = out / "drivelm.json"
    path.write_text(json.dumps(data, indent=1))
    return path
