"""ONNX Runtime backend: the exported ``VisionEncoder`` on the CPU or CUDA execution provider."""

from __future__ import annotations

import numpy as np
import torch

from prune2drive_ros.vlm.backends.export import INPUT_NAME, OUTPUT_NAME

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class OnnxRuntimeBackend:
    """``backend(pixels) -> features``; torch tensors in and out, on the model's device and dtype.

    On CUDA the session reads and writes torch memory directly (I/O binding on torch's current
    stream); on the CPU numpy views of torch tensors avoid copies.
    """

    name = "onnxruntime"

    def __init__(self, model_bytes: bytes, *, device: torch.device, dtype: torch.dtype, onnx_dtype: torch.dtype,
                 out_tail: tuple[int, int] | None = None):
        import onnxruntime as ort

        self.device = torch.device(device)
        self.dtype = dtype
        self.onnx_dtype = onnx_dtype
        self.out_tail = out_tail  # (tokens, hidden): lets CUDA runs allocate the output up front
        self.reason = ""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._device_id = index
            stream = torch.cuda.current_stream(index).cuda_stream
            providers = [("CUDAExecutionProvider", {"device_id": index, "user_compute_stream": str(stream)})]
        else:
            providers = ["CPUExecutionProvider"]
        # From bytes: the verified bytes are what runs (see cache.read_verified).
        self.session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
        self.providers = self.session.get_providers()
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise RuntimeError("onnxruntime has no CUDA execution provider here (install onnxruntime-gpu)")

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return self._run_cuda(pixels)
        x = pixels.detach().to("cpu", self.onnx_dtype).contiguous()
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        return torch.from_numpy(out).to(self.device, self.dtype)

    def _run_cuda(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device, self.onnx_dtype).contiguous()
        if self.out_tail is None:
            raise RuntimeError("output shape unknown; build the backend through load_or_build")
        out = torch.empty((x.shape[0], *self.out_tail), dtype=self.onnx_dtype, device=self.device)
        element = _NUMPY[self.onnx_dtype]
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, "cuda", self._device_id, element, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", self._device_id, element, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out.to(self.dtype)

    def close(self) -> None:
        self.session = None
