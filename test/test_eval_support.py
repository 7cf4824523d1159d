"""Helpers for the eval tests (no tests here): a tiny synthetic DriveLM set in the real formats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prune2drive_ros.cameras import CAMERA_NAMES

SCENE = "a" * 31 + "1"
SAMPLES = ("b" * 31 + "1", "b" * 31 + "2", "b" * 31 + "3")


def _qa(k: int) -> dict:
    """Questions of keyframe k: every kind the scorer knows (match, language, multiple choice)."""
    return {
        # Listed out of order on purpose: numbering must follow perception, prediction, planning, behavior.
        "behavior": [
            {
                "Q": "Predict the behavior of the ego vehicle. Please select the correct answer from the following options: "
                "A. The ego vehicle is going straight. B. The ego vehicle is turning left. "
                "C. The ego vehicle is stopped. D. The ego vehicle is reversing.",
                "A": "ABCD"[k % 4],
            }
        ],
        "perception": [
            {
                "Q": "What are the important objects in the current scene?",
                "A": f"There is a white sedan <c1,CAM_FRONT,{800 + 10 * k}.5,500.0> "
                f"and a truck <c2,CAM_BACK,{300 + k}.0,420.0> nearby.",
                "C": None,
                "con_up": None,
                "con_down": None,
                "cluster": None,
                "layer": None,
            },
            {"Q": "What is the status of the sedan?", "A": f"The sedan number {k} is parked at the side of the road."},
        ],
        "planning": [
            {"Q": "What should the ego vehicle do next?", "A": f"Keep lane {k} and slow down for the crossing truck."}
        ],
        "prediction": [],
    }


def make_drivelm(
    root: Path, keyframes: int = 2, image_size: tuple[int, int] = (64, 48), with_images: bool = True
) -> tuple[Path, Path]:
    """Write ``root/nuscenes/samples/CAM_*/...jpg`` and ``root/drivelm/drivelm.json`` (release format).

    Paths are in the release's form ``../nuscenes/samples/...``; returns (drivelm file, nuScenes root).
    """
    import cv2
    import numpy as np

    dataroot = root / "nuscenes"
    frames = {}
    rng = np.random.default_rng(0)
    for k, sample in enumerate(SAMPLES[:keyframes]):
        paths = {}
        for cam in CAMERA_NAMES:
            rel = Path("samples") / cam / f"n015-{cam}-{k}.jpg"
            if with_images:
                (dataroot / rel).parent.mkdir(parents=True, exist_ok=True)
                image = rng.integers(0, 255, (image_size[1], image_size[0], 3), dtype=np.uint8)
                assert cv2.imwrite(str(dataroot / rel), image)
            paths[cam] = f"../nuscenes/{rel.as_posix()}"
        frames[sample] = {"key_object_infos": {}, "QA": _qa(k), "image_paths": paths}
    data = {SCENE: {"scene_description": "A busy street.", "key_frames": frames}}
    path = root / "drivelm" / "drivelm.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path, dataroot


GROUP_ORDER = ("perception", "prediction", "planning", "behavior")


def to_flat(nested: dict) -> list[dict]:
    """What the challenge's LLaVA converter makes of a release file."""
    out = []
    for scene, s in nested.items():
        for sample, f in s["key_frames"].items():
            images = [f["image_paths"][cam] for cam in f["image_paths"]]
            qas = [qa for g in GROUP_ORDER for qa in f["QA"].get(g, [])]
            for i, qa in enumerate(qas):
                out.append(
                    {
                        "id": f"{scene}_{sample}_{i}",
                        "image": images,
                        "conversations": [
                            {"from": "human", "value": "<image>\n" + qa["Q"]},
                            {"from": "gpt", "value": qa["A"]},
                        ],
                    }
                )
    return out


@dataclass
class FakeAnswer:
    text: str
    timings_ms: dict
    kept_per_view: list
    visual_tokens: int
    flops: float
    flops_dense: float
    prefix_reused: bool
    kept_indices: object = None


class FakeRunner:
    """Stands in for VLMRunner where the tests are about files and control flow, not the model.

    Answers depend on the images and the question, so a mixed-up keyframe shows. ``interrupt_after``
    raises KeyboardInterrupt on that call, as Ctrl-C would.
    """

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.calls = 0
        self.interrupt_after = interrupt_after

    def answer(self, images: list, questions: list[str]) -> list[FakeAnswer]:
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        assert len(images) == 6 and all(im.ndim == 3 and im.shape[2] == 3 for im in images)
        seed = sum(int(im[0, 0].sum()) for im in images)
        return [
            FakeAnswer(f"answer {seed} to {q[:20]}", {"vision": 10.0, "prefill": 4.0, "total": 8.0}, [72] * 6,
                       438, 13.0, 100.0, i > 0)
            for i, q in enumerate(questions)
        ]  # fmt: skip
