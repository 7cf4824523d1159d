"""Find and load a checkpoint: a local folder or a hub id, transformers or LLaVA-NeXT format.

Weights load only from safetensors and ``trust_remote_code`` is never set: a checkpoint is data,
not code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from prune2drive_ros.vlm.pruned_llm import SUPPORTED_TEXT_ARCHS


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    eos_token_ids: list[int]
    folder: Path
    aspect_ratio: str | None  # set for converted LLaVA-NeXT checkpoints; else from preprocessor_config.json


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available on this machine")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of auto, {', '.join(names)}; got {dtype!r}")
    return names[dtype]


def _require_every_weight(folder: Path, info: dict) -> None:
    """transformers only warns when checkpoint weights do not match the model's names and leaves those
    weights random; a model that answers from random weights must not start."""
    import transformers

    missing = sorted(info.get("missing_keys") or [])
    if missing:
        unexpected = sorted(info.get("unexpected_keys") or [])
        raise ValueError(
            f"{folder}: {len(missing)} weights of the model are not in the checkpoint for transformers "
            f"{transformers.__version__} (e.g. {missing[0]}"
            + (f"; the checkpoint has {unexpected[0]} instead" if unexpected else "")
            + "); they would be random. Re-save the checkpoint in the Hugging Face hub layout "
            "(vision_tower.vision_model.*, language_model.model.*) or use the transformers release that wrote it"
        )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_path(model: str) -> bool:
    return not _HUB_ID.match(model)


def resolve_model_folder(model: str | Path) -> Path:
    """A local folder for ``model``: a folder, or a hub id from the local Hugging Face cache; a hub id not
    in the cache is downloaded unless ``HF_HUB_OFFLINE`` is set. Failures are one line, with the fix."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if isinstance(model, Path) or _looks_like_path(str(model)):
        raise FileNotFoundError(f"model path {path} does not exist; pass a checkpoint folder or a hub id")
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
    try:  # the cache first: a car is usually offline, and a cached model must not wait on the network
        return Path(snapshot_download(str(model), allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        pass
    fix = f"download it first (`hf download {model}`) or pass a checkpoint folder"
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"model {model!r} is not a local folder and not in the Hugging Face cache "
                                f"(HF_HUB_OFFLINE is set); {fix}")
    try:
        return Path(snapshot_download(str(model), allow_patterns=patterns))
    except Exception as exc:
        # Connection errors span many lines (every retry, the whole URL); the first says what happened.
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise FileNotFoundError(f"model {model!r} is not a local folder, not in the Hugging Face cache, and could "
                                f"not be downloaded ({type(exc).__name__}: {first}); {fix}") from None


def _eos_ids(generation, tokenizer) -> list[int]:
    eos = generation.eos_token_id if generation is not None else None
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def load_checkpoint(model: str | Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoTokenizer, GenerationConfig, LlavaOnevisionForConditionalGeneration

    from prune2drive_ros.vlm.convert import is_llava_next, load_llava_next

    folder = resolve_model_folder(model)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; is it a checkpoint folder?")
    if is_llava_next(folder):
        net, tokenizer, generation, aspect = load_llava_next(folder, dtype)
    else:
        model_type = json.loads(config_path.read_text()).get("model_type")
        if model_type != "llava_onevision":
            raise ValueError(
                f"unsupported architecture {model_type!r} in {folder}; expected llava_onevision "
                "(transformers format) or llava_llama / llava_qwen (LLaVA-NeXT format)"
            )
        if not list(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder}: no .safetensors weights (other formats are not loaded, for safety)")
        net, info = LlavaOnevisionForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, use_safetensors=True, attn_implementation="sdpa", trust_remote_code=False,
            output_loading_info=True,
        )
        _require_every_weight(folder, info)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        generation = GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").is_file() else None
        aspect = None
    arch = net.config.text_config.model_type
    if arch not in SUPPORTED_TEXT_ARCHS:
        raise ValueError(f"unsupported text architecture {arch!r}; supported: {', '.join(SUPPORTED_TEXT_ARCHS)}")
    net.config.text_config._attn_implementation = "sdpa"
    net = net.to(device=device, dtype=dtype).eval()
    return LoadedModel(net, tokenizer, _eos_ids(generation, tokenizer), folder, aspect)
