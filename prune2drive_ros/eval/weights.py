"""Is a checkpoint trained? Scores of a random-weight model must say that they mean nothing.

A folder's ``config.json`` decides, read without loading the model:

- a training record marks it trained: a ``prune2drive_testbed`` (the synthetic test bed's trainer
  writes it), ``prune2drive_trained`` or ``trained`` entry that is not false, or a ``training.json``
  file beside the config;
- ``prune2drive_random_weights: true`` (or ``trained: false``) marks it random;
- otherwise a text model narrower than 256 is taken for a tiny random test model such as
  ``prune2drive make-tiny-model`` writes, since no released VLM is that small;
- anything else (DriveMM, LLaVA-OneVision, a hub id) is assumed trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRAINED_KEYS = ("prune2drive_testbed", "prune2drive_trained", "trained")
TINY_HIDDEN = 256


def _hidden_size(config: dict[str, Any]) -> int | None:
    text = config.get("text_config")
    for source in (text if isinstance(text, dict) else {}, config):
        value = source.get("hidden_size")
        if isinstance(value, int):
            return value
    return None


def weights_info(model: str | Path | None) -> dict[str, str]:
    """``{"weights": "random" | "trained" | "unknown", "reason": ...}`` for a model folder or hub id."""
    if model is None:
        return {"weights": "unknown", "reason": "no model"}
    folder = Path(model)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return {"weights": "unknown", "reason": f"{model} is not a local checkpoint folder; assumed trained"}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"weights": "unknown", "reason": f"{config_path} is unreadable"}
    if config.get("prune2drive_random_weights") is True or config.get("trained") is False:
        return {"weights": "random", "reason": f"{config_path} says its weights are random"}
    for key in TRAINED_KEYS:
        record = config.get(key)
        if record not in (None, False):
            info = {"weights": "trained", "reason": f"{config_path} has a training record ({key})"}
            if isinstance(record, dict):
                # A test bed says what it is (not DriveLM) and how many tokens a view has; reports repeat it.
                parts = [str(record[k]) for k in ("note",) if record.get(k)]
                if record.get("tokens_per_view"):
                    parts.append(f"{record['tokens_per_view']} visual tokens per view")
                if parts:
                    info["note"] = "; ".join(parts)
            return info
    if (folder / "training.json").is_file():
        return {"weights": "trained", "reason": f"{folder / 'training.json'} records its training"}
    hidden = _hidden_size(config)
    if hidden is not None and hidden < TINY_HIDDEN:
        return {
            "weights": "random",
            "reason": f"a tiny checkpoint (hidden size {hidden}) without a training record in its config.json",
        }
    return {"weights": "trained", "reason": "a full-size checkpoint"}


def model_note(info: dict[str, str] | None) -> str | None:
    """What a trained test-bed model says about itself (e.g. synthetic, tokens per view), for reports."""
    return (info or {}).get("note")


def random_banner(info: dict[str, str] | None, model: str | None = None) -> str | None:
    """The warning to print above scores of a random-weight model; None for a trained one."""
    if not info or info.get("weights") != "random":
        return None
    name = f"{model} " if model else ""
    return (
        f"RANDOM WEIGHTS: the model {name}is untrained ({info.get('reason', '')}). "
        "These scores are meaningless: they rank noise, not pruning methods."
    )
