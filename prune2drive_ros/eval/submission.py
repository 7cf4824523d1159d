"""The DriveLM challenge submission file: a JSON list of ``{"id", "question", "answer"}``.

The reader also takes the wrapper that the challenge's ``prepare_submission.py`` writes
(``{"method": ..., "team": ..., "results": [...]}``), so a file sent to the leaderboard can be
scored here as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def write_submission(path: str | Path, entries: Iterable[Mapping[str, Any]]) -> Path:
    """Write entries (each with id, question, answer) atomically, so a reader never sees half a file."""
    path = Path(path)
    rows = [{"id": str(e["id"]), "question": str(e["question"]), "answer": str(e["answer"])} for e in entries]
    _check_unique(rows, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_submission(path: str | Path) -> list[dict[str, str]]:
    """Entries of a submission file; ValueError names the first malformed entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        data = data["results"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: a submission is a JSON list of {{id, question, answer}} objects")
    rows = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(entry.get("answer"), str):
            raise ValueError(f"{path}: entry {i} needs a string 'id' and a string 'answer'")
        rows.append({"id": entry["id"], "question": str(entry.get("question", "")), "answer": entry["answer"]})
    _check_unique(rows, path)
    return rows


def answers_by_id(entries: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    return {e["id"]: e["answer"] for e in entries}


def _check_unique(rows: list[dict[str, str]], path: Path) -> None:
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise ValueError(f"{path}: duplicate id {row['id']}")
        seen.add(row["id"])
