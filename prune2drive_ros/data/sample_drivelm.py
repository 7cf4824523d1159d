"""DriveLM questions for the synthetic nuScenes set, in the nested release format.

The answers come from the synthetic world itself (which objects are where, who moves, what the ego does),
so they are correct for the drawn images. The file layout follows the DriveLM-nuScenes release:
``{scene_token: {"scene_description", "key_frames": {sample_token: {"key_object_infos", "QA", "image_paths"}}}}``
with QA groups perception / prediction / planning / behavior. Objects are tagged ``<c1,CAM_FRONT,x,y>``
(id, camera, centre of the object's 2D box in pixels).

``image_paths`` are relative to the nuScenes dataroot (``samples/CAM_FRONT/....jpg``), i.e. the
sample_data ``filename``; the public release instead writes them relative to its own folder
(``../nuscenes/samples/...``). Readers should resolve the part from ``samples/`` on against the dataroot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from prune2drive_ros.cameras import CAMERAS
from prune2drive_ros.data.synthetic_world import LANE_WIDTH, Agent, CameraModel, ObjectView, World, project_agent

MCQ_SUFFIX = "Please select the correct answer from the following options:"
LETTERS = "ABCD"

# Lower sorts first: what a driver attends to before anything else.
_ROLE_PRIORITY = {"lead": 0, "crossing": 0, "waiting": 1, "overtaking": 1, "adjacent": 2, "oncoming": 3,
                  "sidewalk": 4, "parked": 5, "behind": 6}
_DIRECTION = {c.name: c.label.removesuffix(" view") for c in CAMERAS}

SCENE_DESCRIPTIONS = {
    "cruise": "The ego vehicle cruises along a straight four-lane urban road behind another car, with oncoming "
              "traffic, parked cars along the kerb and pedestrians on the sidewalks.",
    "crossing": "The ego vehicle is stopped in front of a zebra crossing while a pedestrian crosses the road; "
                "cars are parked along the kerb and oncoming traffic passes.",
    "slow_follow": "The ego vehicle follows a truck slowly on a straight urban road while a car overtakes in the "
                   "outer lane; pedestrians walk on the sidewalks.",
}
SAFE_ACTIONS = {
    "cruise": "Keep going at the same speed, keep a safe distance from the car ahead, stay in the current lane.",
    "crossing": "Remain stopped, wait for the pedestrian to finish crossing, then accelerate gently.",
    "slow_follow": "Keep following the truck at a low speed, keep a safe distance, do not change lanes while a car "
                   "is overtaking.",
}


@dataclass(frozen=True)
class KeyframeInfo:
    """What the question builder needs about one keyframe of the synthetic set."""

    sample_token: str
    camera_times: dict[str, float]  # scene time (s) at which each camera exposed this keyframe
    filenames: dict[str, str]  # dataroot-relative JPEG path per camera


def _tag(index: int, view: ObjectView) -> str:
    x = (view.bbox[0] + view.bbox[2]) / 2
    y = (view.bbox[1] + view.bbox[3]) / 2
    return f"<c{index},{view.camera},{x:.1f},{y:.1f}>"


def _best_view(world: World, agent: Agent, rig: dict[str, CameraModel], kf: KeyframeInfo) -> ObjectView | None:
    """The camera that sees the agent largest; objects further than 45 m are not key objects."""
    best = None
    for cam in CAMERAS:
        view = project_agent(world, agent, rig[cam.name], kf.camera_times[cam.name])
        if view is None or view.depth > 45.0:
            continue
        area = (view.bbox[2] - view.bbox[0]) * (view.bbox[3] - view.bbox[1])
        if area < 200.0:
            continue
        if best is None or area > best[0]:
            best = (area, view)
    return None if best is None else best[1]


def _moving_status(agent: Agent) -> str:
    return "Going ahead." if agent.moving else "Stopped."


def _observed_status(agent: Agent) -> str:
    if agent.kind == "pedestrian":
        return "Walking." if agent.moving else "Standing."
    if agent.moving:
        return "Moving."
    return "Parked." if agent.role == "parked" else "Stopped."


def _future_state(agent: Agent) -> str:
    if agent.role == "crossing":
        return "Keep crossing the road."
    return "Keep going straight." if agent.moving else "Stationary."


def _in_ego_path(world: World, agent: Agent, t: float) -> bool:
    s, lateral = agent.road_position(t)
    if agent.role == "crossing":
        return True
    return s > world.ego_speed * t and abs(lateral - world.ego_lane) < LANE_WIDTH / 2


def _ego_behavior(world: World) -> str:
    if world.ego_speed < 0.3:
        speed = "The ego vehicle is not moving."
    elif world.ego_speed < 5.0:
        speed = "The ego vehicle is driving slowly."
    elif world.ego_speed < 10.0:
        speed = "The ego vehicle is driving with normal speed."
    else:
        speed = "The ego vehicle is driving fast."
    return f"The ego vehicle is going straight. {speed}"


def _mcq(rng: random.Random, question: str, correct: str, distractors: list[str]) -> tuple[str, str]:
    options = [correct, *rng.sample([d for d in distractors if d != correct], 3)]
    rng.shuffle(options)
    listed = " ".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=True))
    return f"{question} {MCQ_SUFFIX} {listed}", LETTERS[options.index(correct)]


def _qa(question: str, answer: str) -> dict:
    # DriveLM keeps the graph fields (context, links to parent/child questions) on every QA; null here.
    return {"Q": question, "A": answer, "C": None, "con_up": None, "con_down": None, "cluster": None, "layer": None}


def keyframe_entry(world: World, scenario: str, rig: dict[str, CameraModel], kf: KeyframeInfo,
                   rng: random.Random) -> dict:
    """One ``key_frames[sample_token]`` entry: key objects, QA groups and image paths."""
    t = kf.camera_times["CAM_FRONT"]
    candidates = []
    for agent in world.agents:
        view = _best_view(world, agent, rig, kf)
        if view is not None:
            candidates.append((_ROLE_PRIORITY.get(agent.role, 9), view.depth, agent, view))
    candidates.sort(key=lambda item: (item[0], item[1]))
    key = [(agent, view, _tag(i + 1, view)) for i, (_, _, agent, view) in enumerate(candidates[:3])]

    infos = {
        tag: {
            "Category": "Pedestrian" if agent.kind == "pedestrian" else "Vehicle",
            "Status": ("Moving" if agent.moving else "Stationary") if agent.kind != "pedestrian" else None,
            "Visual_description": agent.describe().capitalize() + ".",
            "2d_bbox": [round(v, 1) for v in view.bbox],
        }
        for agent, view, tag in key
    }

    perception, prediction, planning = [], [], []
    if key:
        parts = [f"a {agent.describe()} to the {_DIRECTION[view.camera]} of the ego vehicle" for agent, view, _ in key]
        listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f", and {parts[-1]}"
        tags = [tag for _, _, tag in key]
        ids = tags[0] if len(tags) == 1 else ", ".join(tags[:-1]) + f" and {tags[-1]}"
        perception.append(_qa(
            "What are the important objects in the current scene? Those objects will be considered for the future "
            "reasoning and driving decision.",
            f"There is {listing}. The IDs of these objects are {ids}.",
        ))
        first, _, first_tag = key[0]
        q, a = _mcq(rng, f"What is the moving status of object {first_tag}?", _moving_status(first),
                    ["Going ahead.", "Stopped.", "Turn left.", "Turn right.", "Back up."])
        perception.append(_qa(q, a))
        for agent, _, tag in key[1:]:
            perception.append(_qa(f"What is the observed status of object {tag}?", _observed_status(agent)))
        for agent, _, tag in key:
            prediction.append(_qa(f"Is {tag} a traffic sign or a road barrier?", "No."))
            prediction.append(_qa(f"What is the future state of {tag}?", _future_state(agent)))
            prediction.append(_qa(f"Would {tag} be in the moving direction of the ego vehicle?",
                                  "Yes." if _in_ego_path(world, agent, t) else "No."))
        planning.append(_qa(f"What actions could the ego vehicle take based on {first_tag}? Why take this action and "
                            "what's the probability?", _action_for(world, first)))
        planning.append(_qa("What is the priority of the objects that the ego vehicle should consider?(in descending "
                            "order)", ", ".join(tags) + "."))
    planning.append(_qa("In this scenario, what are safe actions to take for the ego vehicle?", SAFE_ACTIONS[scenario]))

    correct = _ego_behavior(world)
    distractors = [f"The ego vehicle is {turn}. The ego vehicle is {speed}."
                   for turn in ("going straight", "slightly steering to the left", "steering to the right")
                   for speed in ("not moving", "driving slowly", "driving with normal speed", "driving fast")]
    q, a = _mcq(rng, "Predict the behavior of the ego vehicle.", correct, distractors)
    behavior = [_qa(q, a)]

    return {
        "key_object_infos": infos,
        "QA": {"perception": perception, "prediction": prediction, "planning": planning, "behavior": behavior},
        "image_paths": {cam.name: kf.filenames[cam.name] for cam in CAMERAS},
    }


def _action_for(world: World, agent: Agent) -> str:
    if agent.role == "crossing":
        return ("The action is to remain stopped. The reason is to yield to the pedestrian on the crossing, "
                "which has a high probability.")
    if agent.role == "lead" and world.ego_speed > 0.3:
        return ("The action is to keep a safe following distance. The reason is to avoid a collision with the "
                "vehicle ahead, which has a high probability.")
    return ("The action is to keep going at the same speed. The reason is that there is no safety issue, "
            "which has a high probability.")


def scene_entry(world: World, scenario: str, rig: dict[str, CameraModel], keyframes: list[KeyframeInfo],
                rng: random.Random) -> dict:
    """One top-level ``{scene_token: ...}`` value."""
    return {
        "scene_description": SCENE_DESCRIPTIONS[scenario],
        "key_frames": {kf.sample_token: keyframe_entry(world, scenario, rig, kf, rng) for kf in keyframes},
    }
