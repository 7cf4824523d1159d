"""Command-line options shared by ``eval`` and ``optimize``: model/pruning settings and the judge."""

from __future__ import annotations

import argparse
from typing import Any

from prune2drive_ros import settings
from prune2drive_ros.eval.bootstrap import DEFAULT_RESAMPLES

MODEL_SETTINGS = ("pruning", "retain", "view_ratios", "prune_layer", "device", "dtype", "vision_backend", "engine_dir",
                  "max_new_tokens")
"""The runner settings ``eval`` and ``optimize`` take as flags (their defaults: ``prune2drive_ros.settings``)."""


def add_model_arguments(parser: argparse.ArgumentParser, *, with_ratios: bool = True) -> None:
    g = parser.add_argument_group("model and pruning")
    names = [n for n in MODEL_SETTINGS if with_ratios or n != "view_ratios"]
    settings.add_arguments(g, names, device={"help": "auto | cpu | cuda | cuda:N (default auto: cuda if present; "
                                                     "under torchrun cuda:LOCAL_RANK)"})


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scoring")
    g.add_argument(
        "--rules",
        choices=("official", "lenient"),
        default="official",
        help="official: DriveLM challenge/evaluation.py (exact-match accuracy, camera-blind point match averaged "
        "with the judge, questions on unmatched objects skipped); lenient: option letters parsed from free text, "
        "same-camera point F1, every question scored (default official)",
    )
    g.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help="bootstrap resamples over questions for the 95%% intervals (seeded; 0 = none; default 1000)",
    )


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("GPT score (optional)")
    g.add_argument("--judge", metavar="URL", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    g.add_argument("--judge-model", default="gpt-4o-mini", help="model name sent to the judge")
    g.add_argument("--judge-timeout", type=float, default=30.0, help="seconds per judge request")


def make_judge(args: argparse.Namespace) -> Any:
    if not getattr(args, "judge", None):
        return None
    from prune2drive_ros.eval.judge import Judge

    return Judge(args.judge, model=args.judge_model, timeout_s=args.judge_timeout)


def runner_settings(args: argparse.Namespace, view_ratios: list[float] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``VLMRunner.from_pretrained`` from parsed options; ``prune_layer`` resolved to
    the layer the method prunes at, so run records name it."""
    names = [n for n in MODEL_SETTINGS if hasattr(args, n)]
    out = settings.from_args(args, names)
    if view_ratios is not None:
        out["view_ratios"] = view_ratios
    out.setdefault("view_ratios", None)
    out["prune_layer"] = settings.prune_layer_for(out["pruning"], out["prune_layer"])
    return out
