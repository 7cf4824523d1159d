"""What the runtime benchmarks share: the model, the baseline, CUDA-event timing, the measurements.

Every table compares, on the same weights in one run: transformers' own ``generate`` (eager, what a
user would pick instead), our runtime dense (``pruning none``) and our runtime pruned. Without
``--model`` the weights are a random DriveMM-shaped LLaVA-OneVision (Llama text model with a 128k
vocabulary, SigLIP-so400m on a GPU); ``--hidden/--ffn/--layers/--vocab`` shrink it for a CPU.
Times come from CUDA events on a GPU (perf_counter on a CPU); a CPU's absolute times mean little,
its ratios measured side by side in one run do.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from prune2drive_ros import settings
from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.pruning import layer_flops
from prune2drive_ros.vlm.geometry import TOKENS_PER_VIEW

DRIVEMM = {"hidden": 4096, "ffn": 14336, "layers": 32, "heads": 32, "kv_heads": 8, "vocab": 128256}
SIGLIP_SO400M_LAYERS = 26  # DriveMM's tower without its last layer
CPU_DEFAULTS = {"hidden": 512, "ffn": 1792, "layers": 8}  # the "medium" model of the CPU targets
QUESTION = "What are the important objects in the current scene? Those objects will be considered for the future."


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: random DriveMM-shaped model)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32 on GPU, 8 on CPU)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default: 4096 on GPU, 512 on CPU)")
    parser.add_argument("--ffn", type=int, default=None, help="FFN size (default: 14336 on GPU, 1792 on CPU)")
    parser.add_argument("--vocab", type=int, default=None,
                        help="vocabulary (LM head) size (default: 128256, Llama 3's, on GPU; the tokenizer's on CPU)")
    parser.add_argument("--vision", choices=["so400m", "tiny"], default=None,
                        help="vision tower: DriveMM's 26-layer SigLIP-so400m or a 2-layer toy (default: so400m on GPU)")
    settings.add_arguments(parser, ("device", "dtype", "pruning"))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default: 10 on GPU, 3 on CPU)")
    parser.add_argument("--no-generate", action="store_true", help="skip the transformers generate baseline")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler GPU-busy column")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (default: torch's); 1 avoids thread-pool overhead on a busy machine")


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build parameters in ``dtype`` directly: an 8B model first built in fp32 would need 32 GB."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def drivemm_shaped_model(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, device, dtype,
                         vision: str = "tiny", vocab: int | None = None, vision_layers: int = SIGLIP_SO400M_LAYERS):
    """A random DriveMM-shaped LLaVA-OneVision (Llama text model) and its tokenizer, on ``device`` in ``dtype``.

    ``vocab`` sizes the embedding and LM head (128256 for DriveMM); token ids past the test tokenizer's
    own vocabulary decode to nothing, which is all a benchmark needs.
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    from prune2drive_ros.vlm.loading import resolve_device, resolve_dtype
    from prune2drive_ros.vlm.tiny import build_tokenizer, tiny_config

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, "llama")
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, ffn, layers
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = heads, kv_heads, hidden // heads
    text.vocab_size = max(vocab or 0, len(tokenizer))
    text.initializer_range = 0.02
    text._attn_implementation = "sdpa"
    if vision == "so400m":  # DriveMM's tower: SigLIP-so400m at 384 px, its last layer removed (26 run)
        v = config.vision_config
        v.hidden_size, v.intermediate_size, v.num_attention_heads = 1152, 4304, 16
        v.num_hidden_layers, v.initializer_range = vision_layers, 0.02
        v._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = LlavaOnevisionForConditionalGeneration(config).to(dtype).eval()
    return model, tokenizer


def drivemm_shaped_runner(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, device, dtype,
                          vision: str = "tiny", vocab: int | None = None, **settings):
    """``drivemm_shaped_model`` wrapped in a warmed-up runner (``settings``: ``RunnerConfig`` fields)."""
    from prune2drive_ros.vlm import VLMRunner
    from prune2drive_ros.vlm.preprocess import ImageSpec

    model, tokenizer = drivemm_shaped_model(hidden, ffn, layers, heads, kv_heads, device, dtype, vision, vocab)
    # No stop token: every run generates exactly the tokens asked for, so times compare.
    runner = VLMRunner(model, tokenizer, ImageSpec(), [], **settings)
    runner.warm_up()
    return runner


def on_gpu(args: argparse.Namespace) -> bool:
    return torch.cuda.is_available() and (args.device in (None, "auto") or str(args.device).startswith("cuda"))


def repeats(args: argparse.Namespace) -> int:
    return args.repeats or (10 if on_gpu(args) else 3)


def build_runner(args: argparse.Namespace, **settings):
    from prune2drive_ros.vlm import VLMRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = on_gpu(args)
    if args.model:
        return VLMRunner.from_pretrained(args.model, device=args.device, dtype=args.dtype, **settings)
    size = DRIVEMM if gpu else CPU_DEFAULTS
    hidden = args.hidden or size["hidden"]
    heads = max(1, hidden // 128)
    return drivemm_shaped_runner(hidden=hidden, ffn=args.ffn or size["ffn"], layers=args.layers or size["layers"],
                                 heads=heads, kv_heads=max(1, min(DRIVEMM["kv_heads"], heads)), device=args.device,
                                 dtype=args.dtype, vision=args.vision or ("so400m" if gpu else "tiny"),
                                 vocab=args.vocab or (DRIVEMM["vocab"] if gpu else None), **settings)


NUSCENES_FRAME = (900, 1600)


def images(seed: int = 0, size: tuple[int, int] = NUSCENES_FRAME) -> list[np.ndarray]:
    """Six random RGB frames, nuScenes camera size by default."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(NUM_CAMERAS)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def times_ms(fn: Callable[[int], object], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Milliseconds of ``fn(i)`` for i in 0..repeats-1, each call timed alone after ``warmup`` untimed calls.

    On CUDA, between two events on the current stream, started on an idle GPU: for a call that ends
    reading its result on the host (an answer) that is its wall time, host work included; for a call
    that does not (a kernel launch), it is the GPU's time. On a CPU, perf_counter.
    """
    for i in range(warmup):
        fn(-1 - i)
    out = []
    for i in range(repeats):
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(i)
            out.append((time.perf_counter() - t0) * 1000.0)
    return out


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 0) -> float:
    return statistics.median(times_ms(lambda _: fn(), repeats, device, warmup))


def gpu_busy(fn: Callable[[], object], device: torch.device) -> float | None:
    """Fraction of ``fn``'s wall time the GPU spent running kernels (torch.profiler); None off CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        sync(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    try:  # kernels (and copies) are the events that ran on the device
        busy_us = sum(e.time_range.elapsed_us() for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA)
    except (AttributeError, RuntimeError):
        return None
    return min(1.0, busy_us / wall_us) if wall_us else None


@dataclass
class Generate:
    """transformers' own ``generate`` on the runner's prompt and pixels (the baseline)."""

    runner: object
    frames: list[np.ndarray]
    question: str = QUESTION

    def inputs(self, batch: int):
        from prune2drive_ros.vlm.preprocess import preprocess

        r = self.runner
        suffix = r.tokenizer(r.prompt.suffix(self.question), add_special_tokens=False).input_ids
        ids = torch.cat([r.prefix_ids, torch.tensor(suffix, device=r.device)])[None].repeat(batch, 1)
        pixels = preprocess(self.frames, r.image_spec, r.device, r.dtype).repeat(batch, 1, 1, 1)
        size = r.image_spec.size
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
                "image_sizes": torch.tensor([[size, size]] * 6 * batch, device=r.device),
                "batch_num_images": torch.tensor([6] * batch, device=r.device)}

    @torch.inference_mode()
    def tokens(self, new_tokens: int, batch: int = 1) -> torch.Tensor:
        inputs = self.inputs(batch)
        out = self.runner.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False, pad_token_id=self.runner.tokenizer.pad_token_id)
        return out[:, inputs["input_ids"].shape[1]:]


@dataclass
class FirstToken:
    """Time to first token on fresh frames, and its parts that the bench can time from outside."""

    ttft_ms: float
    """A fresh frame set: preprocess, vision, the visual prefix (pruned at layer K), question, one token."""
    question_ms: float
    """The same question on the prefix already built: question prefill and one token."""
    pre_vision_ms: float
    """The runner's own preprocess + vision stage times of the fresh answers."""
    answers: list
    """Every answer timed, for their paths."""

    @property
    def prefix_ms(self) -> float:
        """The visual prefix alone (layers, prune), the question excluded."""
        return self.ttft_ms - self.question_ms - self.pre_vision_ms


def first_token(runner, frames: list[np.ndarray], repeats: int, tag: str = "") -> FirstToken:
    """Median TTFT over ``repeats`` fresh frame sets (a new frame key each), then on a reused prefix."""
    keep, runner.max_new_tokens = runner.max_new_tokens, 1
    fresh, reused = [], []
    try:
        t_fresh = times_ms(lambda i: fresh.append(runner.answer(frames, QUESTION, frame_key=(tag, "ttft", i))[0]),
                           repeats, runner.device)
        same = (tag, "question")
        t_reused = times_ms(lambda i: reused.append(runner.answer(frames, QUESTION, frame_key=same)[0]),
                            repeats, runner.device)
    finally:
        runner.max_new_tokens = keep
    timed_fresh = fresh[-repeats:]
    pre_vision = statistics.median(a.timings_ms["preprocess"] + a.timings_ms["vision"] for a in timed_fresh)
    if not all(a.prefix_reused for a in reused[-repeats:]):
        raise RuntimeError("the runner rebuilt the prefix for a frame key it had just built")
    return FirstToken(statistics.median(t_fresh), statistics.median(t_reused), pre_vision,
                      timed_fresh + reused[-repeats:])


def decode_step_ms(runner, frames: list[np.ndarray], batch: int, new_tokens: int, repeats: int) -> tuple[float, list]:
    """Median ms per decode step for ``batch`` questions on one (reused) prefix, and the answers timed.

    The runner's own decode stage (CUDA events on a GPU) over its ``new_tokens - 1`` steps: timing the
    whole answer from outside and subtracting a one-token answer gives the same on a quiet GPU, but
    drowns a CPU's few milliseconds per step in the noise of the question's prefill.
    """
    if new_tokens < 2:
        raise ValueError("decode needs new_tokens >= 2")
    questions = [f"{QUESTION} ({i})" for i in range(batch)]
    keep, runner.max_new_tokens = runner.max_new_tokens, new_tokens
    try:
        runner.answer(frames, questions, frame_key=("decode",))  # the prefix built, every graph replayed once
        answers = [runner.answer(frames, questions, frame_key=("decode",))[0] for _ in range(repeats)]
    finally:
        runner.max_new_tokens = keep
    return statistics.median(a.timings_ms["decode"] / (new_tokens - 1) for a in answers), answers


def streamed_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: the text decoder and LM head, not the embedding table
    (one row per token) nor the vision tower. Counted from the tensors' storage, so packed low-bit
    weights count as what they occupy."""
    from prune2drive_ros.vlm.quantize import tensor_bytes

    language = model.model.language_model
    embedding = language.embed_tokens.weight
    head = [*model.lm_head.parameters(), *model.lm_head.buffers()]
    tensors = {id(t): t for t in [*language.parameters(), *language.buffers(), *head]}
    tensors.pop(id(embedding), None)  # read as one row per token, unless tied to the head (then counted there)
    if getattr(model.lm_head, "weight", None) is embedding:
        tensors[id(embedding)] = embedding
    return sum(tensor_bytes(t) for t in tensors.values())


def tail_flops_ratio(runner, kept_per_view: list[int]) -> float:
    """Dense / pruned FLOPs of one decoder layer from K on over the visual prefix (question excluded)."""
    cfg = runner.model.config.text_config
    dims = {"hidden": cfg.hidden_size, "ffn": cfg.intermediate_size}
    dense = runner.layout.length
    kept = dense - runner.layout.patch_positions.numel() + sum(kept_per_view)
    return layer_flops(dense, **dims) / layer_flops(kept, **dims)


def drivemm_flops_ratio(kept_per_view: int = 72, text_tokens: int = 80) -> float:
    """Analytic prefill FLOPs of the real DriveMM with ``kept_per_view`` patches kept at K=1."""
    dense = NUM_CAMERAS * TOKENS_PER_VIEW + text_tokens
    kept = NUM_CAMERAS * (kept_per_view + 1) + text_tokens  # + image_newline
    f = {"hidden": DRIVEMM["hidden"], "ffn": DRIVEMM["ffn"]}
    return (layer_flops(dense, **f) + (DRIVEMM["layers"] - 1) * layer_flops(kept, **f)) / (
        DRIVEMM["layers"] * layer_flops(dense, **f))


def fmt(value, spec: str = ".1f", width: int = 9) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"
