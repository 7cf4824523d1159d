"""``prune2drive make-tiny-model``: a few-MB random-weight checkpoint with DriveMM's token geometry.

Widths and depths are tiny, but everything the runtime depends on is real: 384-px views cut into
14-px patches (27 x 27 = 729 tokens + one newline per view), a SigLIP vision tower, the 2-layer GELU
projector, a Llama or Qwen2 decoder, a byte-level BPE tokenizer trained on the spot with an
``<image>`` token and a Llama-3-style chat template, and safetensors weights. Tests and offline
demos use it; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from prune2drive_ros.vlm.geometry import PATCH_SIZE, VIEW_SIZE
from prune2drive_ros.vlm.preprocess import preprocessor_config
from prune2drive_ros.vlm.prompt import IMAGE_PLACEHOLDER, LLAMA3_CHAT_TEMPLATE, user_message

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    IMAGE_PLACEHOLDER,
]

_CORPUS = [
    "What are the important objects in the current scene? Those objects will be considered for the future reasoning.",
    "There is a white sedan to the front of the ego vehicle, a black SUV to the back left, and a pedestrian.",
    "Is it necessary for the ego vehicle to take <c1,CAM_FRONT,1088.3,497.5> into account?",
    "What actions could the ego vehicle take based on <c2,CAM_BACK,742.1,512.0>? Why take this action?",
    "Predict the behavior of the ego vehicle. Please select the correct answer from the following options:",
    "A. The ego vehicle is going straight. The ego vehicle is driving fast. B. turning left C. slowly D. stopped",
    "Is it safe to turn left? Yes, the road is clear. No, there is a truck in the opposite lane.",
    "traffic light, stop sign, crosswalk, lane marking, bus, bicycle, motorcycle, barrier, cone, truck, car.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 . , : ; ? ! ( ) < > [ ] ' \" - _ / \\ \n",
    user_message("What should the ego vehicle do next?"),
]


def build_tokenizer(vocab_size: int = 640, corpus: list[str] | None = None):
    """Train a byte-level BPE on a small driving corpus (or ``corpus``) and wrap it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4 if corpus is None else corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        additional_special_tokens=[IMAGE_PLACEHOLDER],
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer, text_arch: str = "llama"):
    from transformers import LlamaConfig, LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=VIEW_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
        initializer_range=0.3,
    )
    text_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Wider than the usual 0.02 so a random model's greedy output depends on its input instead
        # of repeating one token; parity and pruning tests need answers that can differ.
        initializer_range=0.3,
    )
    if text_arch == "llama":
        text = LlamaConfig(**text_kwargs)
    elif text_arch == "qwen2":
        text = Qwen2Config(**text_kwargs)
    else:
        raise ValueError(f"text_arch must be 'llama' or 'qwen2', got {text_arch!r}")
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        video_token_index=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[VIEW_SIZE, VIEW_SIZE]],
        tie_word_embeddings=False,
    )


def make_tiny_model(dst: str | Path, *, text_arch: str = "llama", fmt: str = "hf", seed: int = 0) -> Path:
    """Write a tiny checkpoint to ``dst`` (``fmt``: ``hf`` or ``llava-next``) and return the path."""
    from transformers import GenerationConfig, LlavaOnevisionForConditionalGeneration

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, text_arch)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    # Random init leaves image_newline at zeros in some versions; give it a real value to carry.
    with torch.no_grad():
        model.model.image_newline.normal_(0.0, 0.5)
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    if fmt == "hf":
        model.generation_config = generation
        model.save_pretrained(dst, safe_serialization=True)
        tokenizer.save_pretrained(dst)
        (dst / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    elif fmt == "llava-next":
        from prune2drive_ros.vlm.convert import write_llava_next_checkpoint

        write_llava_next_checkpoint(model, tokenizer, generation, dst)
    else:
        raise ValueError(f"fmt must be 'hf' or 'llava-next', got {fmt!r}")
    return dst


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dst", type=Path, help="output folder")
    parser.add_argument("--text-arch", choices=["llama", "qwen2"], default="llama")
    parser.add_argument("--format", dest="fmt", choices=["hf", "llava-next"], default="hf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace DST if it already holds a checkpoint")


def _make_room(dst: Path, force: bool) -> str | None:
    """Clear ``dst`` for a new checkpoint; the reason it cannot be, or None."""
    if not dst.exists() or (dst.is_dir() and not any(dst.iterdir())):
        return None
    if not force:
        return f"{dst} exists and is not empty; pass --force to replace it"
    # --force replaces a checkpoint (config.json and plain files), never an arbitrary folder given by mistake.
    if not (dst.is_dir() and (dst / "config.json").is_file() and all(p.is_file() for p in dst.iterdir())):
        return f"{dst} exists and is not a checkpoint folder; not deleting it, even with --force"
    shutil.rmtree(dst)
    return None


def run(args: argparse.Namespace) -> int:
    problem = _make_room(args.dst, args.force)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    path = make_tiny_model(args.dst, text_arch=args.text_arch, fmt=args.fmt, seed=args.seed)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"wrote a tiny {args.text_arch} checkpoint ({args.fmt}, {size / 2**20:.1f} MiB) to {path}")
    return 0
