"""``RunnerInfo``: what a loaded runner is, for the node, the service and the demo (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunnerInfo:
    model: str
    device: str
    """``cpu``, ``cuda:0``, ..."""
    dtype: str
    """``float32``, ``bfloat16``, ``float16``."""
    vision_backend: str
    """The backend that runs the vision encoder (after any fallback)."""
    vision_reason: str
    """Why that backend: ``as requested``, ``auto: ...`` or ``fallback: ...``."""
    pruning: str
    prune_layer: int
    """The decoder layer the visual tokens are pruned at (resolved from -1)."""
    budgets: tuple[int, ...]
    """Patch tokens kept per view, camera order."""
    tokens_per_view: int
    """Patch tokens per view before pruning (729 for DriveMM)."""
    max_new_tokens: int
    warmup_ms: float
    """Time the CUDA-graph capture took at load (0 where nothing was captured)."""
    paths: dict[str, str] = field(default_factory=dict)
    """How each stage runs (keys ``vision``, ``prefix``, ``question``, ``decode``), from warm-up or the last
    answer; empty until the runtime reports them."""
