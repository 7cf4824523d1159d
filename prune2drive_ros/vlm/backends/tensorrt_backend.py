"""TensorRT backend: engine build from the exported ONNX model and the TensorRT 10 runtime.

Imported lazily (only when TensorRT is chosen), so machines without TensorRT never load it.
Runtime uses the named-tensor API with torch tensors in and out on torch's current CUDA stream; no
host copies.
"""

from __future__ import annotations

import torch

OPT_VIEWS = 6
# The engine build and runtime use the TensorRT 10 API. TensorRT 11 removed the FP16/BF16 builder
# flags and more; 8.x (JetPack 6.0) lacks the named-tensor runtime API.
SUPPORTED_MAJORS = (10,)
INSTALL_HINT = ("install TensorRT 10 for the CUDA major of your torch, e.g. "
                "pip install 'tensorrt-cu12>=10,<11' (Jetson: JetPack 6.1 or newer)")


class UnsupportedTensorRT(RuntimeError):
    """The installed TensorRT is not a version this backend is written for."""


def version_problem(version: str) -> str | None:
    """Why TensorRT ``version`` cannot be used, or None when it can."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return f"unrecognised TensorRT version {version!r}"
    if major in SUPPORTED_MAJORS:
        return None
    wanted = " or ".join(f"{m}.x" for m in SUPPORTED_MAJORS)
    return f"TensorRT {version} is installed, this backend needs TensorRT {wanted}; {INSTALL_HINT}"


def runtime_version() -> str:
    import tensorrt as trt

    return trt.__version__


def check_supported() -> str:
    """The installed TensorRT version; UnsupportedTensorRT when it is not a supported major."""
    version = runtime_version()
    problem = version_problem(version)
    if problem:
        raise UnsupportedTensorRT(problem)
    return version


def _logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def build_engine(onnx_bytes: bytes, *, precision: str, max_views: int, strongly_typed: bool = True,
                 workspace_gib: float = 4.0) -> bytes:
    """A serialized engine with one optimization profile of 1 / min(6, max) / max views.

    Strongly typed (default): the graph's own types are obeyed, so an fp16/bf16 graph whose
    LayerNorms are fp32 (``export_onnx_fp32_norms``) runs exactly in those types; no precision flags.
    Weakly typed: an fp32 graph plus the FP16/BF16 builder flag and TensorRT picks per-layer
    precisions (deprecated in TensorRT 10.12, gone in 11).
    """
    check_supported()
    try:
        return _build(onnx_bytes, precision, max_views, strongly_typed, workspace_gib)
    except AttributeError as exc:
        # A TensorRT API this code relies on is missing: never a reason to fall back quietly.
        raise UnsupportedTensorRT(f"TensorRT {runtime_version()} lacks an API the engine build uses ({exc}); "
                                  f"{INSTALL_HINT}") from exc


def _build(onnx_bytes: bytes, precision: str, max_views: int, strongly_typed: bool, workspace_gib: float) -> bytes:
    import tensorrt as trt

    logger = _logger()
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if not strongly_typed:
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    tail = tuple(inp.shape)[1:]
    opt = min(OPT_VIEWS, max_views)
    profile.set_shape(inp.name, (1, *tail), (opt, *tail), (max_views, *tail))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    return bytes(serialized)


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    if trt_dtype not in table:
        raise RuntimeError(f"unsupported engine I/O dtype {trt_dtype}")
    return table[trt_dtype]


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine_bytes: bytes, *, device: torch.device, dtype: torch.dtype):
        import tensorrt as trt

        check_supported()
        self.device = torch.device(device)
        self.dtype = dtype
        self.reason = ""
        self._runtime = trt.Runtime(_logger())
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"expected one input and one output tensor, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        self.max_views = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0]

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[0] > self.max_views:
            raise ValueError(f"{pixels.shape[0]} views > the engine's maximum {self.max_views}; rebuild with --max-views")
        x = pixels.to(self.device, self.input_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise RuntimeError(f"engine rejected input shape {tuple(x.shape)}")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype,
                          device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        # Enqueue on torch's stream: ordered after the preprocessing that made x, before the LLM reads out.
        # x and out were allocated on this stream, so the caching allocator won't reuse them too early.
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out.to(self.dtype)

    def close(self) -> None:
        self.context = self.engine = self._runtime = None
