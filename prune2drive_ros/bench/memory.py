"""``prune2drive bench memory``: weight memory of the 8B DriveMM-shaped language model per precision.

Computed exactly from quantized tensors, without the 16 GB: one decoder layer at full size is
quantized for real and counted once per layer; embeddings and lm_head from their shapes.
"""

from __future__ import annotations

import argparse
import gc

import torch

from prune2drive_ros import settings

LLAMA3_8B = {"hidden": 4096, "ffn": 14336, "layers": 32, "heads": 32, "kv_heads": 8, "vocab": 128256}


def drivemm_weight_bytes(weights: str, shape: dict = LLAMA3_8B) -> dict[str, int]:
    """Exact stored bytes of DriveMM's language model (Llama-3-8B shape) in ``weights``: one decoder layer
    is built in bf16 and quantized for real with the CPU layers (their int4 bytes match tinygemm's: N*K/2
    codes + bf16 scale/zero per group; int8: N*K codes + a bf16 scale per row), then counted 32 times."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from prune2drive_ros.vlm.quantize import CPU_LAYERS, CpuInt8Linear, module_bytes

    config = LlamaConfig(hidden_size=shape["hidden"], intermediate_size=shape["ffn"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"])
    with torch.device("cpu"):
        layer = LlamaDecoderLayer(config, 0).to(torch.bfloat16)
    if weights in CPU_LAYERS:
        for name, module in list(layer.named_modules()):
            if isinstance(module, torch.nn.Linear):
                parent, _, leaf = name.rpartition(".")
                setattr(layer.get_submodule(parent), leaf, CPU_LAYERS[weights].from_linear(module))
    elif weights == "fp8":  # float8 e4m3 codes + one fp32 scale per row (torchao's weight-only layout)
        return {"decoder": shape["layers"] * sum(m.weight.numel() + 4 * m.out_features for m in layer.modules()
                                                 if isinstance(m, torch.nn.Linear)),
                "embeddings": 2 * shape["vocab"] * shape["hidden"], "lm_head": 2 * shape["vocab"] * shape["hidden"]}
    elif weights == "fp32":
        layer = layer.float()
    decoder = shape["layers"] * module_bytes(layer) + 2 * shape["hidden"]  # + the final norm
    head = torch.nn.Linear(shape["hidden"], 16, bias=False)  # lm_head's bytes scale with its rows
    per_row = module_bytes(CpuInt8Linear.from_linear(head)) / 16 if weights in CPU_LAYERS else \
        (4 if weights == "fp32" else 2) * shape["hidden"]
    embed_bytes = (4 if weights == "fp32" else 2) * shape["vocab"] * shape["hidden"]
    return {"decoder": decoder, "embeddings": embed_bytes, "lm_head": int(per_row * shape["vocab"])}


COMPARED = ("bf16", "int8", "int4", "fp8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, ("weights",),
                           weights={"nargs": "+", "help": f"precisions (default: {' '.join(COMPARED)})"})


def run(args: argparse.Namespace) -> int:
    print("DriveMM language model (Llama-3-8B shape: hidden 4096, FFN 14336, 32 layers, vocab 128256), "
          "weight bytes as stored; vision tower and projector not included")
    print(f"{'weights':<8}{'decoder GB':>12}{'embed GB':>10}{'lm_head GB':>12}{'total GB':>10}")
    for weights in args.weights if isinstance(args.weights, list) else COMPARED:
        if weights == "auto":
            continue
        parts = drivemm_weight_bytes(weights)
        gb = {k: v / 1e9 for k, v in parts.items()}
        print(f"{weights:<8}{gb['decoder']:>12.3f}{gb['embeddings']:>10.3f}{gb['lm_head']:>12.3f}{sum(gb.values()):>10.3f}")
        gc.collect()
    print("int8/int4: decoder linears in int8 per row / int4 groups of 128; lm_head int8 per row; embeddings bf16")
    return 0
