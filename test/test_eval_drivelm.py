"""DriveLM loading: both formats into one structure, path resolution, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval_support import SAMPLES, SCENE, make_drivelm, to_flat

from prune2drive_ros.cameras import CAMERA_NAMES
from prune2drive_ros.data.drivelm import load_drivelm, parse_question_id, resolve_image_path


@pytest.fixture
def nested(tmp_path) -> tuple[Path, Path]:
    return make_drivelm(tmp_path, keyframes=2)


def test_nested_ids_groups_and_cameras(nested):
    path, dataroot = nested
    ds = load_drivelm(path, dataroot, check_images=True)
    assert ds.fmt == "nested" and len(ds) == 2 and ds.num_questions == 8
    kf = ds.keyframes[0]
    assert (kf.scene_token, kf.sample_token) == (SCENE, SAMPLES[0])
    # Fixed group order, whatever the file's key order (behavior is listed first in the file).
    assert [q.group for q in kf.questions] == ["perception", "perception", "planning", "behavior"]
    assert [q.id for q in kf.questions] == [f"{SCENE}_{SAMPLES[0]}_{n}" for n in range(4)]
    assert kf.questions[3].answer == "A"
    # "../nuscenes/samples/CAM_X/..." resolves under the nuScenes root, in DriveMM camera order.
    assert kf.image_paths == tuple(dataroot / "samples" / cam / f"n015-{cam}-0.jpg" for cam in CAMERA_NAMES)


def test_flat_format_loads_the_same(nested, tmp_path):
    path, dataroot = nested
    flat = to_flat(json.loads(path.read_text()))
    # A flat file listing the views in another order still loads them in camera order.
    for entry in flat:
        entry["image"] = entry["image"][::-1]
    flat_path = tmp_path / "flat.json"
    flat_path.write_text(json.dumps(flat[::-1]))  # entries in any order
    a, b = load_drivelm(path, dataroot), load_drivelm(flat_path, dataroot, check_images=True)
    assert b.fmt == "flat"
    assert {kf.id for kf in a.keyframes} == {kf.id for kf in b.keyframes}
    by_id = {kf.id: kf for kf in b.keyframes}
    for kf in a.keyframes:
        other = by_id[kf.id]
        assert other.image_paths == kf.image_paths
        assert [(q.id, q.question, q.answer) for q in other.questions] == [
            (q.id, q.question, q.answer) for q in kf.questions
        ]


def test_path_resolution_rule(tmp_path):
    root = tmp_path / "nuscenes"
    assert resolve_image_path("../nuscenes/samples/CAM_FRONT/x.jpg", root) == root / "samples/CAM_FRONT/x.jpg"
    assert resolve_image_path("data/nuscenes/samples/CAM_FRONT/x.jpg", root) == root / "samples/CAM_FRONT/x.jpg"
    assert resolve_image_path("/abs/x.jpg", root) == Path("/abs/x.jpg")
    assert resolve_image_path("imgs/x.jpg", root) == root / "imgs/x.jpg"
    # A dataroot one level up (it holds nuscenes/): the whole path is used when only that exists.
    (tmp_path / "nuscenes/samples/CAM_FRONT").mkdir(parents=True)
    (tmp_path / "nuscenes/samples/CAM_FRONT/x.jpg").write_bytes(b"")
    assert (
        resolve_image_path("../nuscenes/samples/CAM_FRONT/x.jpg", tmp_path) == tmp_path / "nuscenes/samples/CAM_FRONT/x.jpg"
    )


def test_limit_counts_questions(nested):
    ds = load_drivelm(nested[0], nested[1])
    small = ds.limit(5)
    assert small.num_questions == 5 and len(small) == 2 and len(small.keyframes[1].questions) == 1
    assert ds.limit(None) is ds


def test_missing_image_is_named(tmp_path):
    path, dataroot = make_drivelm(tmp_path, keyframes=1, with_images=False)
    load_drivelm(path, dataroot)  # scoring needs no images
    with pytest.raises(FileNotFoundError, match=r"samples/CAM_FRONT/n015-CAM_FRONT-0\.jpg.*6 images missing"):
        load_drivelm(path, dataroot, check_images=True)


def _mutate(path: Path, fn) -> Path:
    data = json.loads(path.read_text())
    result = fn(data)  # in-place edit; a ("replace", value) result stands for the whole file
    if isinstance(result, tuple) and result[0] == "replace":
        data = result[1]
    path.write_text(json.dumps(data))
    return path


def _frame(d):
    return d[SCENE]["key_frames"][SAMPLES[0]]


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda d: ("replace", "text"), "expected a JSON object"),
        (lambda d: d[SCENE].pop("key_frames"), "has no 'key_frames'"),
        (lambda d: _frame(d)["image_paths"].pop("CAM_BACK_LEFT"), "lacks CAM_BACK_LEFT"),
        (lambda d: _frame(d)["QA"].update(weather=[]), r"unknown QA group\(s\) \['weather'\]"),
        (lambda d: _frame(d)["QA"]["planning"][0].pop("Q"), r"planning\[0\]: has no question text 'Q'"),
        (lambda d: _frame(d).pop("QA"), "has no 'QA' object"),
    ],
)
def test_malformed_nested(nested, mutation, message):
    path = _mutate(nested[0], mutation)
    with pytest.raises(ValueError, match=message):
        load_drivelm(path)


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda f: f[0].update(id="no-underscores"), "not of the form <scene_token>_<sample_token>_<n>"),
        (lambda f: f[0].update(image=f[0]["image"][:5]), "'image' must be a list of 6 paths"),
        (lambda f: f[1].update(id=f[0]["id"]), "duplicate question id"),
        (lambda f: f[0].update(conversations=[{"from": "gpt", "value": "x"}]), "a gpt turn without a question"),
        (lambda f: f[0].pop("conversations"), "has no 'conversations' list"),
    ],
)
def test_malformed_flat(nested, tmp_path, mutation, message):
    flat = to_flat(json.loads(nested[0].read_text()))
    mutation(flat)
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(flat))
    with pytest.raises(ValueError, match=message):
        load_drivelm(path)


def test_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_drivelm(path)


def test_question_only_file_and_id_parser(nested):
    path = _mutate(
        nested[0], lambda d: [qa.pop("A") for f in d[SCENE]["key_frames"].values() for g in f["QA"].values() for qa in g]
    )
    assert all(q.answer is None for q in load_drivelm(path).questions())
    assert parse_question_id(f"{SCENE}_{SAMPLES[0]}_12") == (SCENE, SAMPLES[0], 12)
