"""``RunnerConfig``: every setting of the runtime, frozen; its fields are built from ``settings.SETTINGS``.

The node, the CLIs, the evaluation and the demo all build a ``RunnerConfig`` (or pass the same keywords
to ``VLMRunner.from_pretrained``, which builds one). The fields, their defaults and their checks come
from ``prune2drive_ros.settings`` (no torch there), so a default lives there and nowhere else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prune2drive_ros.settings import DOUBLE_ARRAY, RUNNER_SETTINGS, check, coerce, default, prune_layer_for

DEFAULT_MAX_QUESTION_TOKENS: int = default("max_question_tokens")
DEFAULT_MAX_NEW_TOKENS: int = default("max_new_tokens")


class _RunnerConfigBase:
    """Methods of ``RunnerConfig``; the fields are added from the settings table below."""

    def __post_init__(self) -> None:
        for spec in RUNNER_SETTINGS:
            value = coerce(spec.name, getattr(self, spec.name))
            if spec.kind == DOUBLE_ARRAY and value is not None:
                value = tuple(float(v) for v in value) or None
            elif spec.name in ("model", "engine_dir") and value is not None and not isinstance(value, str):
                value = str(value)  # a Path
            elif spec.name in ("device", "dtype") and value is None:
                value = "auto"
            object.__setattr__(self, spec.name, value)
            reason = check(spec.name, list(value) if isinstance(value, tuple) else value)
            if reason is not None:
                raise ValueError(reason)

    @property
    def layer(self) -> int:
        """The decoder layer the pruning happens at (``prune_layer``, or the method's own when it is -1)."""
        return prune_layer_for(self.pruning, self.prune_layer)  # type: ignore[attr-defined]

    def replace(self, **changes: Any) -> RunnerConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_kwargs(cls, model: Any = None, **kwargs: Any) -> RunnerConfig:
        """The config for ``VLMRunner.from_pretrained(model, **kwargs)``; unknown keywords raise TypeError.
        A keyword given as None takes the setting's default."""
        unknown = set(kwargs) - set(cls.fields())
        if unknown:
            raise TypeError(f"unknown runner settings: {', '.join(sorted(unknown))}")
        given = {k: v for k, v in kwargs.items() if v is not None or k == "view_ratios"}
        if model is not None:
            given["model"] = model
        return cls(**given)  # type: ignore[call-arg]


def _field(spec: Any) -> tuple[str, Any, dataclasses.Field]:
    value = spec.default
    if isinstance(value, list):
        return spec.name, Any, dataclasses.field(default_factory=lambda v=tuple(value): v)
    return spec.name, Any, dataclasses.field(default=value)


RunnerConfig = dataclasses.make_dataclass(
    "RunnerConfig", [_field(spec) for spec in RUNNER_SETTINGS], bases=(_RunnerConfigBase,), frozen=True)
RunnerConfig.__module__ = __name__  # pickles and reprs as prune2drive_ros.vlm.config.RunnerConfig
RunnerConfig.__doc__ = "The runtime's settings (see ``prune2drive_ros.settings`` for each one's meaning and default)."
