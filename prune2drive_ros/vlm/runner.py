"""``VLMRunner``: six camera views and questions in, answers with timings and pruning stats out.

The flow per frame set:

    preprocess -> vision encoder (backend) -> visual prefix prefill, pruned at layer K
               -> per-question suffix prefill (batched, on the shared prefix) -> greedy/sampled decode

With a question-independent pruner the pruned visual prefix and its KV cache are computed once per
frame set and reused for every question about it; question-dependent pruners (FastV, MVPruner)
prefill the whole prompt per question.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.pruning import get_pruner, layer_flops, view_budgets
from prune2drive_ros.vlm.backends import make_vision_backend
from prune2drive_ros.vlm.loading import load_checkpoint, resolve_device, resolve_dtype
from prune2drive_ros.vlm.preprocess import DEFAULT_MAX_IMAGE_SIDE, ImageSpec, preprocess, validate_images
from prune2drive_ros.vlm.prompt import IMAGE_PLACEHOLDER, split_prompt
from prune2drive_ros.vlm.pruned_llm import PrefillResult, PrunedLanguageModel, VisualLayout
from prune2drive_ros.vlm.vision import VisionEncoder

DEFAULT_MAX_QUESTION_TOKENS = 512


@dataclass
class Answer:
    text: str
    timings_ms: dict[str, float]
    kept_per_view: list[int]
    visual_tokens: int
    flops: float
    flops_dense: float
    prefix_reused: bool
    kept_indices: list[list[int]] = field(repr=False, default_factory=list)
    token_ids: list[int] = field(repr=False, default_factory=list)

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.flops_dense if self.flops_dense else 1.0


class _Timer:
    """Wall-clock stage timer that waits for the GPU, so each stage is charged its own work."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ms: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                timer.sync()
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.sync()
                timer.ms[name] = timer.ms.get(name, 0.0) + (time.perf_counter() - self.t0) * 1000.0

        return _Stage()


class VLMRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        image_spec: ImageSpec,
        eos_token_ids: Sequence[int],
        *,
        pruning: str = "tfps",
        retain: float | None = 0.1,
        view_ratios: Sequence[float] | None = None,
        prune_layer: int = 1,
        vision_backend: str = "torch",
        engine_dir=None,
        strict_backend: bool = False,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
        max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
        model_dir=None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        self.eos_token_ids = list(eos_token_ids)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.llm = PrunedLanguageModel(model)
        if not 0 <= prune_layer < self.llm.num_layers:
            raise ValueError(f"prune_layer must be in [0, {self.llm.num_layers - 1}], got {prune_layer}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.pruner = get_pruner(pruning)
        self.prune_layer = prune_layer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.max_question_tokens = max_question_tokens
        self.max_image_side = max_image_side

        self.encoder = VisionEncoder(model).eval()
        self.vision = make_vision_backend(vision_backend, self.encoder, device=self.device, dtype=self.dtype,
                                          engine_dir=engine_dir, strict=strict_backend, model_dir=model_dir)
        self._build_prompt()
        self.set_budgets(retain=retain, view_ratios=view_ratios)
        self._prefix: tuple[Hashable, tuple, PrefillResult] | None = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model,
        *,
        pruning: str = "tfps",
        retain: float | None = 0.1,
        view_ratios: Sequence[float] | None = None,
        prune_layer: int = 1,
        device=None,
        dtype=None,
        vision_backend: str = "torch",
        engine_dir=None,
        max_new_tokens: int = 64,
        **kwargs,
    ) -> VLMRunner:
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        loaded = load_checkpoint(model, device, dtype)
        spec = ImageSpec.from_checkpoint(loaded.folder, loaded.model.config.vision_config.image_size)
        if loaded.aspect_ratio is not None:
            spec = ImageSpec(spec.size, spec.mean, spec.std, loaded.aspect_ratio)
        return cls(loaded.model, loaded.tokenizer, spec, loaded.eos_token_ids, pruning=pruning, retain=retain,
                   view_ratios=view_ratios, prune_layer=prune_layer, vision_backend=vision_backend,
                   engine_dir=engine_dir, max_new_tokens=max_new_tokens, model_dir=loaded.folder, **kwargs)

    def _build_prompt(self) -> None:
        config = self.model.config
        grid = config.vision_config.image_size // config.vision_config.patch_size
        self.tokens_per_view = grid * grid
        self.prompt = split_prompt(self.tokenizer)
        pieces = self.prompt.prefix.split(IMAGE_PLACEHOLDER)
        if len(pieces) != NUM_CAMERAS + 1:
            raise ValueError("the prompt prefix must hold one image placeholder per camera")
        ids: list[int] = []
        patch_positions = []
        for i, piece in enumerate(pieces):
            ids += self.tokenizer(piece, add_special_tokens=False).input_ids
            if i < NUM_CAMERAS:
                patch_positions.append(list(range(len(ids), len(ids) + self.tokens_per_view)))
                ids += [config.image_token_index] * (self.tokens_per_view + 1)  # patches + image_newline
        self.prefix_ids = torch.tensor(ids, device=self.device)
        self.layout = VisualLayout(torch.tensor(patch_positions, device=self.device), len(ids))
        self.image_mask = self.prefix_ids == config.image_token_index

    def set_budgets(self, retain: float | None = None, view_ratios: Sequence[float] | None = None) -> None:
        """Change the per-view token budgets (takes effect on the next frame set)."""
        if view_ratios:
            budgets = view_budgets(self.tokens_per_view, view_ratios=list(view_ratios))
        else:
            budgets = view_budgets(self.tokens_per_view, retain=1.0 if retain is None else retain)
        self.budgets = list(budgets)
        self._prefix = None

    def close(self) -> None:
        """Drop the model and cached state; frees GPU memory."""
        self._prefix = None
        self.vision.close()
        self.model = self.llm = self.encoder = self.vision = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def vision_backend_name(self) -> str:
        return self.vision.name

    # -- input checks --------------------------------------------------------------------------
    def _question_ids(self, questions: Sequence[str]) -> list[list[int]]:
        if isinstance(questions, str):
            questions = [questions]
        if not questions:
            raise ValueError("at least one question is required")
        out = []
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise ValueError("questions must be non-empty strings")
            if len(q) > 16 * self.max_question_tokens:  # don't tokenize megabytes to find out
                raise ValueError(f"question is {len(q)} characters; the bound is {self.max_question_tokens} tokens")
            ids = self.tokenizer(self.prompt.suffix(q.strip()), add_special_tokens=False).input_ids
            if len(ids) > self.max_question_tokens:
                raise ValueError(f"question is {len(ids)} tokens; the bound is {self.max_question_tokens}")
            out.append(ids)
        return out

    @staticmethod
    def frame_key(images: Sequence[np.ndarray]) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for image in images:
            digest.update(str(image.shape).encode())
            digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    # -- the main entry point ------------------------------------------------------------------
    @torch.inference_mode()
    def answer(self, images: Sequence[np.ndarray], questions, *, frame_key: Hashable | None = None) -> list[Answer]:
        """Answer ``questions`` about one synchronized set of six RGB views (camera order)."""
        validate_images(images, self.max_image_side)
        suffixes = self._question_ids(questions)
        timer = _Timer(self.device)
        t_start = time.perf_counter()
        key = (frame_key if frame_key is not None else self.frame_key(images), tuple(self.budgets))

        reused = self._prefix is not None and self._prefix[0] == key[0] and self._prefix[1] == key[1]
        embeds = None
        if not reused or self.pruner.question_dependent:
            with timer.stage("preprocess"):
                pixels = preprocess(images, self.image_spec, self.device, self.dtype)
            with timer.stage("vision"):
                features = self.vision(pixels)
            embeds = self._prefix_embeds(features)

        if self.pruner.question_dependent:
            results = [self._answer_alone(embeds, ids, timer) for ids in suffixes]
            texts_and_ids, prefills = [r[0] for r in results], [r[1] for r in results]
            shared = [False] * len(suffixes)
        else:
            if not reused:
                with timer.stage("prefill"):
                    prefix = self.llm.prefill(embeds, self.layout, self.pruner, self.budgets, self.prune_layer)
                timer.ms["prefill"] -= prefix.prune_ms
                timer.ms["prune"] = prefix.prune_ms
                self._prefix = (key[0], key[1], prefix)
            prefix = self._prefix[2]
            texts_and_ids = self._answer_batch(prefix, suffixes, timer)
            prefills = [prefix] * len(suffixes)
            shared = [reused or i > 0 for i in range(len(suffixes))]

        total_ms = (time.perf_counter() - t_start) * 1000.0
        timings = {k: timer.ms.get(k, 0.0) for k in ("preprocess", "vision", "prune", "prefill", "decode")}
        timings["total"] = total_ms
        return [
            self._make_answer(text, ids, prefill, len(suffix), timings, reuse)
            for (text, ids), prefill, suffix, reuse in zip(texts_and_ids, prefills, suffixes, shared)
        ]

    # -- steps ---------------------------------------------------------------------------------
    def _prefix_embeds(self, features: torch.Tensor) -> torch.Tensor:
        embeds = self.llm.embed_tokens(self.prefix_ids[None]).clone()
        embeds[0, self.image_mask] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
        return embeds

    def _answer_batch(self, prefix: PrefillResult, suffixes: list[list[int]], timer: _Timer):
        """Prefill every question on the shared prefix at once, then decode them as one batch."""
        batch, longest = len(suffixes), max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with timer.stage("prefill"):
            ids = torch.full((batch, longest), pad, dtype=torch.long, device=self.device)
            valid = torch.zeros((batch, longest), dtype=torch.bool, device=self.device)
            for i, s in enumerate(suffixes):
                ids[i, : len(s)] = torch.tensor(s, device=self.device)
                valid[i, : len(s)] = True
            lengths = valid.sum(1)
            cache = prefix.cache.fork(batch, longest + self.max_new_tokens)
            positions = prefix.prompt_length + torch.arange(longest, device=self.device).expand(batch, -1)
            hidden = self.llm.extend(cache, self.llm.embed_tokens(ids), positions, valid)
            last = hidden[torch.arange(batch, device=self.device), lengths - 1]
        with timer.stage("decode"):
            tokens = self._decode(cache, last, prefix.prompt_length + lengths, valid)
        return [(self._text(t), t) for t in tokens]

    def _answer_alone(self, prefix_embeds: torch.Tensor, suffix: list[int], timer: _Timer):
        """Question-dependent pruning: the whole prompt is prefilled (and pruned) for this question."""
        ids = torch.tensor(suffix, device=self.device)
        embeds = torch.cat([prefix_embeds, self.llm.embed_tokens(ids[None])], dim=1)
        query_positions = None  # FastV: the last prompt token
        if self.pruner.attention_queries == "instruction":
            query_positions = torch.arange(prefix_embeds.shape[1], embeds.shape[1], device=self.device)
        with timer.stage("prefill"):
            result = self.llm.prefill(embeds, self.layout, self.pruner, self.budgets, self.prune_layer,
                                      query_rows=query_positions)
        timer.ms["prefill"] -= result.prune_ms
        timer.ms["prune"] = timer.ms.get("prune", 0.0) + result.prune_ms
        with timer.stage("decode"):
            cache = result.cache.fork(1, self.max_new_tokens)
            valid = torch.zeros((1, 0), dtype=torch.bool, device=self.device)
            length = torch.tensor([result.prompt_length], device=self.device)
            tokens = self._decode(cache, result.last_hidden, length, valid)[0]
        return (self._text(tokens), tokens), result

    def _next_token(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.llm.logits(hidden)
        if self.temperature <= 0:
            return logits.argmax(-1)
        probs = (logits / self.temperature).softmax(-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def _decode(self, cache, last_hidden: torch.Tensor, next_positions: torch.Tensor, tail_valid: torch.Tensor):
        """Generate up to max_new_tokens per sequence; a sequence stops at its first stop token."""
        batch = last_hidden.shape[0]
        eos = torch.tensor(self.eos_token_ids, device=self.device)
        token = self._next_token(last_hidden)
        out = [token]
        done = torch.isin(token, eos)
        for step in range(1, self.max_new_tokens):
            if bool(done.all()):  # one host sync per step is inherent to stopping early
                break
            tail_valid = torch.cat([tail_valid, torch.ones((batch, 1), dtype=torch.bool, device=self.device)], 1)
            positions = (next_positions + step - 1)[:, None]
            hidden = self.llm.extend(cache, self.llm.embed_tokens(token[:, None]), positions, tail_valid)
            token = self._next_token(hidden[:, -1])
            out.append(token)
            done |= torch.isin(token, eos)
        generated = torch.stack(out, 1).tolist()
        result = []
        stops = set(self.eos_token_ids)
        for seq in generated:
            cut = next((i + 1 for i, t in enumerate(seq) if t in stops), len(seq))
            result.append(seq[:cut])
        return result

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.eos_token_ids], skip_special_tokens=True).strip()

    def _make_answer(self, text, ids, prefill: PrefillResult, suffix_len: int, timings, reused: bool) -> Answer:
        cfg = self.model.config.text_config
        prefix_len = self.layout.length
        # Question-dependent prefills already count the question in tokens_per_layer.
        extra = 0 if prefill.prompt_length > prefix_len else suffix_len
        dense = (prefill.prompt_length + extra)
        dims = {"hidden": cfg.hidden_size, "ffn": cfg.intermediate_size}
        flops_dense = len(prefill.tokens_per_layer) * layer_flops(dense, **dims)
        flops = sum(layer_flops(n + extra, **dims) for n in prefill.tokens_per_layer)
        kept = [k.tolist() for k in prefill.kept]
        return Answer(
            text=text,
            timings_ms=dict(timings),
            kept_per_view=[len(k) for k in kept],
            visual_tokens=self.layout.patch_positions.numel() + NUM_CAMERAS,  # patches + newlines
            flops=float(flops),
            flops_dense=float(flops_dense),
            prefix_reused=reused,
            kept_indices=kept,
            token_ids=list(ids),
        )
