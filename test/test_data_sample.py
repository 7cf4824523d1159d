"""The synthetic nuScenes set: loads in nuscenes-devkit, has the rig's timing, and its DriveLM file is well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli

from prune2drive_ros.cameras import CAMERA_NAMES, CAMERAS
from prune2drive_ros.data.sample_nuscenes import make_sample_nuscenes
from prune2drive_ros.data.synthetic_world import quaternion_from_matrix, rot_z

SCENES, KEYFRAMES = 2, 3
FRAMES = (KEYFRAMES - 1) * 6 + 1
TAG = re.compile(r"<c(\d+),(CAM_[A-Z_]+),(\d+\.\d),(\d+\.\d)>")


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return make_sample_nuscenes(tmp_path_factory.mktemp("nuscenes"), scenes=SCENES, keyframes=KEYFRAMES, seed=3,
                                progress=False)


@pytest.fixture(scope="module")
def nusc(dataroot):
    from nuscenes.nuscenes import NuScenes

    return NuScenes("v1.0-mini", str(dataroot), verbose=False)


def _chain(nusc, scene: dict, channel: str) -> list[dict]:
    record = nusc.get("sample_data", nusc.get("sample", scene["first_sample_token"])["data"][channel])
    chain = [record]
    while record["next"]:
        record = nusc.get("sample_data", record["next"])
        chain.append(record)
    return chain


def test_devkit_loads_the_tables(nusc) -> None:
    assert len(nusc.scene) == SCENES
    assert len(nusc.sample) == SCENES * KEYFRAMES
    assert len(nusc.sample_data) == SCENES * FRAMES * len(CAMERAS)
    assert {s["channel"] for s in nusc.sensor} == set(CAMERA_NAMES)
    assert len(nusc.sample_annotation) > 0 and len(nusc.instance) > 0
    assert len({log["location"] for log in nusc.log}) == SCENES  # one log per scene, different places
    for scene in nusc.scene:
        samples = [nusc.get("sample", scene["first_sample_token"])]
        while samples[-1]["next"]:
            samples.append(nusc.get("sample", samples[-1]["next"]))
        assert len(samples) == scene["nbr_samples"] == KEYFRAMES
        assert samples[-1]["token"] == scene["last_sample_token"]
        assert all(set(s["data"]) == set(CAMERA_NAMES) for s in samples)
        # Keyframes every 0.5 s (2 Hz); nuScenes timestamps are microseconds.
        assert np.all(np.diff([s["timestamp"] for s in samples]) == 500_000)


def test_cameras_run_at_12hz_with_rig_offsets(nusc, dataroot: Path) -> None:
    for scene in nusc.scene:
        for cam in CAMERAS:
            chain = _chain(nusc, scene, cam.name)
            assert len(chain) == FRAMES
            stamps = np.array([sd["timestamp"] for sd in chain])
            assert np.all(np.abs(np.diff(stamps) - 1e6 / 12) < 2_000)
            assert [sd["is_key_frame"] for sd in chain] == [i % 6 == 0 for i in range(FRAMES)]
            for sd in chain:
                sample = nusc.get("sample", sd["sample_token"])
                assert sample["scene_token"] == scene["token"]
                folder = "samples" if sd["is_key_frame"] else "sweeps"
                assert sd["filename"].startswith(f"{folder}/{cam.name}/") and sd["filename"].endswith(".jpg")
                assert (dataroot / sd["filename"]).is_file()
                assert (sd["width"], sd["height"]) == (1600, 900)
                if sd["is_key_frame"]:
                    # A camera fires its rig offset after the LiDAR sweep that defines the sample.
                    assert abs(sd["timestamp"] - sample["timestamp"] - cam.fire_offset_ms * 1000) < 1_000
                else:  # sweeps point to the next keyframe in time
                    assert sample["timestamp"] > sd["timestamp"]
                    assert sample["timestamp"] - sd["timestamp"] < 500_000


def test_images_are_full_size_jpegs_and_calibration_is_realistic(nusc, dataroot: Path) -> None:
    sample = nusc.sample[0]
    for cam in CAMERAS:
        sd = nusc.get("sample_data", sample["data"][cam.name])
        data = (dataroot / sd["filename"]).read_bytes()
        assert data[:2] == b"\xff\xd8"
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (900, 1600, 3)
        assert image.std() > 20  # a drawn scene, not a blank frame
        k = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
        assert k.shape == (3, 3) and k[2, 2] == 1 and 700 < k[0, 0] < 1400 and 700 < k[0, 2] < 900
    # Every scene has its own calibrated_sensor records, as in nuScenes.
    assert len(nusc.calibrated_sensor) == SCENES * len(CAMERAS)


def test_objects_are_drawn_where_their_boxes_project() -> None:
    """Rendering with and without the road users differs exactly at the projected box centres."""
    import random

    from prune2drive_ros.data.synthetic_world import SCENARIOS, make_rig, make_world, project_agent, render

    rig = make_rig()
    checked = 0
    for i, scenario in enumerate(SCENARIOS):
        world = make_world(random.Random(i), scenario, (100.0, 100.0), 0.4 * i, i % 2 == 0, 1.0)
        for channel in ("CAM_FRONT", "CAM_BACK_LEFT"):
            full = render(world, rig[channel], 0.5)
            agents, world.agents = world.agents, []
            empty = render(world, rig[channel], 0.5)
            world.agents = agents
            for agent in agents:
                view = project_agent(world, agent, rig[channel], 0.5)
                if view is None or view.depth > 40:
                    continue
                u, v = (int(c) for c in view.center)
                assert np.abs(full[v, u].astype(int) - empty[v, u].astype(int)).max() > 0, (scenario, agent.role)
                checked += 1
    assert checked >= 6


def test_box_faces_point_outwards() -> None:
    """Back-face culling relies on it; inward faces would draw the inside of every car and building."""
    from prune2drive_ros.data.synthetic_world import FACES, Box3D

    box = Box3D(np.array([3.0, -2.0, 1.0]), 0.7, (1.9, 4.5, 1.5), (0, 0, 0))
    corners = box.corners()
    for idx, _ in FACES:
        face = corners[list(idx)]
        normal = np.cross(face[1] - face[0], face[2] - face[1])
        assert np.dot(normal, face.mean(axis=0) - box.center) > 0, idx


def test_devkit_boxes_match_the_drivelm_objects(nusc, dataroot: Path) -> None:
    """The tables (poses, calibration, annotations) and the images/questions describe the same world: each
    DriveLM key object's 2D box contains the devkit projection of one annotated 3D box in that camera."""
    from nuscenes.utils.geometry_utils import view_points

    data = json.loads((dataroot / "drivelm.json").read_text())
    matched = 0
    for scene in data.values():
        for sample_token, frame in scene["key_frames"].items():
            sample = nusc.get("sample", sample_token)
            for tag, info in frame["key_object_infos"].items():
                camera = TAG.fullmatch(tag).group(2)
                _, boxes, k = nusc.get_sample_data(sample["data"][camera])
                x1, y1, x2, y2 = info["2d_bbox"]
                centres = [view_points(b.center[:, None], k, normalize=True)[:2, 0] for b in boxes if b.center[2] > 1]
                assert any(x1 <= u <= x2 and y1 <= v <= y2 for u, v in centres), (tag, camera)
                matched += 1
    assert matched >= SCENES * KEYFRAMES


def test_drivelm_file_in_the_nested_release_format(nusc, dataroot: Path) -> None:
    data = json.loads((dataroot / "drivelm.json").read_text())
    assert set(data) == {s["token"] for s in nusc.scene}
    mcq = 0
    for scene_token, scene in data.items():
        assert isinstance(scene["scene_description"], str) and scene["scene_description"]
        samples = {s["token"] for s in nusc.sample if s["scene_token"] == scene_token}
        assert set(scene["key_frames"]) == samples
        for sample_token, frame in scene["key_frames"].items():
            assert set(frame) == {"key_object_infos", "QA", "image_paths"}
            assert set(frame["QA"]) == {"perception", "prediction", "planning", "behavior"}
            sample = nusc.get("sample", sample_token)
            for cam in CAMERA_NAMES:  # dataroot-relative, the keyframe's own image
                assert frame["image_paths"][cam] == nusc.get("sample_data", sample["data"][cam])["filename"]
            for tag, info in frame["key_object_infos"].items():
                match = TAG.fullmatch(tag)
                assert match, tag
                assert match.group(2) in CAMERA_NAMES
                x, y = float(match.group(3)), float(match.group(4))
                x1, y1, x2, y2 = info["2d_bbox"]
                assert x1 <= x <= x2 and y1 <= y <= y2 and 0 <= x < 1600 and 0 <= y < 900
                assert info["Category"] in {"Vehicle", "Traffic element"}
            for group in frame["QA"].values():
                for qa in group:
                    # DriveLM's fields, plus the challenge test file's metric tag and the test bed's kind.
                    assert set(qa) == {"Q", "A", "C", "con_up", "con_down", "cluster", "layer", "tag", "kind"}
                    assert qa["Q"] and qa["A"]
                    for tag in TAG.findall(qa["Q"] + qa["A"]):
                        assert f"<c{tag[0]},{tag[1]},{tag[2]},{tag[3]}>" in frame["key_object_infos"]
                    if "Please select the correct answer from the following options:" in qa["Q"]:
                        mcq += 1
                        assert qa["A"] in {"A", "B", "C", "D"}
                        assert f" {qa['A']}. " in qa["Q"]
            behavior = frame["QA"]["behavior"][0]
            assert behavior["Q"].startswith("Predict the behavior of the ego vehicle.")
    assert mcq >= 2 * SCENES * KEYFRAMES  # an object-status and a behavior question per keyframe


def test_questions_are_the_test_beds_and_hold_over_the_clip(dataroot: Path) -> None:
    """The sample asks the test bed's question kinds; a view's cone answers are the same at every keyframe
    (cones stay in one camera's view for the whole clip), so they hold on whichever frame the node answers."""
    from prune2drive_ros.data.testbed_scenes import KINDS

    data = json.loads((dataroot / "drivelm.json").read_text())
    cones = 0
    for scene in data.values():
        answers: dict[str, set[str]] = {}
        for frame in scene["key_frames"].values():
            qas = [qa for group in frame["QA"].values() for qa in group]
            assert {qa["kind"] for qa in qas} <= set(KINDS) and {"behavior", "presence", "count"} <= {
                qa["kind"] for qa in qas}
            for qa in qas:
                if qa["kind"] in ("presence", "count", "behavior"):
                    answers.setdefault(qa["Q"], set()).add(qa["A"])
            cones += sum("ABCD".index(qa["A"]) for qa in qas if qa["kind"] == "count")
        assert all(len(a) == 1 for a in answers.values()), answers
    assert cones >= 1


def test_evaluation_loader_reads_the_questions(dataroot: Path) -> None:
    drivelm = pytest.importorskip("prune2drive_ros.data.drivelm")
    questions = drivelm.load_drivelm(dataroot / "drivelm.json", dataroot, check_images=True)
    assert len(questions) == SCENES * KEYFRAMES and questions.num_questions > 0


def test_same_seed_same_data_and_quaternions(tmp_path: Path) -> None:
    a = make_sample_nuscenes(tmp_path / "a", scenes=1, keyframes=1, seed=7, progress=False)
    b = make_sample_nuscenes(tmp_path / "b", scenes=1, keyframes=1, seed=7, progress=False)
    for name in ("scene", "sample_data", "calibrated_sensor", "sample_annotation"):
        assert (a / "v1.0-mini" / f"{name}.json").read_text() == (b / "v1.0-mini" / f"{name}.json").read_text()
    assert (a / "drivelm.json").read_text() == (b / "drivelm.json").read_text()
    from pyquaternion import Quaternion

    for yaw in (0.3, 2.0, -2.8):
        m = rot_z(yaw) @ np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
        assert np.allclose(Quaternion(quaternion_from_matrix(m)).rotation_matrix, m)


def test_cli_writes_and_refuses_to_mix(tmp_path: Path) -> None:
    out = tmp_path / "set"
    done = run_cli("make-sample-nuscenes", str(out), "--scenes", "1", "--keyframes", "1")
    assert done.returncode == 0, done.stderr
    assert (out / "v1.0-mini" / "sample_data.json").is_file() and (out / "drivelm.json").is_file()
    again = run_cli("make-sample-nuscenes", str(out), "--scenes", "1", "--keyframes", "1")
    assert again.returncode == 1 and "--force" in again.stderr
    with pytest.raises(FileExistsError):
        make_sample_nuscenes(out, scenes=1, keyframes=2, progress=False)
    make_sample_nuscenes(out, scenes=1, keyframes=2, force=True, progress=False)
    assert len(json.loads((out / "v1.0-mini" / "sample.json").read_text())) == 2
    assert len(list((out / "samples" / "CAM_FRONT").iterdir())) == 2  # the old set's files are gone
