"""nuScenes -> rosbag2, read back with rosbags: every frame, rising stamps, untouched JPEGs, K, questions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, run_cli
from rosbags.highlevel import AnyReader

from prune2drive_ros.cameras import CAMERAS, QUESTION_TOPIC
from prune2drive_ros.data.nuscenes_to_bag import ConversionError, convert_nuscenes, load_drivelm_questions
from prune2drive_ros.data.sample_nuscenes import make_sample_nuscenes


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return make_sample_nuscenes(tmp_path_factory.mktemp("nuscenes"), scenes=2, keyframes=2, seed=1, progress=False)


@pytest.fixture(scope="module")
def nusc(dataroot):
    from nuscenes.nuscenes import NuScenes

    return NuScenes("v1.0-mini", str(dataroot), verbose=False)


def _read(bag: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(bag timestamp, message)] in bag order."""
    out: dict[str, list] = defaultdict(list)
    with AnyReader([bag]) as reader:
        for conn, timestamp, raw in reader.messages():
            out[conn.topic].append((timestamp, reader.deserialize(raw, conn.msgtype)))
    return out


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_holds_every_frame_untouched(storage: str, dataroot: Path, nusc, tmp_path: Path) -> None:
    bag = convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "bag", storage=storage,
                           drivelm=dataroot / "drivelm.json", progress=False)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == storage
    qos = meta["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"]
    # The default (version 8) keeps the QoS list as a YAML string: Humble's rosbag2 reads it as one.
    assert meta["version"] == 8 and isinstance(qos, str)
    qos = yaml.safe_load(qos)[0]
    assert qos["reliability"] == 1 and qos["history"] == 1  # rmw enums: reliable, keep_last

    topics = _read(bag)
    expected_topics = {c.compressed_topic for c in CAMERAS} | {c.info_topic for c in CAMERAS} | {QUESTION_TOPIC}
    assert set(topics) == expected_topics
    by_file = {sd["filename"]: sd for sd in nusc.sample_data}
    for cam in CAMERAS:
        records = sorted((sd for sd in nusc.sample_data if sd["channel"] == cam.name), key=lambda sd: sd["timestamp"])
        images, infos = topics[cam.compressed_topic], topics[cam.info_topic]
        assert len(images) == len(infos) == len(records) == 2 * 7  # two scenes, 7 frames each
        stamps = [_stamp_ns(m) for _, m in images]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # rising per topic
        # Header stamps are the camera's own (microsecond) timestamps; the first scene's bag time equals them.
        assert stamps == [sd["timestamp"] * 1000 for sd in records]
        assert images[0][0] == stamps[0]
        for (_, msg), sd in zip(images, records, strict=True):
            assert msg.header.frame_id == cam.frame_id and msg.format == "jpeg"
            assert msg.data.tobytes() == (dataroot / sd["filename"]).read_bytes()
            assert by_file[sd["filename"]]["channel"] == cam.name
        for (_, info), sd in zip(infos, records, strict=True):
            k = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
            assert np.allclose(info.k.reshape(3, 3), k) and np.allclose(info.p.reshape(3, 4)[:, :3], k)
            assert (info.width, info.height, info.header.frame_id) == (1600, 900, cam.frame_id)
            assert _stamp_ns(info) == sd["timestamp"] * 1000


def test_bag_version_9_on_request(dataroot: Path, tmp_path: Path) -> None:
    bag = tmp_path / "v9"
    result = run_cli("convert-nuscenes", "--dataroot", str(dataroot), "--out", str(bag), "--keyframes-only",
                     "--bag-version", "9")
    assert result.returncode == 0, result.stderr
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    qos = meta["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"]
    assert meta["version"] == 9 and isinstance(qos, list)  # Jazzy/Kilted layout
    assert qos[0]["reliability"] == "reliable" and qos[0]["history"] == "keep_last"
    assert len(_read(bag)[CAMERAS[0].compressed_topic]) == 2 * 2
    with pytest.raises(ConversionError, match="bag version"):
        convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "v7", bag_version=7, progress=False)


def test_questions_follow_their_keyframe(dataroot: Path, nusc, tmp_path: Path) -> None:
    bag = convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "bag", drivelm=dataroot / "drivelm.json",
                           progress=False)
    topics = _read(bag)
    drivelm = json.loads((dataroot / "drivelm.json").read_text())
    expected = load_drivelm_questions(dataroot / "drivelm.json")
    assert sum(len(v) for v in expected.values()) == len(topics[QUESTION_TOPIC]) > 0

    # Bag time of each keyframe's last image, and of the frame after it, from the bag itself.
    image_times = sorted(t for cam in CAMERAS for t, _ in topics[cam.compressed_topic])
    key_last = {}
    for cam in CAMERAS:
        for t, msg in topics[cam.compressed_topic]:
            sd = next(sd for sd in nusc.sample_data if sd["timestamp"] * 1000 == _stamp_ns(msg)
                      and sd["channel"] == cam.name)
            if sd["is_key_frame"]:
                key_last[sd["sample_token"]] = max(key_last.get(sd["sample_token"], 0), t)
    questions = topics[QUESTION_TOPIC]
    for sample_token, texts in expected.items():
        asked = [(t, m.data) for t, m in questions if m.data in texts and t > key_last[sample_token]
                 and t < key_last[sample_token] + 40_000_000]
        assert [text for _, text in asked] == texts
        later_images = [t for t in image_times if t > key_last[sample_token]]
        if later_images:  # asked before the next frame arrives
            assert max(t for t, _ in asked) < later_images[0]
    # Multiple-choice questions come through word for word.
    first_scene = next(iter(drivelm.values()))
    first_frame = next(iter(first_scene["key_frames"].values()))
    assert first_frame["QA"]["behavior"][0]["Q"] in {m.data for _, m in questions}


def test_scene_selection_keyframes_only_and_scene_gap(dataroot: Path, nusc, tmp_path: Path) -> None:
    names = [s["name"] for s in nusc.scene]
    one = _read(convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "one", scenes=[names[1]], keyframes_only=True,
                                 progress=False))
    assert set(one) == {c.compressed_topic for c in CAMERAS} | {c.info_topic for c in CAMERAS}
    assert all(len(one[c.compressed_topic]) == 2 for c in CAMERAS)
    with pytest.raises(ConversionError, match="scene-9999"):
        convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "bad", scenes=["scene-9999"], progress=False)
    assert not (tmp_path / "bad").exists()

    # Two scenes from logs a day apart: bag time puts them back to back, header stamps stay original.
    both = _read(convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "both", keyframes_only=True, progress=False))
    front = both["/CAM_FRONT/image_rect_compressed"]
    assert front[-1][0] - front[0][0] < 5e9
    assert _stamp_ns(front[-1][1]) - _stamp_ns(front[0][1]) > 3600e9
    kept = _read(convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "kept", keyframes_only=True, keep_gaps=True,
                                  progress=False))
    assert all(t == _stamp_ns(m) for t, m in kept["/CAM_FRONT/image_rect_compressed"])


def test_drivelm_file_problems_are_reported(dataroot: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"s": {"scene_description": "", "key_frames": {"not-a-sample": {
        "key_object_infos": {}, "QA": {"perception": [{"Q": "q", "A": "a"}]}, "image_paths": {}}}}}))
    with pytest.warns(UserWarning, match="no questions"):
        convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "bag", keyframes_only=True, drivelm=other, progress=False)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps([{"id": "x", "conversations": []}]))
    with pytest.raises(ConversionError, match="nested release format"):
        convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "bag2", drivelm=flat, progress=False)
    with pytest.raises(FileNotFoundError, match="DriveLM file"):
        convert_nuscenes(dataroot, "v1.0-mini", tmp_path / "bag3", drivelm=tmp_path / "none.json", progress=False)


def test_refuses_to_overwrite_unless_forced(dataroot: Path, tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    convert_nuscenes(dataroot, "v1.0-mini", bag, keyframes_only=True, progress=False)
    with pytest.raises(FileExistsError, match="--force"):
        convert_nuscenes(dataroot, "v1.0-mini", bag, keyframes_only=True, progress=False)
    convert_nuscenes(dataroot, "v1.0-mini", bag, force=True, storage="sqlite3", progress=False)
    assert list(bag.glob("*.db3")) and not list(bag.glob("*.mcap"))
    # --force never deletes a folder that is not a bag.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a rosbag2"):
        convert_nuscenes(dataroot, "v1.0-mini", precious, force=True, progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    root = make_sample_nuscenes(tmp_path / "set", scenes=1, keyframes=1, seed=2, progress=False)
    victim = next((root / "samples" / "CAM_BACK_LEFT").iterdir())
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        convert_nuscenes(root, "v1.0-mini", tmp_path / "bag", progress=False)
    assert not (tmp_path / "bag").exists()  # checked before anything is written


def test_cli_convert_errors_and_success(dataroot: Path, tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    done = run_cli("convert-nuscenes", "--dataroot", str(dataroot), "--version", "v1.0-mini", "--out", str(bag),
                   "--keyframes-only", "--storage", "sqlite3", "--drivelm", str(dataroot / "drivelm.json"))
    assert done.returncode == 0, done.stderr
    assert "writing bag" in done.stderr  # the progress bar
    assert (bag / "metadata.yaml").is_file()
    again = run_cli("convert-nuscenes", "--dataroot", str(dataroot), "--out", str(bag))
    assert again.returncode == 1 and "exists" in again.stderr and "--force" in again.stderr
    with pytest.raises(FileNotFoundError, match=r"v1\.0-mini"):
        convert_nuscenes(tmp_path, "v1.0-mini", tmp_path / "x", progress=False)


def test_sample_and_convert_stay_ros_free(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path;"
        "from prune2drive_ros.data.sample_nuscenes import make_sample_nuscenes;"
        "from prune2drive_ros.data.nuscenes_to_bag import convert_nuscenes;"
        f"root = make_sample_nuscenes(Path({str(tmp_path / 'set')!r}), 1, 1, progress=False);"
        f"convert_nuscenes(root, 'v1.0-mini', Path({str(tmp_path / 'bag')!r}), drivelm=root / 'drivelm.json',"
        " progress=False);"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosidl_runtime_py')]; print(bad);"
        "sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    shutil.rmtree(tmp_path / "set")
