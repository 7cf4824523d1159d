"""DriveLM's file format and wording, for the questions the synthetic sets ask.

The questions themselves come from ``testbed_scenes`` (what the test-bed model was trained to answer);
this module holds what they share with DriveLM: the nested release format
``{scene_token: {"scene_description", "key_frames": {sample_token: {"key_object_infos", "QA", "image_paths"}}}}``
with QA groups perception / prediction / planning / behavior, the multiple-choice wording, and object
tags ``<c1,CAM_FRONT,x,y>`` (id, camera, centre of the object's 2D box in pixels).

``image_paths`` are relative to the nuScenes dataroot (``samples/CAM_FRONT/....jpg``), i.e. the
sample_data ``filename``; the public release instead writes them relative to its own folder
(``../nuscenes/samples/...``). Readers should resolve the part from ``samples/`` on against the dataroot.
"""

from __future__ import annotations

from dataclasses import dataclass

from prune2drive_ros.cameras import CAMERAS
from prune2drive_ros.data.synthetic_world import Agent, CameraModel, ObjectView, World, project_agent

MCQ_SUFFIX = "Please select the correct answer from the following options:"
LETTERS = "ABCD"

SCENE_DESCRIPTIONS = {
    "cruise": "The ego vehicle cruises along a straight four-lane urban road behind another car, with oncoming "
              "traffic, parked cars along the kerb and pedestrians on the sidewalks.",
    "crossing": "The ego vehicle is stopped in front of a zebra crossing while a pedestrian crosses the road; "
                "cars are parked along the kerb and oncoming traffic passes.",
    "slow_follow": "The ego vehicle follows a truck slowly on a straight urban road while a car overtakes in the "
                   "outer lane; pedestrians walk on the sidewalks.",
}


@dataclass(frozen=True)
class KeyframeInfo:
    """What the question builder needs about one keyframe of the synthetic set."""

    sample_token: str
    camera_times: dict[str, float]  # scene time (s) at which each camera exposed this keyframe
    filenames: dict[str, str]  # dataroot-relative JPEG path per camera


def object_tag(index: int, view: ObjectView) -> str:
    x = (view.bbox[0] + view.bbox[2]) / 2
    y = (view.bbox[1] + view.bbox[3]) / 2
    return f"<c{index},{view.camera},{x:.1f},{y:.1f}>"


def best_view(world: World, agent: Agent, rig: dict[str, CameraModel], kf: KeyframeInfo) -> ObjectView | None:
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


def moving_status(agent: Agent) -> str:
    return "Going ahead." if agent.moving else "Stopped."


def ego_behavior(world: World) -> str:
    if world.ego_speed < 0.3:
        speed = "The ego vehicle is not moving."
    elif world.ego_speed < 5.0:
        speed = "The ego vehicle is driving slowly."
    elif world.ego_speed < 10.0:
        speed = "The ego vehicle is driving with normal speed."
    else:
        speed = "The ego vehicle is driving fast."
    return f"The ego vehicle is going straight. {speed}"


def qa_record(question: str, answer: str) -> dict:
    # DriveLM keeps the graph fields (context, links to parent/child questions) on every QA; null here.
    return {"Q": question, "A": answer, "C": None, "con_up": None, "con_down": None, "cluster": None, "layer": None}
