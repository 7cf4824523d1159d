"""Command-line options shared by ``eval`` and ``optimize``: model/pruning settings and the judge."""

from __future__ import annotations

import argparse
import re
from typing import Any

from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.eval.bootstrap import DEFAULT_RESAMPLES

PRUNING_METHODS = ("none", "tfps", "divprune", "fastv", "pool", "random", "mvpruner")
DEFAULT_PRUNE_LAYER = 1
"""Prune2Drive's K: T-FPS selects on the output of the first decoder layer (DESIGN.md §3)."""
METHOD_PRUNE_LAYER = {"divprune": 0}
"""Methods defined at another layer: DivPrune selects on the vision embeddings, before the LLM."""


def default_prune_layer(method: str) -> int:
    """The layer K a method prunes at when ``--prune-layer`` is not given (same for eval, --compare, optimize)."""
    return METHOD_PRUNE_LAYER.get(method, DEFAULT_PRUNE_LAYER)


def parse_view_ratios(values: list[str] | str | None) -> list[float] | None:
    """Six ratios in (0, 1] from ``0.1 0.2 ...`` or ``0.1,0.2,...``; None when not given."""
    if values is None:
        return None
    text = " ".join(values) if isinstance(values, list) else values
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        ratios = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--view-ratios must be numbers, got {text!r}") from None
    if len(ratios) != NUM_CAMERAS or not all(0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"--view-ratios needs {NUM_CAMERAS} values in (0, 1], one per camera; got {text!r}")
    return ratios


def add_model_arguments(parser: argparse.ArgumentParser, *, with_ratios: bool = True) -> None:
    g = parser.add_argument_group("model and pruning")
    g.add_argument("--pruning", default="tfps", help=f"pruning method: {' | '.join(PRUNING_METHODS)} (default tfps)")
    g.add_argument("--retain", type=float, default=0.1, help="fraction of visual tokens kept per view (default 0.1)")
    if with_ratios:
        g.add_argument(
            "--view-ratios", nargs="+", metavar="R", help="six per-camera ratios in camera order (overrides --retain)"
        )
    g.add_argument(
        "--prune-layer",
        type=int,
        default=None,
        help="decoder layer K at which tokens are pruned (default: 1; 0 for divprune, which prunes before the LLM)",
    )
    g.add_argument(
        "--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present; under torchrun cuda:LOCAL_RANK)"
    )
    g.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: the runtime's choice)")
    g.add_argument("--weights", default="auto",
                   help="language-model weights: auto | fp32 | bf16 | fp16 | int8 | int4 | fp8 (default auto: the dtype)")
    g.add_argument("--vision-backend", default="torch", help="torch | onnxruntime | tensorrt (default torch)")
    g.add_argument("--engine-dir", default=None, help="vision engine cache folder")
    g.add_argument("--max-new-tokens", type=int, default=64)


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
    """Keyword arguments of ``VLMRunner.from_pretrained`` from parsed options."""
    ratios = view_ratios if view_ratios is not None else parse_view_ratios(getattr(args, "view_ratios", None))
    return {
        "pruning": args.pruning,
        "retain": args.retain,
        "view_ratios": ratios,
        "prune_layer": args.prune_layer if args.prune_layer is not None else default_prune_layer(args.pruning),
        "device": args.device,
        "dtype": args.dtype,
        "vision_backend": args.vision_backend,
        "weights": getattr(args, "weights", "auto"),
        "engine_dir": args.engine_dir,
        "max_new_tokens": args.max_new_tokens,
    }
