"""Export the ``VisionEncoder`` to ONNX with a dynamic batch of views.

torch 2.13's default (dynamo) exporter needs ``onnxscript``, which is not a dependency here; the
TorchScript exporter traces this static-shaped ViT reliably, so it is the one used. Tracing at two
views keeps the batch axis symbolic (a trace at one view can bake the 1 into reshapes).
"""

from __future__ import annotations

import copy
import inspect
import io
import warnings

import torch
import torch.nn.functional as F
from torch import nn

OPSET = 17
# torch.onnx.export takes `dynamo` from torch 2.5 on (default True from 2.9); before, TorchScript was the only exporter.
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "features"


def image_size(encoder: nn.Module) -> int:
    config = getattr(encoder.vision_model, "config", None)
    if config is not None and getattr(config, "image_size", None):
        return int(config.image_size)
    return 384


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters())
    return param.device, param.dtype


def export_onnx(encoder: nn.Module, dtype: torch.dtype, device: torch.device | None = None) -> bytes:
    """The ONNX model (bytes) of ``encoder`` computing in ``dtype``; input ``[views, 3, S, S]``."""
    enc_device, enc_dtype = module_device_dtype(encoder)
    device = torch.device(device) if device is not None else enc_device
    module = encoder if (enc_device, enc_dtype) == (device, dtype) else copy.deepcopy(encoder).to(device, dtype)
    return _export(module.eval(), dtype, device)


def export_onnx_fp32_norms(encoder: nn.Module, dtype: torch.dtype, device: torch.device | None = None) -> bytes:
    """Like ``export_onnx`` in ``dtype`` (fp16/bf16), but every LayerNorm computes in fp32.

    For a strongly typed TensorRT network: types come from the graph, so the norms stay fp32 even
    though everything else runs in half precision (ViT LayerNorm statistics overflow fp16).
    """
    enc_device, _ = module_device_dtype(encoder)
    device = torch.device(device) if device is not None else enc_device
    module = copy.deepcopy(encoder).to(device, dtype)
    _swap_norms(module)
    return _export(module.eval(), dtype, device)


class Fp32LayerNorm(nn.Module):
    """LayerNorm with fp32 parameters and arithmetic, casting its result back to the input dtype."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.normalized_shape = norm.normalized_shape
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().float()) if norm.weight is not None else None
        self.bias = nn.Parameter(norm.bias.detach().float()) if norm.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


def _swap_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.LayerNorm):
            setattr(module, name, Fp32LayerNorm(child))
        else:
            _swap_norms(child)


def _export(module: nn.Module, dtype: torch.dtype, device: torch.device) -> bytes:
    size = image_size(module)
    example = torch.zeros(2, 3, size, size, dtype=dtype, device=device)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python-level checks in the attention code that are constant for a ViT.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamic_axes={INPUT_NAME: {0: "views"}, OUTPUT_NAME: {0: "views"}},
            # The TorchScript exporter's constant folding fails on bf16 graphs ("ScalarType
            # ComplexDouble is an unexpected tensor scalar type"); TensorRT and onnxruntime fold anyway.
            do_constant_folding=dtype != torch.bfloat16,
            **_TORCHSCRIPT_EXPORTER,
        )
    return buffer.getvalue()
