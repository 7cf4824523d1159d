"""``VLMRunner``: six camera views and questions in, answers with timings and pruning stats out.

The flow per frame set, top to bottom in ``answer``:

    images --preprocess--> pixels --vision backend--> features --> prompt embeds
           --prefill pruned at layer K--> Prefix (shared by every question about this frame set)
           --DecodeBatch.start: the questions, batched--> --DecodeBatch.generate--> answers

A question-independent plan (``PrunePlan.static``) prunes the visual prefix once per frame set and
reuses it for every question; its prefill and the token step run as CUDA graphs on a GPU, captured
in ``warm_up`` (called by ``from_pretrained``/``from_config`` and after a budget change). Question-
dependent pruners (FastV, MVPruner) prefill the whole prompt per question, eagerly.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Hashable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.pruning import get_pruner, layer_flops, view_budgets
from prune2drive_ros.vlm.backends import make_vision_backend
from prune2drive_ros.vlm.config import DEFAULT_MAX_QUESTION_TOKENS, RunnerConfig
from prune2drive_ros.vlm.decode import BATCH_BUCKETS, DecodeBatch, Sampler, bucket, question_capacity
from prune2drive_ros.vlm.graphs import GraphSet
from prune2drive_ros.vlm.loading import load_checkpoint, resolve_device, resolve_dtype
from prune2drive_ros.vlm.plan import PrunePlan
from prune2drive_ros.vlm.prefill import StaticPrefill
from prune2drive_ros.vlm.preprocess import DEFAULT_MAX_IMAGE_SIDE, ImageSpec, preprocess, validate_images
from prune2drive_ros.vlm.prompt import IMAGE_PLACEHOLDER, split_prompt
from prune2drive_ros.vlm.pruned_llm import Prefix, PrunedLanguageModel, VisualLayout
from prune2drive_ros.vlm.vision import VisionEncoder

STAGES = ("preprocess", "vision", "prune", "prefill", "decode")


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
    path: str = "eager"
    """How the LLM ran: "cuda-graph" (prefill tail and token step replayed), "eager", or a mix with the reason."""

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.flops_dense if self.flops_dense else 1.0


def _pruner(method: str, config: RunnerConfig):
    """The pruner ``method`` names, with the settings it takes (the random pruner's seeded draw)."""
    return get_pruner(method, **({"seed": config.pruning_seed} if method == "random" else {}))


class StageTimer:
    """Wall-clock stage timer that waits for the GPU at every boundary, so each stage is charged its own
    work. Stages nest: time spent in an inner stage is not charged to the outer one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ms: dict[str, float] = {}
        self._open: list[str] = []
        self._since = 0.0

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _charge(self, now: float) -> None:
        if self._open:
            name = self._open[-1]
            self.ms[name] = self.ms.get(name, 0.0) + (now - self._since) * 1000.0
        self._since = now

    @contextmanager
    def stage(self, name: str):
        self._charge(self._sync())
        self._open.append(name)
        try:
            yield
        finally:
            self._charge(self._sync())
            self._open.pop()


class VLMRunner:
    def __init__(self, model: torch.nn.Module, tokenizer, image_spec: ImageSpec, eos_token_ids: Sequence[int],
                 config: RunnerConfig | None = None, *, model_dir=None, **settings):
        """Wrap a loaded LLaVA-OneVision ``model``; ``settings`` are ``RunnerConfig`` fields (or pass ``config``)."""
        self.config = config = (config or RunnerConfig()).replace(**settings)
        self.model = model
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        self.eos_token_ids = list(eos_token_ids)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.llm = PrunedLanguageModel(model)
        if not 0 <= config.layer < self.llm.num_layers:
            raise ValueError(f"prune_layer must be in [0, {self.llm.num_layers - 1}], got {config.layer}")
        self.pruner = _pruner(config.pruning, config)
        self.max_new_tokens = config.max_new_tokens
        self.max_question_tokens = config.max_question_tokens or DEFAULT_MAX_QUESTION_TOKENS
        self.max_image_side = config.max_image_side or DEFAULT_MAX_IMAGE_SIDE
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.sampler = Sampler(config.temperature, config.top_p, generator)
        use_graphs = config.cuda_graphs != "off" and self.device.type == "cuda"
        self.graphs = GraphSet(use_graphs, strict=config.cuda_graphs == "on")

        self.encoder = VisionEncoder(model).eval()
        self.vision = make_vision_backend(config.vision_backend, self.encoder, device=self.device, dtype=self.dtype,
                                          engine_dir=config.engine_dir, strict=config.strict_backend,
                                          model_dir=model_dir)
        self._build_prompt()
        self._prefix: Prefix | None = None
        self._decode: DecodeBatch | None = None
        self.warmup_ms = 0.0
        self.set_budgets(retain=config.retain, view_ratios=config.view_ratios, warm_up=False)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: RunnerConfig, *, warm_up: bool = True) -> VLMRunner:
        """Load ``config.model`` and build the runner; on a GPU, capture its graphs before returning."""
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        loaded = load_checkpoint(config.model, device, dtype)
        spec = ImageSpec.from_checkpoint(loaded.folder, loaded.model.config.vision_config.image_size)
        if loaded.aspect_ratio is not None:
            spec = ImageSpec(spec.size, spec.mean, spec.std, loaded.aspect_ratio)
        runner = cls(loaded.model, loaded.tokenizer, spec, loaded.eos_token_ids, config, model_dir=loaded.folder)
        if warm_up:
            runner.warm_up()
        return runner

    @classmethod
    def from_pretrained(cls, model, **settings) -> VLMRunner:
        """``from_config(RunnerConfig(model=model, **settings))``: the keywords are ``RunnerConfig`` fields."""
        return cls.from_config(RunnerConfig.from_kwargs(model, **settings))

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

    def set_budgets(self, retain: float | None = None, view_ratios: Sequence[float] | None = None,
                    *, warm_up: bool = True) -> None:
        """Change the per-view token budgets (the next frame set uses them; graphs are captured again now)."""
        if view_ratios:
            budgets = view_budgets(self.tokens_per_view, view_ratios=list(view_ratios))
        else:
            budgets = view_budgets(self.tokens_per_view, retain=1.0 if retain is None else retain)
        self.budgets = list(budgets)
        self._replan(warm_up)

    def set_pruning(self, method: str) -> None:
        """Switch the pruning method on the same weights and budgets (benchmarks compare methods so)."""
        self.pruner = _pruner(method, self.config)
        self.config = self.config.replace(pruning=method)  # a -1 prune_layer follows the method
        self._replan(warm_up=True)

    def _replan(self, warm_up: bool) -> None:
        self.plan = PrunePlan.describe(self.pruner, self.budgets, self.config.layer, self.llm.num_layers,
                                       self.tokens_per_view)
        self._static = StaticPrefill(self.llm, self.layout, self.plan, self.pruner, self.graphs) \
            if self.plan.static else None
        self._prefix = None
        self._decode = None
        if warm_up and self.graphs.enabled:
            self.warm_up()

    @torch.inference_mode()
    def warm_up(self) -> float:
        """Run each batch bucket once on blank views so every CUDA graph is captured now, not on the
        first real frame. Returns (and logs to ``warmup_ms``) the time taken. A no-op off CUDA."""
        if not self.graphs.enabled:
            return 0.0
        t0 = time.perf_counter()
        images = [np.zeros((self.image_spec.size, self.image_spec.size, 3), np.uint8)] * NUM_CAMERAS
        keep_new = self.max_new_tokens
        self.max_new_tokens = min(2, keep_new)  # the token step is the same graph for any length
        try:
            for rows in BATCH_BUCKETS if self.plan.static else (1,):
                self.answer(images, ["warm up"] * rows, frame_key=("warm-up",))
        finally:
            self.max_new_tokens = keep_new
            self._prefix = None
        self.warmup_ms = (time.perf_counter() - t0) * 1000.0
        return self.warmup_ms

    def close(self) -> None:
        """Drop the model, graphs and cached state; frees GPU memory."""
        self._prefix = self._decode = self._static = None
        self.vision.close()
        self.model = self.llm = self.encoder = self.vision = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def vision_backend_name(self) -> str:
        return self.vision.name

    @property
    def prefix(self) -> Prefix | None:
        """The prefilled visual prefix of the last frame set (None before the first answer)."""
        return self._prefix

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
        timer = StageTimer(self.device)
        t_start = time.perf_counter()
        key = (frame_key if frame_key is not None else self.frame_key(images), self.plan)
        reused = self.plan.static and self._prefix is not None and self._prefix.key == key

        embeds = None
        if not reused:
            with timer.stage("preprocess"):
                pixels = preprocess(images, self.image_spec, self.device, self.dtype)
            with timer.stage("vision"):
                embeds = self._prompt_embeds(self.vision(pixels))

        if self.plan.static:
            if not reused:
                self._prefix = self._static(embeds, timer)
                self._prefix.key = key
            prefix = self._prefix
            results, paths = [], set()
            for start in range(0, len(suffixes), BATCH_BUCKETS[-1]):
                chunk = suffixes[start : start + BATCH_BUCKETS[-1]]
                results += self._answer_on_prefix(prefix, chunk, timer)
                paths.add(self._path())
            prefills = [prefix] * len(suffixes)
            shared = [reused or i > 0 for i in range(len(suffixes))]
            path = " + ".join(sorted(paths))
        else:
            results, prefills = [], []
            for ids in suffixes:
                result, prefill = self._answer_alone(embeds, ids, timer)
                results.append(result)
                prefills.append(prefill)
            shared = [False] * len(suffixes)
            path = "eager"

        total_ms = (time.perf_counter() - t_start) * 1000.0
        timings = {k: timer.ms.get(k, 0.0) for k in STAGES}
        timings["total"] = total_ms
        return [self._make_answer(tokens, prefill, len(suffix), timings, reuse, path)
                for tokens, prefill, suffix, reuse in zip(results, prefills, suffixes, shared)]

    # -- steps ---------------------------------------------------------------------------------
    def _prompt_embeds(self, features: torch.Tensor) -> torch.Tensor:
        embeds = self.llm.embed_tokens(self.prefix_ids[None]).clone()
        embeds[0, self.image_mask] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
        return embeds

    def _decode_batch(self, prefix: Prefix, longest: int, rows: int, question_dependent: bool) -> DecodeBatch:
        lengths = prefix.tokens_per_layer
        current = self._decode
        if current is not None and current.fits(lengths, longest, rows, self.max_new_tokens):
            return current
        capacity = 0 if question_dependent else question_capacity(longest, self.graphs.enabled)
        # On a GPU the static batch is sized for the largest bucket once, so every bucket shares it.
        rows = max(rows, BATCH_BUCKETS[-1]) if self.graphs.enabled and not question_dependent else rows
        # Sized for the configured answer length even while warm-up asks for fewer tokens.
        new_tokens = max(self.max_new_tokens, self.config.max_new_tokens)
        batch = DecodeBatch(self.llm, lengths, capacity, new_tokens, rows, dtype=self.dtype, device=self.device)
        if not question_dependent:
            self._decode = batch
        return batch

    def _answer_on_prefix(self, prefix: Prefix, suffixes: list[list[int]], timer: StageTimer) -> list[list[int]]:
        """Prefill the questions on the shared prefix at once, then decode them as one batch."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with timer.stage("prefill"):
            batch = self._decode_batch(prefix, max(len(s) for s in suffixes), bucket(len(suffixes)), False)
            last = batch.start(prefix, suffixes, pad)
        with timer.stage("decode"):
            batch.capture(self.graphs, batch.active)
            tokens = batch.generate(last, self.sampler, self.eos_token_ids, self.max_new_tokens, len(suffixes))
        self._last_batch = batch
        return tokens

    def _path(self) -> str:
        decode_graphed = self._last_batch.graphed(self._last_batch.active)
        prefill_graphed = "tail" in self._static.graphed
        if decode_graphed and prefill_graphed:
            return "cuda-graph"
        if not self.graphs.enabled:
            return "eager"
        parts = [f"prefill {'graph' if prefill_graphed else 'eager'}", f"decode {'graph' if decode_graphed else 'eager'}"]
        failures = "; ".join(f"{k}: {v}" for k, v in self._static.failures.items())
        return ", ".join(parts) + (f" (capture failed: {failures})" if failures else "")

    def _answer_alone(self, prefix_embeds: torch.Tensor, suffix: list[int], timer: StageTimer):
        """Question-dependent pruning: the whole prompt is prefilled (and pruned) for this question."""
        ids = torch.tensor(suffix, device=self.device)
        embeds = torch.cat([prefix_embeds, self.llm.embed_tokens(ids[None])], dim=1)
        query_positions = None  # FastV: the last prompt token
        if self.plan.attention_queries == "instruction":
            query_positions = torch.arange(prefix_embeds.shape[1], embeds.shape[1], device=self.device)
        with timer.stage("prefill"):
            prefill = self.llm.prefill(embeds, self.layout, self.plan, self.pruner, query_rows=query_positions,
                                       timer=timer)
        with timer.stage("decode"):
            batch = self._decode_batch(prefill, 0, 1, True)
            last = batch.start_after_prompt(prefill)
            tokens = batch.generate(last, self.sampler, self.eos_token_ids, self.max_new_tokens, 1)[0]
        return tokens, prefill

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.eos_token_ids], skip_special_tokens=True).strip()

    def _make_answer(self, tokens: list[int], prefill: Prefix, suffix_len: int, timings, reused: bool,
                     path: str) -> Answer:
        cfg = self.model.config.text_config
        # Question-dependent prefills already count the question in tokens_per_layer.
        extra = 0 if prefill.prompt_length > self.layout.length else suffix_len
        dims = {"hidden": cfg.hidden_size, "ffn": cfg.intermediate_size}
        tokens_per_layer = prefill.tokens_per_layer
        flops_dense = len(tokens_per_layer) * layer_flops(prefill.prompt_length + extra, **dims)
        flops = sum(layer_flops(n + extra, **dims) for n in tokens_per_layer)
        kept = [k.tolist() for k in prefill.kept]
        return Answer(
            text=self._text(tokens),
            timings_ms=dict(timings),
            kept_per_view=[len(k) for k in kept],
            visual_tokens=self.layout.patch_positions.numel() + NUM_CAMERAS,  # patches + newlines
            flops=float(flops),
            flops_dense=float(flops_dense),
            prefix_reused=reused,
            kept_indices=kept,
            token_ids=list(tokens),
            path=path,
        )
