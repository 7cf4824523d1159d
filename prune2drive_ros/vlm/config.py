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
# Kept in step with vlm.quantize.WEIGHT_CHOICES (this module stays torch-free).
WEIGHT_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8", "int4", "fp8")
_DTYPE_OF_WEIGHTS = {"fp32": ("fp32", "float32"), "bf16": ("bf16", "bfloat16"), "fp16": ("fp16", "float16")}


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
    weights: str = "auto"
    """Language-model weights: auto (the model dtype) | fp32 | bf16 | fp16 | int8 | int4 | fp8 (weight-only
    quantized at load, cached in ``engine_dir``; vision tower and embeddings stay in the model dtype)."""

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
        if self.weights not in WEIGHT_CHOICES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {self.weights!r}")
        if self.weights in _DTYPE_OF_WEIGHTS and self.dtype not in (None, "", "auto", *_DTYPE_OF_WEIGHTS[self.weights]):
            raise ValueError(f"weights={self.weights} and dtype={self.dtype} disagree; set one of them")
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
