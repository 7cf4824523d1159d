"""Vision encoder backends behind one interface: ``backend(pixels [V,3,H,W]) -> features [V, T, D]``.

Requested backends fall back along ``tensorrt -> onnxruntime -> torch`` when unavailable (no
TensorRT, no GPU); ``strict=True`` turns a fallback into an error. ``auto`` is TensorRT where it can
run and torch everywhere else (it never picks onnxruntime on its own). The chosen backend and the
reason are reported by the runner, the node's diagnostics and ``prune2drive doctor``.
"""

from __future__ import annotations

import importlib.util

import torch

from prune2drive_ros.settings import FALLBACK_CHAIN
from prune2drive_ros.vlm.backends.torch_backend import TorchVisionBackend


class BackendUnavailable(RuntimeError):
    pass


def _why_unavailable(name: str, device: str | None = None) -> str | None:
    """None when ``name`` can run here, else the reason it cannot."""
    if name == "torch":
        return None
    if name == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed"
        if not torch.cuda.is_available() or (device is not None and not str(device).startswith("cuda")):
            return "TensorRT needs a CUDA device"
        from prune2drive_ros.vlm.backends.tensorrt_backend import runtime_version, version_problem

        try:
            return version_problem(runtime_version())
        except Exception as exc:  # a broken install raises more than ImportError
            return f"TensorRT is installed but does not import ({type(exc).__name__}: {exc})"
    if name == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        if importlib.util.find_spec("onnx") is None:
            return "onnx (needed for export) is not installed"
        return None
    raise ValueError(f"unknown vision backend {name!r}; choose from {', '.join(FALLBACK_CHAIN)}")


def resolve_backend_name(requested: str, device: str | None = None, strict: bool = False) -> tuple[str, str]:
    """The backend that will run for ``requested`` and why (fallbacks say what was missing)."""
    if requested == "auto":
        why = _why_unavailable("tensorrt", device)
        if why is None:
            return "tensorrt", "auto: TensorRT can run here"
        if strict:
            raise BackendUnavailable(f"vision backend 'auto' found no TensorRT: {why}")
        return "torch", f"auto: {why}"
    if requested not in FALLBACK_CHAIN:
        raise ValueError(f"unknown vision backend {requested!r}; choose from {', '.join(FALLBACK_CHAIN)}")
    reasons = []
    for name in FALLBACK_CHAIN[FALLBACK_CHAIN.index(requested):]:
        why = _why_unavailable(name, device)
        if why is None:
            return name, "as requested" if name == requested else "fallback: " + "; ".join(reasons)
        if strict:
            raise BackendUnavailable(f"vision backend {requested!r} unavailable: {why}")
        reasons.append(f"{name}: {why}")
    raise BackendUnavailable("no vision backend available")  # torch always is; kept for clarity


def make_vision_backend(requested: str, encoder, *, device: torch.device, dtype: torch.dtype,
                        engine_dir=None, strict: bool = False, model_dir=None):
    """Build the backend for ``requested`` (after fallback) around a ``VisionEncoder``.

    A backend that is installed but fails to build (export error, parity rejection) also falls back
    to the next one in the chain, unless ``strict``; the reason says what happened.
    """
    name, reason = resolve_backend_name(requested, str(device), strict)
    failures = []
    while name != "torch":
        from prune2drive_ros.vlm.backends.build import load_or_build
        from prune2drive_ros.vlm.backends.tensorrt_backend import UnsupportedTensorRT

        try:
            backend = load_or_build(name, encoder, device=device, dtype=dtype, engine_dir=engine_dir,
                                    model_dir=model_dir)
        except UnsupportedTensorRT:
            raise  # our code and the installed TensorRT disagree: say so instead of running elsewhere
        except Exception as exc:
            if strict:
                raise
            failures.append(f"{name}: build failed: {exc}")
            name, reason = resolve_backend_name(FALLBACK_CHAIN[FALLBACK_CHAIN.index(name) + 1], str(device))
            continue
        break
    else:
        backend = TorchVisionBackend(encoder)
    if failures:
        earlier = [reason.removeprefix("fallback: ")] if reason.startswith("fallback") else []
        reason = "fallback: " + "; ".join([*failures, *earlier])
    backend.reason = reason
    return backend
