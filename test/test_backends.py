"""Vision encoder backends: ONNX export + onnxruntime parity, engine cache, atomic writes, fallback."""

from __future__ import annotations

import importlib.util
import json
import os
import threading

import numpy as np
import pytest
import torch
from conftest import run_cli

from prune2drive_ros.vlm.backends import BackendUnavailable, make_vision_backend, resolve_backend_name
from prune2drive_ros.vlm.backends import build as build_mod
from prune2drive_ros.vlm.backends.build import cache_key, load_or_build
from prune2drive_ros.vlm.backends.cache import atomic_write, metadata_path, weights_hash
from prune2drive_ros.vlm.backends.parity import compare, parity_inputs

CPU = torch.device("cpu")
HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def encoder(tiny_model):
    from prune2drive_ros.vlm.loading import load_checkpoint
    from prune2drive_ros.vlm.vision import VisionEncoder

    return VisionEncoder(load_checkpoint(tiny_model, CPU, torch.float32).model).eval()


@pytest.fixture(scope="module")
def built(encoder, tiny_model, tmp_path_factory):
    """One onnxruntime build shared by the read-only tests (export + parity cost ~1-2 s)."""
    folder = tmp_path_factory.mktemp("engines")
    return folder, load_or_build("onnxruntime", encoder, device=CPU, dtype=torch.float32, engine_dir=folder,
                                 model_dir=tiny_model)


def _build(encoder, folder, **kwargs):
    return load_or_build("onnxruntime", encoder, device=CPU, dtype=torch.float32, engine_dir=folder, **kwargs)


# -- ONNX export and parity ------------------------------------------------------------------------
@pytest.mark.parametrize("views", [1, 6])
def test_onnxruntime_matches_torch(encoder, built, tiny_model, views) -> None:
    _, backend = built
    assert backend.cache_status == "built" and backend.parity["min_cosine"] >= 0.999
    pixels = parity_inputs(encoder, views, tiny_model)  # dynamic batch of views
    report = compare(backend, encoder, pixels)
    assert report.min_cosine >= 0.999
    with torch.inference_mode():
        torch.testing.assert_close(backend(pixels), encoder(pixels), atol=1e-4, rtol=1e-4)


def test_runner_answers_identical_with_onnxruntime(tiny_model, tmp_path) -> None:
    from prune2drive_ros.vlm import VLMRunner

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(6)]
    questions = ["What are the important objects in the scene?", "Is it safe to turn left?"]
    answers = {}
    for name in ("torch", "onnxruntime"):
        runner = VLMRunner.from_pretrained(tiny_model, vision_backend=name, engine_dir=tmp_path, max_new_tokens=4,
                                           retain=0.1)
        assert runner.vision_backend_name == name
        answers[name] = [(a.token_ids, a.kept_indices) for a in runner.answer(images, questions)]
        runner.close()
    assert answers["onnxruntime"] == answers["torch"]


def test_parity_failure_is_rejected(encoder, tmp_path, monkeypatch) -> None:
    from prune2drive_ros.vlm.backends import parity
    from prune2drive_ros.vlm.backends.ort_backend import OnnxRuntimeBackend

    real_call = OnnxRuntimeBackend.__call__
    monkeypatch.setattr(OnnxRuntimeBackend, "__call__", lambda self, x: -real_call(self, x))  # a broken "engine"
    with pytest.raises(parity.ParityError, match=r"rejected: cosine similarity .* < 0.999"):
        _build(encoder, tmp_path)
    assert not list(tmp_path.glob("*.onnx"))  # nothing cached


# -- cache keys ------------------------------------------------------------------------------------
def test_cache_key_covers_weights_precision_version_gpu(encoder) -> None:
    base = cache_key("onnxruntime", encoder, "fp32", CPU, 6)
    assert base == cache_key("onnxruntime", encoder, "fp32", CPU, 6)  # deterministic
    assert base.weights == weights_hash(encoder)
    changed = {
        "precision": cache_key("onnxruntime", encoder, "fp16", CPU, 6),
        "version": cache_key("onnxruntime", encoder, "fp32", CPU, 6, version="onnxruntime-0.0.1"),
        "max_views": cache_key("onnxruntime", encoder, "fp32", CPU, 8),
        "backend": cache_key("tensorrt", encoder, "fp32", CPU, 6, version="tensorrt-10.0"),
    }
    other_gpu = base.fields() | {"gpu": "NVIDIA H100 80GB HBM3", "capability": "sm_90"}
    changed["gpu"] = type(base)(**other_gpu)
    changed["capability"] = type(base)(**(other_gpu | {"capability": "sm_87"}))
    other = {k: v.digest for k, v in changed.items()}
    assert base.digest not in other.values() and len(set(other.values())) == len(other)

    import copy

    tweaked = copy.deepcopy(encoder)
    with torch.no_grad():
        tweaked.projector.linear_1.weight[0, 0] += 1e-3
    assert weights_hash(tweaked) != base.weights
    assert cache_key("onnxruntime", tweaked, "fp32", CPU, 6).stem() != base.stem()


# -- corruption, foreign artifacts, atomic writes --------------------------------------------------
def _fresh_copy(built, tmp_path):
    _, backend = built
    for path in (backend.artifact, metadata_path(backend.artifact)):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path / backend.artifact.name


def test_cache_hit_loads_without_rebuilding(encoder, built, tmp_path) -> None:
    artifact = _fresh_copy(built, tmp_path)
    backend = _build(encoder, tmp_path)
    assert backend.cache_status == "hit" and backend.artifact == artifact


@pytest.mark.parametrize("damage", ["truncate", "flip", "bad-json"])
def test_corrupt_artifact_is_rebuilt(encoder, built, tmp_path, damage) -> None:
    artifact = _fresh_copy(built, tmp_path)
    good = artifact.read_bytes()
    if damage == "truncate":
        artifact.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        artifact.write_bytes(good[:1000] + bytes([good[1000] ^ 0xFF]) + good[1001:])
    elif damage == "no-metadata":
        metadata_path(artifact).unlink()
    else:
        metadata_path(artifact).write_text("{not json")
    backend = _build(encoder, tmp_path)
    assert backend.cache_status.startswith("rebuilt")
    if damage in ("truncate", "flip"):
        assert "checksum mismatch" in backend.cache_status
    meta = json.loads(metadata_path(artifact).read_text())
    assert meta["size"] == artifact.stat().st_size and backend.parity["min_cosine"] >= 0.999


def test_artifact_for_another_gpu_or_version_is_never_loaded(encoder, built, tmp_path, monkeypatch) -> None:
    artifact = _fresh_copy(built, tmp_path)
    meta = json.loads(metadata_path(artifact).read_text())
    meta["key"]["gpu"], meta["key"]["runtime_version"] = "Orin", "onnxruntime-1.0.0"  # copied from elsewhere
    metadata_path(artifact).write_text(json.dumps(meta))
    loaded = []
    real = build_mod._instantiate
    monkeypatch.setattr(build_mod, "_instantiate", lambda *a: loaded.append(a[0]) or real(*a))
    backend = _build(encoder, tmp_path)
    assert "another configuration" in backend.cache_status and "gpu" in backend.cache_status
    assert len(loaded) == 1  # only the freshly built model was instantiated, never the foreign one
    assert json.loads(metadata_path(artifact).read_text())["key"]["gpu"] == "cpu"


def test_atomic_write_leaves_old_file_or_new_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "a.engine"
    atomic_write(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.engine"]


def test_concurrent_builders_build_once(encoder, tmp_path) -> None:
    results, errors = [], []

    def worker():
        try:
            results.append(_build(encoder, tmp_path).cache_status)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == ["built", "hit"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert len([n for n in names if n.endswith(".onnx")]) == 1


# -- fallback --------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is available here")
def test_fallback_chain_and_strict(monkeypatch) -> None:
    name, reason = resolve_backend_name("tensorrt", "cpu")
    assert name == "onnxruntime" and "tensorrt" in reason
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        resolve_backend_name("tensorrt", "cpu", strict=True)
    from prune2drive_ros.vlm import backends

    real = backends._why_unavailable
    monkeypatch.setattr(backends, "_why_unavailable",
                        lambda n, d=None: "onnxruntime is not installed" if n == "onnxruntime" else real(n, d))
    name, reason = resolve_backend_name("tensorrt", "cpu")
    assert name == "torch" and "onnxruntime is not installed" in reason
    with pytest.raises(BackendUnavailable):
        resolve_backend_name("onnxruntime", "cpu", strict=True)


def test_build_failure_falls_back_unless_strict(encoder, tmp_path, monkeypatch) -> None:
    from prune2drive_ros.vlm.backends.parity import ParityError

    def fail(*args, **kwargs):
        raise ParityError("ONNX model rejected: cosine 0.5")

    monkeypatch.setattr(build_mod, "load_or_build", fail)
    backend = make_vision_backend("onnxruntime", encoder, device=CPU, dtype=torch.float32, engine_dir=tmp_path)
    assert backend.name == "torch" and "build failed" in backend.reason
    with pytest.raises(ParityError):
        make_vision_backend("onnxruntime", encoder, device=CPU, dtype=torch.float32, engine_dir=tmp_path, strict=True)


# -- fp16 strongly typed variant (CPU-checkable part) -------------------------------------------------
def test_fp32_norm_copy_keeps_norms_fp32(encoder) -> None:
    import copy

    from prune2drive_ros.vlm.backends.export import Fp32LayerNorm, _swap_norms

    half = copy.deepcopy(encoder).to(torch.bfloat16)
    _swap_norms(half)
    norms = [m for m in half.modules() if isinstance(m, Fp32LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    pixels = parity_inputs(encoder, 1)
    with torch.inference_mode():
        out = half(pixels.to(torch.bfloat16))
        ref = encoder(pixels)
    assert out.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_export_keeps_norms_fp32_in_the_graph(encoder, dtype) -> None:
    """The graph a strongly typed TensorRT network obeys: half-precision matmuls, fp32 LayerNorms."""
    onnx = pytest.importorskip("onnx")
    from prune2drive_ros.vlm.backends.export import export_onnx_fp32_norms

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(export_onnx_fp32_norms(encoder, dtype, CPU)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    half = onnx.TensorProto.FLOAT16 if dtype == torch.float16 else onnx.TensorProto.BFLOAT16
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert norms and matmuls
    assert {types[n.input[0]] for n in norms} == {onnx.TensorProto.FLOAT}
    assert {types[n.input[0]] for n in matmuls} == {half}
    assert model.graph.input[0].type.tensor_type.elem_type == half


# -- CLI -------------------------------------------------------------------------------------------
def test_build_engine_cli(tiny_model, tmp_path) -> None:
    args = ("build-engine", "--model", str(tiny_model), "--backend", "onnxruntime", "--out", str(tmp_path))
    result = run_cli(*args)  # one subprocess (~10 s of imports); the cache-hit path is covered above
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[built]" in result.stdout and "min cosine" in result.stdout
    assert len(list(tmp_path.glob("vision-onnxruntime-fp32-*.onnx"))) == 1


# -- TensorRT (needs TensorRT and CUDA) --------------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_parity_and_cache(tiny_model, tmp_path, precision) -> None:
    from prune2drive_ros.vlm.loading import load_checkpoint
    from prune2drive_ros.vlm.vision import VisionEncoder

    dtype = build_mod.PRECISIONS[precision]
    cuda = torch.device("cuda")
    enc = VisionEncoder(load_checkpoint(tiny_model, cuda, dtype).model).eval()
    backend = load_or_build("tensorrt", enc, device=cuda, dtype=dtype, engine_dir=tmp_path, model_dir=tiny_model)
    assert backend.cache_status == "built" and backend.parity["min_cosine"] >= 0.999
    for views in (1, 6):
        pixels = parity_inputs(enc, views, tiny_model)
        out = backend(pixels)
        assert out.device.type == "cuda" and out.dtype == dtype
        assert compare(backend, enc, pixels).min_cosine >= 0.999
    again = load_or_build("tensorrt", enc, device=cuda, dtype=dtype, engine_dir=tmp_path, model_dir=tiny_model)
    assert again.cache_status == "hit"


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA device")
def test_tensorrt_strongly_typed_fp32_norms(tiny_model) -> None:
    from prune2drive_ros.vlm.backends.export import export_onnx_fp32_norms
    from prune2drive_ros.vlm.backends.tensorrt_backend import TensorRTBackend, build_engine
    from prune2drive_ros.vlm.loading import load_checkpoint
    from prune2drive_ros.vlm.vision import VisionEncoder

    cuda = torch.device("cuda")
    enc = VisionEncoder(load_checkpoint(tiny_model, cuda, torch.float16).model).eval()
    data = build_engine(export_onnx_fp32_norms(enc, torch.float16), precision="fp16", max_views=6, strongly_typed=True)
    backend = TensorRTBackend(data, device=cuda, dtype=torch.float16)
    assert compare(backend, enc, parity_inputs(enc, 6, tiny_model)).min_cosine >= 0.999


# -- TensorRT version gate (pure logic; the engine build itself needs TensorRT and CUDA) -------------
@pytest.mark.parametrize(("version", "ok"), [("10.3.0", True), ("10.16.1.11", True), ("8.6.2", False),
                                             ("11.4.0.106", False), ("garbage", False)])
def test_tensorrt_version_gate(version, ok) -> None:
    from prune2drive_ros.vlm.backends.tensorrt_backend import version_problem

    problem = version_problem(version)
    assert (problem is None) == ok
    if not ok:
        assert version in problem and ("10.x" in problem or "unrecognised" in problem)


def test_tensorrt_cache_key_names_the_strongly_typed_recipe(monkeypatch) -> None:
    from prune2drive_ros.vlm.backends import tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "runtime_version", lambda: "10.16.1.11")
    assert build_mod.runtime_version("tensorrt") == "tensorrt-10.16.1.11-strongly-typed"
