"""``RunnerConfig``: every setting of the runtime, with its one default, frozen.

The node, the CLIs, the evaluation and the demo all build a ``RunnerConfig`` (or pass the same keywords
to ``VLMRunner.from_pretrained``, which builds one), so a default lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_QUESTION_TOKENS = 512
DEFAULT_MAX_NEW_TOKENS = 64
CUDA_GRAPH_MODES = ("auto", "on", "off")
COMPILE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class RunnerConfig:
    model: str = ""
    """Checkpoint folder or hub id (transformers LLaVA-OneVision or LLaVA-NeXT/DriveMM format)."""
    pruning: str = "tfps"
    retain: float | None = 0.1
    view_ratios: tuple[float, ...] | None = None
    """Six per-camera kept fractions (camera order); overrides ``retain`` when set."""
    prune_layer: int = 1
    device: str | None = None
    """None or "auto": CUDA when available."""
    dtype: str | None = None
    """None or "auto": bf16 (fp16 without bf16) on CUDA, fp32 on CPU."""
    vision_backend: str = "torch"
    """torch | onnxruntime | tensorrt; the faster ones fall back along tensorrt -> onnxruntime -> torch."""
    engine_dir: str | None = None
    strict_backend: bool = False
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS
    max_image_side: int | None = None
    """None: the preprocessing module's bound."""
    cuda_graphs: str = "auto"
    """auto: capture on CUDA, eager elsewhere; off: always eager; on: like auto, but a failed capture raises."""
    compile: str = "auto"
    """torch.compile (inductor) of the layer functions before capture. auto: on CUDA where Triton is installed,
    falling back to uncompiled layers if compiling fails; on: everywhere (CPU: inductor's C++ backend), a
    failure raises; off: never."""

    def __post_init__(self) -> None:
        if self.view_ratios is not None and not isinstance(self.view_ratios, tuple):
            object.__setattr__(self, "view_ratios", tuple(float(r) for r in self.view_ratios) or None)
        if self.engine_dir is not None and not isinstance(self.engine_dir, str):
            object.__setattr__(self, "engine_dir", str(self.engine_dir))
        if not isinstance(self.model, str):
            object.__setattr__(self, "model", str(self.model))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.prune_layer < 0:
            raise ValueError(f"prune_layer must be >= 0, got {self.prune_layer}")
        if self.cuda_graphs not in CUDA_GRAPH_MODES:
            raise ValueError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPH_MODES)}, got {self.cuda_graphs!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    def replace(self, **changes: Any) -> RunnerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, model: Any = "", **kwargs: Any) -> RunnerConfig:
        """The config for ``VLMRunner.from_pretrained(model, **kwargs)``; unknown keywords raise TypeError."""
        unknown = set(kwargs) - set(cls.fields())
        if unknown:
            raise TypeError(f"unknown runner settings: {', '.join(sorted(unknown))}")
        if kwargs.get("view_ratios") is not None:
            kwargs["view_ratios"] = tuple(kwargs["view_ratios"]) or None
        return cls(model=model, **kwargs)
