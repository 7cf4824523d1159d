"""``prune2drive build-engine`` and ``load_or_build``: export, build, parity-check and cache vision backends.

The ONNX model (onnxruntime) or engine (tensorrt) is looked up in the engine cache by a key of the
vision weights, precision, runtime version and GPU; a missing, foreign or corrupt artifact is built
again under a file lock, checked against the torch path on real preprocessed images, and written
atomically. Runners call ``load_or_build`` at construction, so engines load at node configure.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from prune2drive_ros import settings
from prune2drive_ros.vlm.backends import cache
from prune2drive_ros.vlm.backends.parity import MIN_COSINE, ParityError, compare, parity_inputs

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_OF = {dtype: name for name, dtype in PRECISIONS.items()}
EXTENSIONS = {"onnxruntime": ".onnx", "tensorrt": ".engine"}


def runtime_version(backend: str) -> str:
    if backend == "tensorrt":
        # The engine recipe (strongly typed, fp32 norms) is part of the key: engines cached by the
        # weakly typed recipe are rebuilt, not loaded.
        from prune2drive_ros.vlm.backends.tensorrt_backend import runtime_version

        return f"tensorrt-{runtime_version()}-strongly-typed"
    if backend == "onnxruntime":
        from prune2drive_ros.vlm.backends.ort_backend import runtime_version as version
    else:
        raise ValueError(f"nothing to build for backend {backend!r}")
    return f"{backend}-{version()}"


def cache_key(backend: str, encoder: torch.nn.Module, precision: str, device: torch.device, max_views: int,
              *, weights: str | None = None, version: str | None = None) -> cache.CacheKey:
    ident = cache.device_identity(device)
    return cache.CacheKey(
        backend=backend,
        precision=precision,
        weights=weights or cache.weights_hash(encoder),
        runtime_version=version or runtime_version(backend),
        gpu=ident["gpu"],
        capability=ident["capability"],
        max_views=max_views,
    )


def load_or_build(name: str, encoder: torch.nn.Module, *, device: torch.device, dtype: torch.dtype, engine_dir=None,
                  model_dir=None, precision: str | None = None, max_views: int = 6, rebuild: bool = False):
    """The ``name`` backend for ``encoder``: from the cache when valid, else built, parity-checked and cached.

    The returned backend has ``artifact`` (path), ``cache_status`` ("hit", "built" or "rebuilt (why)")
    and ``parity`` (build-time min cosine and max |diff|).
    """
    device = torch.device(device)
    precision = precision or PRECISION_OF[dtype]
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_views < 1:
        raise ValueError(f"max_views must be >= 1, got {max_views}")
    key = cache_key(name, encoder, precision, device, max_views)
    folder = Path(engine_dir).expanduser() if engine_dir else cache.default_cache_dir()
    artifact = folder / (key.stem() + EXTENSIONS[name])
    with cache.build_lock(artifact):
        try:
            if rebuild:
                raise cache.ArtifactInvalid("rebuild requested")
            data, meta = cache.read_verified(artifact, key)
            backend, status = _instantiate(name, data, meta, device, dtype), "hit"
        except cache.ArtifactInvalid as exc:
            status = "built" if str(exc) == "not built yet" else f"rebuilt ({exc})"
            if status != "built":
                log.warning("vision %s artifact %s: %s; rebuilding", name, artifact.name, exc)
            started = time.perf_counter()
            data, extra, backend = _build(name, encoder, key, device, dtype, model_dir)
            extra["build_s"] = round(time.perf_counter() - started, 2)
            meta = cache.write_artifact(artifact, key, data, extra)
    backend.artifact = artifact
    backend.cache_status = status
    backend.parity = meta.get("parity")
    return backend


def _instantiate(name: str, data: bytes, meta: dict, device: torch.device, dtype: torch.dtype):
    if name == "onnxruntime":
        from prune2drive_ros.vlm.backends.ort_backend import OnnxRuntimeBackend

        tail = meta.get("out_tail")
        return OnnxRuntimeBackend(data, device=device, dtype=dtype, onnx_dtype=PRECISIONS[meta["onnx_dtype"]],
                                  out_tail=tuple(tail) if tail else None)
    from prune2drive_ros.vlm.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(data, device=device, dtype=dtype)


def _check(backend, encoder, pixels, what: str) -> dict:
    report = compare(backend, encoder, pixels)
    result = {"min_cosine": round(report.min_cosine, 6), "max_abs_diff": report.max_abs_diff, "views": report.views}
    if not report.ok():
        backend.close()
        raise ParityError(f"{what} rejected: cosine similarity to the torch path {report.min_cosine:.5f} < {MIN_COSINE} "
                          f"(max |diff| {report.max_abs_diff:.3g}) on {report.views} preprocessed views")
    return result


def _build(name: str, encoder, key: cache.CacheKey, device: torch.device, dtype: torch.dtype, model_dir):
    from prune2drive_ros.vlm.backends.export import export_onnx, export_onnx_fp32_norms

    pixels = parity_inputs(encoder, min(6, key.max_views), model_dir)
    with torch.inference_mode():
        out_tail = list(encoder(pixels[:1]).shape[1:])
    if name == "onnxruntime":
        # ORT's CPU kernels are fp32 (no fp16/bf16 for most ops); on CUDA fp16 runs natively, bf16 stays fp32.
        onnx_dtype = "fp16" if device.type == "cuda" and key.precision == "fp16" else "fp32"
        data = export_onnx(encoder, PRECISIONS[onnx_dtype], device if device.type == "cuda" else torch.device("cpu"))
        meta = {"onnx_dtype": onnx_dtype, "out_tail": out_tail}
        backend = _instantiate(name, data, meta, device, dtype)
        meta["parity"] = _check(backend, encoder, pixels, f"ONNX model ({onnx_dtype})")
        return data, meta, backend

    from prune2drive_ros.vlm.backends.tensorrt_backend import TensorRTBackend, build_engine

    # Strongly typed: the graph is in the runner's precision with fp32 LayerNorms (ViT LayerNorm
    # statistics overflow fp16), and TensorRT keeps exactly those types.
    if key.precision == "fp32":
        onnx, what = export_onnx(encoder, torch.float32, device), "TensorRT fp32 engine"
    else:
        onnx = export_onnx_fp32_norms(encoder, PRECISIONS[key.precision], device)
        what = f"strongly typed TensorRT {key.precision} engine (fp32 norms)"
    data = build_engine(onnx, precision=key.precision, max_views=key.max_views, strongly_typed=True)
    backend = TensorRTBackend(data, device=device, dtype=dtype)
    meta = {"out_tail": out_tail, "strongly_typed": True}
    meta["parity"] = _check(backend, encoder, pixels, what)
    return data, meta, backend


# -- CLI -------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id (transformers or LLaVA-NeXT format)")
    parser.add_argument("--backend", choices=["tensorrt", "onnxruntime"], default="tensorrt",
                        help="falls back tensorrt -> onnxruntime when unavailable, unless --strict")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=None,
                        help="must match the runner's dtype to be found (default: the device's default dtype)")
    parser.add_argument("--max-views", type=int, default=6, help="largest batch of views the engine accepts")
    parser.add_argument("--out", type=Path, default=None, help=f"engine cache folder (default {cache.default_cache_dir()})")
    settings.add_arguments(parser, ("device",))
    parser.add_argument("--strict", action="store_true", help="fail instead of falling back")
    parser.add_argument("--rebuild", action="store_true", help="build even if a valid artifact is cached")


def run(args: argparse.Namespace) -> int:
    from prune2drive_ros.vlm.backends import BackendUnavailable, resolve_backend_name
    from prune2drive_ros.vlm.loading import load_checkpoint, resolve_device, resolve_dtype
    from prune2drive_ros.vlm.vision import VisionEncoder

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    device = resolve_device(args.device)
    try:
        name, reason = resolve_backend_name(args.backend, str(device), args.strict)
    except BackendUnavailable as exc:
        print(f"error: {exc}")
        return 2
    if name == "torch":
        print(f"nothing to build: {reason}; the runner will use the torch backend")
        return 1
    dtype = resolve_dtype(args.precision, device)
    loaded = load_checkpoint(args.model, device, dtype)
    encoder = VisionEncoder(loaded.model).eval()
    try:
        backend = load_or_build(name, encoder, device=device, dtype=dtype, engine_dir=args.out,
                                model_dir=loaded.folder, precision=PRECISION_OF[dtype], max_views=args.max_views,
                                rebuild=args.rebuild)
    except ParityError as exc:
        print(f"error: {exc}")
        return 1
    parity = backend.parity or {}
    print(f"vision backend {name} ({reason}), precision {PRECISION_OF[dtype]}, device {device}")
    print(f"  artifact: {backend.artifact} [{backend.cache_status}]")
    if parity:
        print(f"  parity vs torch: min cosine {parity['min_cosine']:.6f}, max |diff| {parity['max_abs_diff']:.3g}")
    backend.close()
    return 0
