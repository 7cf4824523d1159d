"""Weight-only quantization of the language model: the ``weights`` setting.

Decode on a Jetson is bound by how many weight bytes each token streams, so the decoder layers'
linear weights are stored in 8 or 4 bits and dequantized inside the matmul; activations keep the
model's dtype. What is quantized, per precision:

- every ``nn.Linear`` of the decoder layers (after any q/k/v or gate/up fusion: this runs on the
  model as the runtime will call it);
- ``lm_head`` in int8 per row (int8 and int4): at DriveMM's vocabulary it is 1 GB in bf16, the
  difference between meeting the memory targets and not; per-row int8 is the precision llama.cpp
  and TensorRT-LLM keep the output layer in, and the test-bed study measures the result;
- never the vision tower, the projector, the embeddings or the norms.

Two implementations of one scheme (int8: symmetric per output row; int4: asymmetric, groups of
``INT4_GROUP`` along the input, tinygemm's (q - 8) * scale + zero):

- CUDA: torchao (``Int8WeightOnlyConfig``, ``Int4WeightOnlyConfig`` in tinygemm's tile layout,
  ``Float8WeightOnlyConfig``): tensor subclasses on the ``nn.Linear`` weights.
- CPU: torch's own packed kernels (``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``), which
  torchao 0.18 no longer wraps for CPU int4. They run fast with bf16 activations only, so the
  quantized layers compute in bf16 and hand back the model's dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prune2drive_ros.settings import WEIGHT_CHOICES

log = logging.getLogger(__name__)

FLOAT_WEIGHTS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZED_WEIGHTS = ("int8", "int4", "fp8")
INT4_GROUPS = (128, 64, 32)  # the largest that divides a layer's input width is used
INT4_MIN_CAPABILITY = (8, 0)  # tinygemm's tensor-core kernel
FP8_MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada, Hopper, Thor (Orin is 8.7)
MIN_TORCHAO = (0, 16)  # Int8Tensor (version 2) and the safetensors helpers the cache uses


class WeightsUnsupported(ValueError):
    """This device cannot run the requested precision (the message names the device and what it can)."""


# -- what this machine can run -------------------------------------------------------------------
def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor})"


def torchao_version() -> str | None:
    try:
        import torchao
    except Exception:  # not installed, or built for another torch
        return None
    return torchao.__version__


def weights_problem(weights: str, device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """Why ``device`` cannot run ``weights`` (computing in ``dtype``), or None when it can."""
    device = torch.device(device)
    if weights in ("auto", "fp32"):
        return None
    if weights in FLOAT_WEIGHTS:
        if device.type == "cuda" and weights == "bf16" and not torch.cuda.is_bf16_supported():
            return "bf16 needs compute capability >= 8.0"
        return None
    if weights not in QUANTIZED_WEIGHTS:
        return f"unknown precision {weights!r}; choose from {', '.join(WEIGHT_CHOICES)}"
    if device.type == "cpu":
        if weights == "fp8":
            return "fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada, Hopper, Thor)"
        op = "_weight_int8pack_mm" if weights == "int8" else "_weight_int4pack_mm_for_cpu"
        return None if hasattr(torch.ops.aten, op) else f"this torch {torch.__version__} has no aten.{op} kernel"
    if device.type != "cuda":
        return f"{weights} weights run on cuda or cpu, not {device.type}"
    version = torchao_version()
    if version is None:
        return f"{weights} on CUDA needs torchao (pip install '.[quant]')"
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < MIN_TORCHAO:
        return f"{weights} on CUDA needs torchao >= {'.'.join(map(str, MIN_TORCHAO))}, found {version}"
    capability = torch.cuda.get_device_capability(device.index if device.index is not None else None)
    if weights == "fp8" and capability < FP8_MIN_CAPABILITY:
        return "fp8 needs compute capability >= 8.9 (Ada, Hopper, Thor; Orin is 8.7)"
    if weights == "int4":
        if capability < INT4_MIN_CAPABILITY:
            return "int4 needs compute capability >= 8.0 (torchao's tinygemm kernel)"
        if dtype is not None and dtype != torch.bfloat16:
            return f"int4 on CUDA computes in bf16 only (tinygemm), not {str(dtype).removeprefix('torch.')}"
    return None


def supported_weights(device: torch.device) -> list[str]:
    return [w for w in WEIGHT_CHOICES[1:] if weights_problem(w, device) is None]


def check_weights(weights: str, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Raise ``WeightsUnsupported`` (one line: the device, the reason, what it supports) if it can't run."""
    problem = weights_problem(weights, device, dtype)
    if problem is not None:
        raise WeightsUnsupported(f"weights={weights} cannot run on {_device_name(torch.device(device))}: {problem}; "
                                 f"this device supports: {', '.join(supported_weights(torch.device(device)))}")


# -- CPU layers on torch's packed kernels --------------------------------------------------------
class CpuInt8Linear(nn.Module):
    """y = x @ (q * scale).T + bias with q int8 per output row (aten._weight_int8pack_mm, bf16)."""

    def __init__(self, qweight: Tensor, scale: Tensor, bias: Tensor | None):
        super().__init__()
        self.register_buffer("qweight", qweight)  # [N, K] int8
        self.register_buffer("scale", scale)  # [N] bf16
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> CpuInt8Linear:
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scale.to(torch.bfloat16), _bias(linear))

    def forward(self, x: Tensor) -> Tensor:
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.qweight, self.scale)
        return _finish(y, x, self.bias)


class CpuInt4Linear(nn.Module):
    """4-bit groups along the input, tinygemm convention w = (q - 8) * scale + zero
    (aten._weight_int4pack_mm_for_cpu, bf16)."""

    def __init__(self, packed: Tensor, scales_zeros: Tensor, bias: Tensor | None, in_features: int):
        super().__init__()
        self.register_buffer("packed", packed)  # [N, K/2] uint8
        self.register_buffer("scales_zeros", scales_zeros)  # [K/group, N, 2] bf16
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = in_features, packed.shape[0]
        self.group_size = in_features // scales_zeros.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> CpuInt4Linear:
        q, scales_zeros = int4_groups(linear.weight.detach(), int4_group(linear.in_features))
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.cpu(), 1)
        return cls(packed, scales_zeros.to(torch.bfloat16), _bias(linear), linear.in_features)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.packed,
                                                       self.group_size, self.scales_zeros)
        return _finish(y, x, self.bias)


def _bias(linear: nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.detach().clone()


def _finish(y: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
    y = y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])
    return y if bias is None else y + bias


def int4_group(in_features: int) -> int | None:
    return next((g for g in INT4_GROUPS if in_features % g == 0), None)


def int4_groups(weight: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """Asymmetric 4-bit codes [N, K] int32 and tinygemm's scales/zeros [K/group, N, 2] (float32)."""
    n, k = weight.shape
    w = weight.float().reshape(n, k // group, group)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-8)
    q = torch.round((w - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    zero = low + 8 * scale  # tinygemm subtracts 8 from the code before scaling
    return q, torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()


CPU_LAYERS = {"int8": CpuInt8Linear, "int4": CpuInt4Linear}


# -- what gets quantized -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    name: str  # the module's name in the LLaVA model
    precision: str  # int8 | int4 | fp8


def _fits(linear: nn.Linear, precision: str, device: torch.device) -> bool:
    if precision != "int4":
        return True
    # The packed int4 kernels tile the output by 16 (CPU) / 8 (tinygemm) rows.
    return int4_group(linear.in_features) is not None and linear.out_features % 16 == 0


def targets(model: nn.Module, weights: str) -> list[Target]:
    """The linear layers ``weights`` quantizes, in module order; layers a kernel can't tile stay as they are."""
    device = next(model.parameters()).device
    chosen = []
    layers = model.model.language_model.layers
    for name, module in layers.named_modules():
        if isinstance(module, nn.Linear) and _fits(module, weights, device):
            chosen.append(Target(f"model.language_model.layers.{name}", weights))
    if weights in ("int8", "int4") and isinstance(model.lm_head, nn.Linear):
        chosen.append(Target("lm_head", "int8"))
    return chosen


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.model.language_model.layers.named_modules() if isinstance(m, nn.Linear)]


def _torchao_config(precision: str, linear: nn.Linear):
    from torchao.quantization import Float8WeightOnlyConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if precision == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False, version=2)
    if precision == "int4":
        return Int4WeightOnlyConfig(group_size=int4_group(linear.in_features), set_inductor_config=False,
                                    int4_packing_format="tile_packed_to_4d")
    return Float8WeightOnlyConfig(set_inductor_config=False)


def uses_torchao(device: torch.device) -> bool:
    """torchao's tensor subclasses on CUDA; the aten CPU layers elsewhere."""
    return device.type == "cuda"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def quantize_model(model: nn.Module, weights: str) -> list[Target]:
    """Quantize ``model``'s language-model linears in place (see the module docstring); returns what was done."""
    device = next(model.parameters()).device
    chosen = targets(model, weights)
    for target in chosen:
        linear = model.get_submodule(target.name)
        if not uses_torchao(device):
            _set_module(model, target.name, CPU_LAYERS[target.precision].from_linear(linear))
        else:
            from torchao.quantization import quantize_

            quantize_(linear, _torchao_config(target.precision, linear))
    return chosen


# -- the quantized state as plain tensors (the cache's content) --------------------------------------
def export_state(model: nn.Module, chosen: list[Target]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Plain tensors (and string metadata) that ``import_state`` turns back into the quantized layers."""
    device = next(model.parameters()).device
    if not uses_torchao(device):
        tensors = {f"{t.name}.{k}": v.contiguous() for t in chosen
                   for k, v in model.get_submodule(t.name).state_dict().items()}
        return tensors, {"format": "cpu"}
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tensors, metadata = flatten_tensor_state_dict({f"{t.name}.weight": model.get_submodule(t.name).weight.detach()
                                                   for t in chosen})
    return tensors, {**metadata, "format": "torchao"}


@torch.no_grad()
def import_state(model: nn.Module, chosen: list[Target], tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Install a state from ``export_state`` (same model, same targets) in place of quantizing again.
    Everything is checked before the model changes: a state that does not fit raises and leaves it as it was."""
    device = next(model.parameters()).device
    if metadata.get("format") != ("torchao" if uses_torchao(device) else "cpu"):
        raise ValueError(f"quantized state in format {metadata.get('format')!r} does not fit a {device.type} model")
    if not uses_torchao(device):
        built = {t.name: _cpu_layer(t, model.get_submodule(t.name), tensors) for t in chosen}
    else:
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        meta = {k: v for k, v in metadata.items() if k != "format"}
        weights, _ = unflatten_tensor_state_dict({k: v.to(device) for k, v in tensors.items()}, meta)
        built = {t.name: weights[f"{t.name}.weight"] for t in chosen}
    for t in chosen:
        linear, new = model.get_submodule(t.name), built[t.name]
        shape = (new.out_features, new.in_features) if isinstance(new, nn.Module) else tuple(new.shape)
        if shape != tuple(linear.weight.shape):
            raise ValueError(f"quantized {t.name} has shape {shape}, the model {tuple(linear.weight.shape)}")
    for t in chosen:
        if isinstance(built[t.name], nn.Module):
            _set_module(model, t.name, built[t.name])
        else:
            model.get_submodule(t.name).weight = nn.Parameter(built[t.name], requires_grad=False)


def _cpu_layer(target: Target, linear: nn.Linear, tensors: dict[str, Tensor]) -> nn.Module:
    part = {k.removeprefix(f"{target.name}."): v for k, v in tensors.items() if k.startswith(f"{target.name}.")}
    if target.precision == "int8":
        return CpuInt8Linear(part["qweight"], part["scale"], part.get("bias"))
    return CpuInt4Linear(part["packed"], part["scales_zeros"], part.get("bias"), linear.in_features)


# -- sizes ---------------------------------------------------------------------------------------------
def _plain_parts(tensor: Tensor) -> Iterator[Tensor]:
    """The plain tensors holding a (possibly torchao subclass) tensor's bytes."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (Tensor, nn.Parameter):
        yield tensor
        return
    names, _ = tensor.__tensor_flatten__()
    for name in names:
        yield from _plain_parts(getattr(tensor, name))


def tensor_bytes(tensor: Tensor) -> int:
    return sum(p.numel() * p.element_size() for p in _plain_parts(tensor))


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers as stored (quantized ones at their packed size)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total


def language_model_bytes(model: nn.Module) -> int:
    """Weight bytes of the language model: embeddings, decoder layers, final norm and lm_head."""
    lm = model.model.language_model
    shared = getattr(model.lm_head, "weight", None) is getattr(lm.embed_tokens, "weight", None)
    return module_bytes(lm) + (0 if shared else module_bytes(model.lm_head))
