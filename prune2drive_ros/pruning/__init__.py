"""Visual token pruning: T-FPS (Prune2Drive), the baselines, per-camera budgets, FLOPs, pictures.

torch (and numpy) only: no ROS, no transformers, so the node, the evaluation and the benchmarks share it.
Modules: ``fps`` (T-FPS and the published loop), ``cosine`` (distances, diversity), ``budgets``,
``pruners`` / ``mvpruner`` / ``registry`` (``get_pruner``), ``flops``, ``render`` (OpenCV, imported lazily),
``figure`` (regenerates docs/kept_tokens.png), ``checks`` (argument errors).
"""

from .base import Pruner
from .budgets import apportion, view_budgets
from .cosine import cosine_distances, view_diversity
from .flops import layer_flops, prefill_flops
from .fps import farthest_point_sampling, reference_tfps_loop
from .mvpruner import MVPruner
from .registry import PRUNER_NAMES, get_pruner
from .render import render_kept_tokens

__all__ = [
    "PRUNER_NAMES",
    "MVPruner",
    "Pruner",
    "apportion",
    "cosine_distances",
    "farthest_point_sampling",
    "get_pruner",
    "layer_flops",
    "prefill_flops",
    "reference_tfps_loop",
    "render_kept_tokens",
    "view_budgets",
    "view_diversity",
]
