"""What the node says about each question, as typed records, each serialized once (no ROS).

- ``AnsweredRecord``: one per answered question, on ``/vlm/answer_info`` (JSON) and ``/diagnostics``;
- ``DroppedRecord``: one per question that will not be answered, with the reason (overflow, no camera
  set, cancelled, stale, shutdown, ...);
- ``StreamRecord``: the partial answer of a question being decoded, on ``/vlm/answer_stream``.

``json()`` is what the topics carry; ``diagnostic_values()`` the key/values of the ``/diagnostics``
status. Both read the typed fields, so nothing is formatted to text and parsed back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

ANSWERED, DROPPED = "answered", "dropped"

TIMING_KEYS = ("sync_wait", "image_decode", "preprocess", "vision", "prune", "prefill", "question", "decode",
               "total")
"""Per-answer stages in pipeline order; the runner times the middle seven ("prefill": the visual prefix,
"question": the question prefill and first token)."""
RUNNER_STAGES = ("preprocess", "vision", "prune", "prefill", "question", "decode", "total")
ANSWER_KEYS = ("question", "frame_stamp", *(f"{k}_ms" for k in TIMING_KEYS), "visual_tokens", "kept_tokens",
               "kept_per_view", "flops_ratio", "vision_backend", "device")
"""Keys every answer's /diagnostics status carries (among others)."""


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class AnsweredRecord:
    id: int
    question: str
    source: str
    answer: str
    frame_stamp_ns: int
    timings_ms: dict[str, float]
    """Every stage of ``TIMING_KEYS`` plus ``question_wait`` (arrival to the start of its inference)."""
    batch_size: int
    prefix_reused: bool
    visual_tokens: int
    kept_per_view: list[int]
    flops_ratio: float
    tokens: int
    """Tokens generated."""
    set_spread_ms: float
    set_age_ms: float
    """From the set's completion to the start of its inference."""
    pruning_method: str
    vision_backend: str
    vision_backend_reason: str
    device: str
    runtime_path: str

    @property
    def frame_stamp(self) -> float:
        return self.frame_stamp_ns / 1e9

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": ANSWERED, "question": self.question, "source": self.source,
                "answer": self.answer, "frame_stamp": self.frame_stamp, "frame_stamp_ns": self.frame_stamp_ns,
                "timings_ms": dict(self.timings_ms), "batch_size": self.batch_size,
                "prefix_reused": self.prefix_reused, "visual_tokens": self.visual_tokens,
                "kept_per_view": list(self.kept_per_view), "flops_ratio": self.flops_ratio, "tokens": self.tokens,
                "set_spread_ms": self.set_spread_ms, "set_age_ms": self.set_age_ms,
                "pruning_method": self.pruning_method, "vision_backend": self.vision_backend,
                "vision_backend_reason": self.vision_backend_reason, "device": self.device,
                "runtime_path": self.runtime_path}

    @cached_property
    def json(self) -> str:
        return _dump(self.as_dict())

    def diagnostic_values(self) -> list[tuple[str, str]]:
        values = [("question", self.question), ("frame_stamp", f"{self.frame_stamp:.9f}")]
        values += [(f"{key}_ms", f"{self.timings_ms.get(key, 0.0):.2f}") for key in TIMING_KEYS]
        values += [
            ("visual_tokens", str(self.visual_tokens)),
            ("kept_tokens", str(sum(self.kept_per_view))),
            ("kept_per_view", ",".join(map(str, self.kept_per_view))),
            ("flops_ratio", f"{self.flops_ratio:.4f}"),
            ("vision_backend", self.vision_backend),
            ("device", self.device),
            ("question_id", str(self.id)),
            ("source", self.source),
            ("question_wait_ms", f"{self.timings_ms.get('question_wait', 0.0):.1f}"),
            ("set_spread_ms", f"{self.set_spread_ms:.1f}"),
            ("set_age_ms", f"{self.set_age_ms:.1f}"),
            ("batch_size", str(self.batch_size)),
            ("prefix_reused", str(self.prefix_reused)),
            ("tokens", str(self.tokens)),
            ("pruning_method", self.pruning_method),
            ("vision_backend_reason", self.vision_backend_reason),
            ("runtime_path", self.runtime_path),
        ]
        return values


@dataclass(frozen=True)
class DroppedRecord:
    id: int
    question: str
    source: str
    reason: str
    detail: str
    partial: str | None = None
    """For a question stopped while it was decoded: the answer so far."""

    def as_dict(self) -> dict[str, Any]:
        record = {"id": self.id, "status": DROPPED, "question": self.question, "source": self.source,
                  "reason": self.reason, "detail": self.detail}
        if self.partial is not None:
            record["partial"] = self.partial
        return record

    @cached_property
    def json(self) -> str:
        return _dump(self.as_dict())

    def diagnostic_values(self) -> list[tuple[str, str]]:
        return [("question", self.question), ("question_id", str(self.id)), ("source", self.source),
                ("reason", self.reason)]


@dataclass(frozen=True)
class StreamRecord:
    id: int
    text: str
    """The answer so far; in the last record (``done``) the whole answer, as on /vlm/answer."""
    tokens: int
    done: bool = False

    @cached_property
    def json(self) -> str:
        return _dump({"id": self.id, "text": self.text, "tokens": self.tokens, "done": self.done})


@dataclass
class Status:
    """One /diagnostics status, without ROS: the node turns it into a ``DiagnosticStatus``."""

    level: int
    name: str
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)
