"""DriveLM question files: the nested release format and the flat LLaVA-style list, normalized.

Both formats load into one structure, :class:`DriveLMSet`: a list of keyframes, each with the six
camera images in DriveMM order (``prune2drive_ros.cameras``) and its questions.

Question ids follow the DriveLM challenge: ``<scene_token>_<sample_token>_<n>``, where ``n`` is the
question's index within its keyframe after concatenating the groups in the order perception,
prediction, planning, behavior (what the challenge's converter and evaluator do). Flat files carry
the id already; it is parsed, not recomputed.

Image paths are resolved against ``dataroot``, the nuScenes root (the folder that holds
``samples/``). The release writes paths relative to its own ``data/`` folder
(``../nuscenes/samples/CAM_FRONT/x.jpg``) and the challenge's LLaVA conversion as
``data/nuscenes/samples/...``. The rule (:func:`resolve_image_path`):

1. an absolute path is used as is;
2. a relative path loses its leading ``./`` and ``../`` parts; if it contains a ``samples`` or
   ``sweeps`` folder, the part from that folder on is joined to ``dataroot``
   (``dataroot/samples/CAM_FRONT/x.jpg``), unless only the whole stripped path exists under
   ``dataroot`` (``dataroot/nuscenes/samples/...``, a dataroot one level up);
3. any other relative path is joined to ``dataroot`` as it is.

Without a dataroot, paths resolve against the DriveLM file's folder. Missing images are an error at
load when ``check_images=True`` (the evaluation does this before it starts, so a long run does not
die halfway); :func:`load_drivelm` with the default leaves them unchecked, because scoring a
submission needs no images.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prune2drive_ros.cameras import CAMERA_NAMES, NUM_CAMERAS

GROUPS: tuple[str, ...] = ("perception", "prediction", "planning", "behavior")
"""QA groups of the release format, in the order that numbers the questions."""

_ANCHORS = ("samples", "sweeps")


@dataclass(frozen=True)
class Question:
    id: str
    """``<scene_token>_<sample_token>_<n>``."""
    question: str
    """The question text as the file has it (without LLaVA's ``<image>`` marker)."""
    answer: str | None
    """Ground truth; None where the file has none (the challenge's question-only test files)."""
    group: str = ""
    """perception | prediction | planning | behavior; empty for flat files, which do not say."""
    tags: tuple[int, ...] | None = None
    """The challenge's metric tags when the file carries them (0 accuracy, 1 GPT, 2 language, 3 match)."""


@dataclass(frozen=True)
class KeyFrame:
    scene_token: str
    sample_token: str
    image_paths: tuple[Path, ...]
    """Six paths in DriveMM camera order (``CAMERA_NAMES``)."""
    questions: tuple[Question, ...]
    scene_description: str = ""

    @property
    def id(self) -> str:
        return f"{self.scene_token}_{self.sample_token}"


@dataclass(frozen=True)
class DriveLMSet:
    keyframes: tuple[KeyFrame, ...]
    source: Path
    fmt: str
    """``nested`` (release) or ``flat`` (LLaVA-style list)."""

    def __len__(self) -> int:
        return len(self.keyframes)

    @property
    def num_questions(self) -> int:
        return sum(len(kf.questions) for kf in self.keyframes)

    def questions(self) -> Iterator[Question]:
        for kf in self.keyframes:
            yield from kf.questions

    def limit(self, num_questions: int | None) -> DriveLMSet:
        """The first ``num_questions`` questions in file order (the last keyframe may lose some)."""
        if num_questions is None or num_questions >= self.num_questions:
            return self
        if num_questions < 0:
            raise ValueError(f"limit must be >= 0, got {num_questions}")
        kept: list[KeyFrame] = []
        left = num_questions
        for kf in self.keyframes:
            if left <= 0:
                break
            kept.append(kf if len(kf.questions) <= left else replace(kf, questions=kf.questions[:left]))
            left -= len(kept[-1].questions)
        return replace(self, keyframes=tuple(kept))

    def check_images(self) -> None:
        """Raise FileNotFoundError naming the first missing image (and how many are missing)."""
        missing = [p for kf in self.keyframes for p in kf.image_paths if not p.is_file()]
        if missing:
            more = f" ({len(missing)} images missing in all)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"DriveLM image not found: {missing[0]}{more}; check --dataroot")


def parse_question_id(qid: str) -> tuple[str, str, int]:
    """Split ``<scene_token>_<sample_token>_<n>``; nuScenes tokens contain no underscore."""
    parts = qid.rsplit("_", 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
        raise ValueError(f"question id {qid!r} is not of the form <scene_token>_<sample_token>_<n>")
    return parts[0], parts[1], int(parts[2])


def resolve_image_path(raw: str, dataroot: Path) -> Path:
    """Resolve one image path from a DriveLM file against the nuScenes root (rule in the module doc)."""
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    parts = list(path.parts)
    while parts and parts[0] in (".", ".."):
        parts.pop(0)
    if not parts:
        raise ValueError(f"image path {raw!r} names no file")
    direct = dataroot.joinpath(*parts)
    for i, part in enumerate(parts):
        if part in _ANCHORS:
            anchored = dataroot.joinpath(*parts[i:])
            if not anchored.exists() and direct.exists():
                return direct
            return anchored
    return direct


def load_drivelm(path: str | Path, dataroot: str | Path | None = None, check_images: bool = False) -> DriveLMSet:
    """Load a DriveLM file in either format; ValueError names what is malformed."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    root = Path(dataroot) if dataroot is not None else path.resolve().parent
    if isinstance(data, dict):
        dataset = DriveLMSet(_load_nested(data, root, path), path, "nested")
    elif isinstance(data, list):
        dataset = DriveLMSet(_load_flat(data, root, path), path, "flat")
    else:
        raise ValueError(
            f"{path}: expected a JSON object (nested release format) or a list (flat LLaVA-style format), "
            f"got {type(data).__name__}"
        )
    if check_images:
        dataset.check_images()
    return dataset


def _require(cond: bool, path: Path, where: str, what: str) -> None:
    if not cond:
        raise ValueError(f"{path}: {where}: {what}")


def _load_nested(data: Mapping[str, Any], root: Path, path: Path) -> tuple[KeyFrame, ...]:
    keyframes: list[KeyFrame] = []
    for scene_token, scene in data.items():
        where = f"scene {scene_token}"
        _require(isinstance(scene, dict), path, where, "is not an object")
        _require(isinstance(scene.get("key_frames"), dict), path, where, "has no 'key_frames' object")
        for sample_token, frame in scene["key_frames"].items():
            where = f"scene {scene_token}, key frame {sample_token}"
            _require(isinstance(frame, dict), path, where, "is not an object")
            images = frame.get("image_paths")
            _require(isinstance(images, dict), path, where, "has no 'image_paths' object")
            absent = [cam for cam in CAMERA_NAMES if not isinstance(images.get(cam), str)]
            _require(not absent, path, where, f"'image_paths' lacks {', '.join(absent)}")
            qa = frame.get("QA")
            _require(isinstance(qa, dict), path, where, "has no 'QA' object")
            unknown = sorted(set(qa) - set(GROUPS))
            _require(not unknown, path, where, f"unknown QA group(s) {unknown}; expected {', '.join(GROUPS)}")
            questions: list[Question] = []
            for group in GROUPS:
                items = qa.get(group, [])
                _require(isinstance(items, list), path, where, f"QA group {group!r} is not a list")
                for j, item in enumerate(items):
                    questions.append(_nested_question(item, scene_token, sample_token, len(questions), group, j, path))
            keyframes.append(
                KeyFrame(
                    scene_token=scene_token,
                    sample_token=sample_token,
                    image_paths=tuple(resolve_image_path(images[cam], root) for cam in CAMERA_NAMES),
                    questions=tuple(questions),
                    scene_description=str(scene.get("scene_description", "")),
                )
            )
    return tuple(keyframes)


def _nested_question(item: Any, scene: str, sample: str, n: int, group: str, j: int, path: Path) -> Question:
    where = f"scene {scene}, key frame {sample}, {group}[{j}]"
    _require(isinstance(item, dict), path, where, "is not an object")
    _require(isinstance(item.get("Q"), str), path, where, "has no question text 'Q'")
    answer = item.get("A")
    _require(answer is None or isinstance(answer, str), path, where, "answer 'A' is not a string")
    return Question(
        id=f"{scene}_{sample}_{n}",
        question=item["Q"],
        answer=answer,
        group=group,
        tags=_tags(item.get("tag"), path, where),
    )


def _tags(raw: Any, path: Path, where: str) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, int):
        raw = [raw]
    _require(isinstance(raw, list) and all(isinstance(t, int) for t in raw), path, where, "'tag' is not a list of ints")
    return tuple(raw)


def _strip_image_marker(text: str) -> str:
    # LLaVA puts "<image>\n" before the question; the challenge's question text has no marker.
    return text.replace("<image>\n", "").replace("<image>", "").strip()


def _load_flat(data: Sequence[Any], root: Path, path: Path) -> tuple[KeyFrame, ...]:
    frames: dict[tuple[str, str], dict[str, Any]] = {}
    seen: set[str] = set()
    for i, entry in enumerate(data):
        where = f"entry {i}"
        _require(isinstance(entry, dict), path, where, "is not an object")
        qid = entry.get("id")
        _require(isinstance(qid, str), path, where, "has no string 'id'")
        where = f"entry {i} ({qid})"
        try:
            scene, sample, n = parse_question_id(qid)
        except ValueError as exc:
            raise ValueError(f"{path}: {where}: {exc}") from None
        images = entry.get("image")
        _require(
            isinstance(images, list) and len(images) == NUM_CAMERAS and all(isinstance(p, str) for p in images),
            path,
            where,
            f"'image' must be a list of {NUM_CAMERAS} paths",
        )
        turns = entry.get("conversations")
        _require(isinstance(turns, list) and turns, path, where, "has no 'conversations' list")
        for k, (question, answer) in enumerate(_pairs(turns, path, where)):
            full_id = qid if k == 0 else f"{scene}_{sample}_{n + k}"
            _require(full_id not in seen, path, where, f"duplicate question id {full_id}")
            seen.add(full_id)
            frame = frames.setdefault((scene, sample), {"images": _camera_order(images), "questions": []})
            _require(
                frame["images"] == _camera_order(images),
                path,
                where,
                f"images differ from earlier entries of {scene}_{sample}",
            )
            frame["questions"].append((n + k, Question(full_id, question, answer)))
    keyframes = []
    for (scene, sample), frame in frames.items():
        questions = tuple(q for _, q in sorted(frame["questions"], key=lambda nq: nq[0]))
        paths = tuple(resolve_image_path(p, root) for p in frame["images"])
        keyframes.append(KeyFrame(scene, sample, paths, questions))
    return tuple(keyframes)


def _pairs(turns: list[Any], path: Path, where: str) -> Iterator[tuple[str, str | None]]:
    """(question, answer) pairs from human/gpt turns; a trailing question may have no answer."""
    question: str | None = None
    for t, turn in enumerate(turns):
        _require(
            isinstance(turn, dict) and turn.get("from") in ("human", "gpt") and isinstance(turn.get("value"), str),
            path,
            where,
            f"conversations[{t}] must be {{'from': 'human'|'gpt', 'value': str}}",
        )
        if turn["from"] == "human":
            _require(question is None, path, where, f"conversations[{t}]: two human turns in a row")
            question = _strip_image_marker(turn["value"])
        else:
            _require(question is not None, path, where, f"conversations[{t}]: a gpt turn without a question")
            yield question, turn["value"]
            question = None
    if question is not None:
        yield question, None


def _camera_order(images: list[str]) -> tuple[str, ...]:
    """Put six paths in DriveMM order when each names its camera folder; else trust the list's order.

    The challenge's converter lists ``image_paths`` in the release's key order, which is DriveMM's;
    reordering by folder name makes a file written in another order load correctly too.
    """
    by_camera: dict[str, str] = {}
    for p in images:
        cams = [part for part in Path(p).parts if part in CAMERA_NAMES]
        if len(cams) != 1 or cams[0] in by_camera:
            return tuple(images)
        by_camera[cams[0]] = p
    return tuple(by_camera[cam] for cam in CAMERA_NAMES)
