"""Files of an evaluation run: atomic JSON writes and the resumable answers log (JSON lines)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: ranks may write the same file
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a missing file is empty.

    A run killed mid-write leaves a partial last line: it is ignored, and with ``repair`` cut off so
    the next append starts on a clean line. A bad line anywhere else means the file is corrupt.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is an unfinished write
    records = []
    for n, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {n} is not JSON; the file is corrupt") from None
    if repair and end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return records


class AnswerLog:
    """Append-only answers of one process; each keyframe's answers go in one write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path, repair=True)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
