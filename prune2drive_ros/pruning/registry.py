"""``get_pruner(name)``: the pruners by the names the config, the CLI and the evaluation use."""

from __future__ import annotations

from typing import Any

from .base import Pruner
from .mvpruner import MVPruner
from .pruners import TFPS, DivPrune, FastV, KeepAll, PoolPruner, RandomPruner

PRUNERS: dict[str, type[Pruner]] = {
    cls.name: cls for cls in (KeepAll, TFPS, DivPrune, FastV, RandomPruner, PoolPruner, MVPruner)
}
PRUNER_NAMES: tuple[str, ...] = tuple(PRUNERS)


def get_pruner(name: str, **kwargs: Any) -> Pruner:
    """A new pruner by name (``none``, ``tfps``, ``divprune``, ``fastv``, ``random``, ``pool``, ``mvpruner``).

    Keyword arguments go to its constructor: ``random`` takes ``seed`` (default 0); ``mvpruner`` takes
    ``stage2_layer_offset`` (default 2) and ``stage1_factor`` (default 2).
    """
    try:
        cls = PRUNERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruner {name!r}; valid names: {', '.join(PRUNER_NAMES)}") from None
    return cls(**kwargs)
