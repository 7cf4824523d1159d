"""DriveMM's original LLaVA-NeXT checkpoint <-> transformers' LLaVA-OneVision format.

DriveMM ships as ``llava_llama`` (LLaVA-NeXT code base): a Llama decoder under ``model.*``, the
SigLIP tower under ``model.vision_tower.vision_tower.vision_model.*`` (its last layer already
removed), the projector as ``model.mm_projector.{0,2}`` and ``model.image_newline``. transformers'
``LlavaOnevisionForConditionalGeneration`` takes a Llama text config, so conversion is a key
mapping plus configs, a tokenizer with an ``<image>`` token and a chat template, and the
aspect-ratio mode. ``prune2drive convert-model SRC DST`` writes the result as safetensors;
``load_llava_next`` does the same in memory.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prune2drive_ros.vlm.geometry import PATCH_SIZE, VIEW_SIZE
from prune2drive_ros.vlm.preprocess import preprocessor_config
from prune2drive_ros.vlm.prompt import IMAGE_PLACEHOLDER, LLAMA3_CHAT_TEMPLATE

LLAVA_NEXT_MODEL_TYPES = {"llava_llama": "llama", "llava_qwen": "qwen2", "llava": "llama"}

# original prefix -> in-memory transformers prefix (first match wins)
KEY_MAP = [
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower."),
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.image_newline$", "model.image_newline"),
    (r"^model\.(embed_tokens|layers|norm)\b", r"model.language_model.\1"),
    (r"^lm_head\.", "lm_head."),
]

# SigLIP-so400m at 384 px: the tower LLaVA-OneVision / DriveMM use (attention heads are not
# recoverable from weight shapes, so they come from the named tower).
SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "patch_size": PATCH_SIZE,
          "image_size": VIEW_SIZE, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"}

_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "rope_theta", "rope_scaling",
              "rope_parameters", "hidden_act", "attention_bias", "mlp_bias", "head_dim", "bos_token_id",
              "eos_token_id", "pad_token_id", "tie_word_embeddings")


def is_llava_next(folder: Path) -> bool:
    config = Path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") in LLAVA_NEXT_MODEL_TYPES


def map_key(key: str) -> str | None:
    for pattern, replacement in KEY_MAP:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights (other weight formats are not loaded, for safety)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _vision_config(orig: dict, state: dict[str, torch.Tensor]):
    from transformers import SiglipVisionConfig

    layer_ids = {int(m.group(1)) for k in state if (m := re.search(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    explicit = orig.get("vision_config")
    if explicit:
        params = dict(explicit)
    elif "so400m" in str(orig.get("mm_vision_tower", "")):
        params = dict(SO400M)
    else:
        raise ValueError(f"unsupported vision tower {orig.get('mm_vision_tower')!r}: only SigLIP-so400m is known")
    params.update(num_hidden_layers=len(layer_ids), vision_use_head=False)
    params.pop("model_type", None)
    return SiglipVisionConfig(**params)


def _text_config(orig: dict):
    from transformers import LlamaConfig, Qwen2Config

    arch = LLAVA_NEXT_MODEL_TYPES[orig["model_type"]]
    params = {k: orig[k] for k in _TEXT_KEYS if k in orig}
    return (LlamaConfig if arch == "llama" else Qwen2Config)(**params)


def _ensure_image_token(tokenizer, state: dict[str, torch.Tensor]) -> int:
    """Add ``<image>`` when the tokenizer lacks it (LLaVA-NeXT uses id -200 instead) and grow the embeddings."""
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        weight = state[key]
        if weight.shape[0] <= image_id:
            # The placeholder's embedding is always replaced by image features; the mean keeps the
            # lm_head from ever preferring it.
            extra = weight.mean(0, keepdim=True).expand(image_id + 1 - weight.shape[0], -1)
            state[key] = torch.cat([weight, extra])
    return image_id


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Recreate the non-persistent buffers (RoPE frequencies, position ids) left on the meta device."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name in ("inv_freq", "original_inv_freq"):
                fresh = type(module)(config=module.config)
                value = getattr(fresh, name)
            elif name == "position_ids":
                value = torch.arange(buf.shape[-1]).expand(buf.shape)
            else:
                raise ValueError(f"cannot materialize buffer {name!r} of {type(module).__name__}")
            module.register_buffer(name, value, persistent=False)


def load_llava_next(folder: str | Path, dtype: torch.dtype | None = None):
    """Build (model, tokenizer, generation_config, aspect_ratio) from a LLaVA-NeXT-format folder."""
    from transformers import AutoTokenizer, GenerationConfig, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    folder = Path(folder)
    orig = json.loads((folder / "config.json").read_text())
    if orig.get("model_type") not in LLAVA_NEXT_MODEL_TYPES:
        raise ValueError(f"{folder}: model_type {orig.get('model_type')!r} is not a LLaVA-NeXT checkpoint")
    if orig.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ValueError(f"unsupported projector {orig['mm_projector_type']!r}: only mlp2x_gelu is converted")
    state = _load_state(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    image_id = _ensure_image_token(tokenizer, state)

    text = _text_config(orig)
    text.vocab_size = state["model.embed_tokens.weight"].shape[0]
    config = LlavaOnevisionConfig(
        vision_config=_vision_config(orig, state),
        text_config=text,
        image_token_index=image_id,
        video_token_index=image_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,  # the tower already lost its last layer
        image_grid_pinpoints=orig.get("image_grid_pinpoints") or [[VIEW_SIZE, VIEW_SIZE]],
        vision_aspect_ratio=orig.get("image_aspect_ratio", "anyres_max_9")
        if str(orig.get("image_aspect_ratio", "")).startswith("anyres_max") else "anyres_max_9",
        tie_word_embeddings=bool(orig.get("tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(config)
    mapped, unknown = {}, []
    for key, tensor in state.items():
        new = map_key(key)
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = tensor if dtype is None else tensor.to(dtype)
    if config.tie_word_embeddings:
        mapped.pop("lm_head.weight", None)
    expected = set(model.state_dict())
    # post_layernorm is not used (features come before it) and LLaVA-NeXT checkpoints may omit it.
    missing = {k for k in expected - set(mapped) if "post_layernorm" not in k}
    if unknown or missing:
        raise ValueError(f"{folder}: cannot map weights; unknown: {unknown[:5]} missing: {sorted(missing)[:5]}")
    for key in expected - set(mapped):
        mapped[key] = torch.ones(model.state_dict()[key].shape) if key.endswith("weight") else torch.zeros(
            model.state_dict()[key].shape)
    model.load_state_dict(mapped, strict=True, assign=True)
    _materialize_buffers(model)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()

    gen_path = folder / "generation_config.json"
    generation = GenerationConfig.from_pretrained(folder) if gen_path.is_file() else GenerationConfig()
    if generation.eos_token_id is None:
        eos = [tokenizer.eos_token_id]
        if "<|eot_id|>" in tokenizer.get_vocab():
            eos.append(tokenizer.convert_tokens_to_ids("<|eot_id|>"))
        generation.eos_token_id = eos
    aspect = "pad" if orig.get("image_aspect_ratio") == "pad" else "square"
    return model, tokenizer, generation, aspect


def write_llava_next_checkpoint(model, tokenizer, generation, dst: Path) -> None:
    """Write a transformers LLaVA-OneVision model in DriveMM's original layout (for tests and demos)."""
    inverse = [
        ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
        ("model.language_model.", "model."),
    ]
    state = {}
    for key, tensor in model.state_dict().items():
        if "post_layernorm" in key:
            continue
        for old, new in inverse:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state[key] = tensor.contiguous()
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    text = model.config.text_config.to_dict()
    vision = model.config.vision_config.to_dict()
    orig = {k: text[k] for k in _TEXT_KEYS if k in text}
    arch = {"llama": "llava_llama", "qwen2": "llava_qwen"}[text["model_type"]]
    orig.update(
        architectures=["LlavaLlamaForCausalLM" if arch == "llava_llama" else "LlavaQwenForCausalLM"],
        model_type=arch,
        mm_vision_tower="tiny-siglip",
        mm_projector_type="mlp2x_gelu",
        mm_hidden_size=vision["hidden_size"],
        mm_vision_select_layer=-1,
        mm_vision_select_feature="patch",
        mm_patch_merge_type="spatial_unpad",
        image_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=model.config.image_grid_pinpoints,
        vision_config={k: vision[k] for k in SO400M if k in vision},
    )
    (dst / "config.json").write_text(json.dumps(orig, indent=2))
    tokenizer.save_pretrained(dst)
    generation.save_pretrained(dst)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="LLaVA-NeXT-format checkpoint folder (e.g. DriveMM)")
    parser.add_argument("dst", type=Path, help="output folder (transformers format, safetensors)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="store weights in this dtype (default: as in the source)")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty DST")


def run(args: argparse.Namespace) -> int:
    if not args.src.is_dir():
        raise SystemExit(f"error: {args.src} is not a folder")
    if args.dst.exists() and any(args.dst.iterdir()) and not args.force:
        raise SystemExit(f"error: {args.dst} is not empty; pass --force to overwrite")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer, generation, aspect = load_llava_next(args.src, dtype)
    args.dst.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation
    model.save_pretrained(args.dst, safe_serialization=True)
    tokenizer.save_pretrained(args.dst)
    (args.dst / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(aspect), indent=2))
    print(f"converted {args.src} -> {args.dst} (image aspect ratio: {aspect})")
    return 0
