"""``VLMRunner``: six camera views and questions in, answers with timings and pruning stats out.

The flow per frame set, top to bottom in ``answer``:

    images --one pinned upload, batched resize--> pixels --vision--> prompt embeds (integer scatter)
           --head / select / tail: prefill pruned at layer K--> prefix in the KV cache (shared by every
           question about this frame set) --DecodeBatch.start: the questions, batched--> first tokens
           --DecodeBatch.generate--> answers

For a question-independent plan (``PrunePlan.static``) every stage is a function of static buffers,
captured as a CUDA graph per plan, batch bucket and question bucket in ``warm_up`` (called by
``from_pretrained``/``from_config`` and after a budget change), optionally compiled first. Between the
frame upload and the text, the host reads the device only at the decode loop's stop checks. Each
answer says how each stage ran (``Answer.paths``). Question-dependent pruners (FastV, MVPruner)
prefill the whole prompt per question, eagerly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.pruning import get_pruner, layer_flops, view_budgets
from prune2drive_ros.vlm.backends import make_vision_backend
from prune2drive_ros.vlm.config import DEFAULT_MAX_QUESTION_TOKENS, RunnerConfig
from prune2drive_ros.vlm.decode import BATCH_BUCKETS, DecodeBatch, Progress, Sampler, question_buckets
from prune2drive_ros.vlm.graphs import Compiler, GraphSet, StagePaths, summary
from prune2drive_ros.vlm.info import RunnerInfo
from prune2drive_ros.vlm.kv_cache import StaticKVCache
from prune2drive_ros.vlm.loading import load_checkpoint, resolve_device, resolve_dtype
from prune2drive_ros.vlm.plan import PrunePlan
from prune2drive_ros.vlm.prefill import StaticPrefill, prefix_lengths
from prune2drive_ros.vlm.preprocess import DEFAULT_MAX_IMAGE_SIDE, FrameUploader, ImageSpec, preprocess, validate_images
from prune2drive_ros.vlm.prompt import IMAGE_PLACEHOLDER, split_prompt
from prune2drive_ros.vlm.pruned_llm import Prefix, PrunedLanguageModel, VisualLayout
from prune2drive_ros.vlm.quantize import FLOAT_WEIGHTS, QUANTIZED_WEIGHTS, check_weights
from prune2drive_ros.vlm.vision import VisionEncoder
from prune2drive_ros.vlm.weights_cache import load_or_quantize

STAGES = ("preprocess", "vision", "prune", "prefill", "question", "decode")

OnProgress = Callable[[Mapping[int, list[int]]], Iterable[int] | None]
"""``VLMRunner.answer``'s ``on_progress({question index: tokens so far}) -> question indices to stop``."""


def _shifted(on_progress: OnProgress | None, start: int) -> Progress | None:
    """The decode loop's callback (rows of one batch) for questions ``start``, ``start + 1``, ... of the call."""
    if on_progress is None:
        return None

    def report(tokens: list[list[int]]) -> list[int]:
        stop = on_progress({start + row: seq for row, seq in enumerate(tokens)}) or ()
        return [i - start for i in stop if start <= i < start + len(tokens)]

    return report


@dataclass
class Answer:
    text: str
    timings_ms: dict[str, float]
    """Per stage (``STAGES``) and "total". "prefill" is the visual prefix (layers before and after pruning),
    "prune" the selection, "question" the question prefill and first token, "decode" the later tokens."""
    kept_per_view: list[int]
    visual_tokens: int
    flops: float
    flops_dense: float
    prefix_reused: bool
    kept_indices: list[list[int]] = field(repr=False, default_factory=list)
    token_ids: list[int] = field(repr=False, default_factory=list)
    path: str = "eager"
    """"cuda-graph" when every stage was captured, "eager" when none was, else the mix (``graphs.summary``)."""
    paths: dict[str, str] = field(default_factory=dict)
    """How each stage ran: "vision", "prefix", "question", "decode" -> "graph", "compiled-graph" or "eager",
    optionally followed by " (reason)". For a reused prefix, vision and prefix say how it was built."""

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.flops_dense if self.flops_dense else 1.0


def _pruner(method: str, config: RunnerConfig):
    """The pruner ``method`` names, with the settings it takes (the random pruner's seeded draw)."""
    return get_pruner(method, **({"seed": config.pruning_seed} if method == "random" else {}))


class StageTimer:
    """Charges time to nested stages (an inner stage's time is not charged to the outer one).

    On CUDA each boundary records an event on the stream, without waiting; ``ms`` reads them once the
    answer's tokens are on the host, when every event has completed, so timing adds no sync. Elsewhere
    the wall clock is read at each boundary.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str | None, object]] = []  # (stage charged from this mark on, event or time)
        self._open: list[str] = []

    def _mark(self, charged: str | None) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((charged, event))
        else:
            self._marks.append((charged, time.perf_counter()))

    @contextmanager
    def stage(self, name: str):
        self._open.append(name)
        self._mark(name)
        try:
            yield
        finally:
            self._open.pop()
            self._mark(self._open[-1] if self._open else None)

    @property
    def ms(self) -> dict[str, float]:
        if self.cuda and self._marks:
            self._marks[-1][1].synchronize()  # already complete after the answer's host read: no wait
        out: dict[str, float] = {}
        for (name, start), (_, end) in zip(self._marks, self._marks[1:]):
            if name is not None:
                elapsed = start.elapsed_time(end) if self.cuda else (end - start) * 1000.0
                out[name] = out.get(name, 0.0) + elapsed
        return out


def _compile_mode(config: RunnerConfig, device: torch.device) -> tuple[bool, str]:
    """(compile the layers?, why not)."""
    if config.compile == "off":
        return False, "compile=off"
    if config.compile == "on":
        return True, ""
    if device.type != "cuda":
        return False, "compile=auto compiles on CUDA only"
    if importlib.util.find_spec("triton") is None:
        return False, "compile=auto: Triton is not installed"
    return True, ""


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
        if config.weights in FLOAT_WEIGHTS:
            model.to(FLOAT_WEIGHTS[config.weights])
        self.dtype = next(model.parameters()).dtype
        self.llm = PrunedLanguageModel(model)  # fuses q/k/v and gate/up: quantization sees the fused linears
        self.weights_source = self._quantize(model_dir)
        if not 0 <= config.layer < self.llm.num_layers:
            raise ValueError(f"prune_layer must be in [0, {self.llm.num_layers - 1}], got {config.layer}")
        self.pruner = _pruner(config.pruning, config)
        self.max_new_tokens = config.max_new_tokens
        self.max_question_tokens = config.max_question_tokens or DEFAULT_MAX_QUESTION_TOKENS
        self.max_image_side = config.max_image_side or DEFAULT_MAX_IMAGE_SIDE
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.sampler = Sampler(config.temperature, config.top_p, generator)
        cuda = self.device.type == "cuda"
        use_graphs = config.cuda_graphs != "off" and cuda
        off = "cuda_graphs=off" if config.cuda_graphs == "off" else self.device.type
        self.graphs = GraphSet(use_graphs, strict=config.cuda_graphs == "on", off_reason="" if use_graphs else off)
        compile_layers, why_not = _compile_mode(config, self.device)
        self.compiler = Compiler(compile_layers, strict=config.compile == "on", off_reason=why_not)
        # On a GPU T-FPS's distances run on TF32 tensor cores at about fp32 accuracy (pruning.cosine.gram).
        self.tfps_precision = "tf32x3" if cuda else "fp32"

        self.encoder = VisionEncoder(model).eval()
        self.vision = make_vision_backend(config.vision_backend, self.encoder, device=self.device, dtype=self.dtype,
                                          engine_dir=config.engine_dir, strict=config.strict_backend,
                                          model_dir=model_dir)
        if compile_layers:
            self.llm.compile_layers(self.compiler)
            if self.vision.name == "torch":
                self.encoder.compile_layers(self.compiler)
        self.upload = FrameUploader(self.device)
        self._build_prompt()
        self._prefix: Prefix | None = None
        self._prefix_notes: dict[str, tuple[bool, str]] = {}
        self._vision_call = None
        self._static: StaticPrefill | None = None
        self._decode: DecodeBatch | None = None
        self.warmup_ms = 0.0
        self.paths: dict[str, str] = {}
        """Per-stage paths of the last answer, or of the warm-up (``RunnerInfo.paths``)."""
        self.set_budgets(retain=config.retain, view_ratios=config.view_ratios, warm_up=False)

    # -- construction --------------------------------------------------------------------------
    def _quantize(self, model_dir) -> str:
        """Quantize the language model's weights as ``config.weights`` says (after the model is laid out
        as the runtime calls it: q/k/v and gate/up fused); returns where they came from."""
        weights = self.config.weights
        check_weights(weights, self.device, self.dtype)
        if weights not in QUANTIZED_WEIGHTS:
            return "checkpoint"
        source = load_or_quantize(self.model, weights, model_dir, self.config.engine_dir)
        self.llm.lm_head = self.model.lm_head  # the CPU layers replace the module itself
        self.llm.refresh()
        return source

    @classmethod
    def from_config(cls, config: RunnerConfig, *, warm_up: bool = True) -> VLMRunner:
        """Load ``config.model`` and build the runner; on a GPU, capture its graphs before returning."""
        device = resolve_device(config.device)
        float_weights = config.weights if config.weights in FLOAT_WEIGHTS else None
        if float_weights and config.dtype not in (None, "", "auto") and \
                resolve_dtype(config.dtype, device) != FLOAT_WEIGHTS[float_weights]:
            raise ValueError(f"weights={config.weights} and dtype={config.dtype} disagree; set one of them")
        dtype = resolve_dtype(config.dtype if config.dtype not in (None, "", "auto") else float_weights, device)
        check_weights(config.weights, device, dtype)  # before minutes of loading
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
        # Where the views' features go in the prompt, as integer positions: scattering them needs no mask (and
        # so no nonzero and no host sync per frame).
        self.image_positions = (self.prefix_ids == config.image_token_index).nonzero().flatten()
        # Static buffers the vision stage reads and writes: the text embeddings are written once, here.
        with torch.inference_mode():
            self.embeds = self.llm.embed_tokens(self.prefix_ids[None]).clone()
        size = self.image_spec.size
        self.pixels = torch.zeros((NUM_CAMERAS, 3, size, size), dtype=self.dtype, device=self.device)

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
        """Size the buffers of the current pruner and budgets and, on a GPU, capture their graphs now."""
        self.plan = PrunePlan.describe(self.pruner, self.budgets, self.config.layer, self.llm.num_layers,
                                       self.tokens_per_view)
        self._prefix = self._static = self._decode = None
        self.graphs.failures.clear()  # a new plan's captures get their own chance
        self.question_buckets = question_buckets(self.max_question_tokens, self.graphs.enabled)
        if self.plan.static:
            # Sized from the configured bounds (question length, answer length, largest batch), so serving never
            # allocates or captures again.
            new_tokens = max(self.config.max_new_tokens, 1)
            cache = StaticKVCache(prefix_lengths(self.plan, self.layout, self.llm.num_layers), BATCH_BUCKETS[-1],
                                  self.question_buckets[-1] + max(new_tokens, 4), self.llm.kv_heads, self.llm.head_dim,
                                  dtype=self.dtype, device=self.device)
            self._static = StaticPrefill(self.llm, self.layout, self.plan, self.pruner, self.graphs, cache,
                                         self.tfps_precision)
            self._decode = DecodeBatch(self.llm, cache, self.layout.length, self.question_buckets, new_tokens,
                                       self.sampler, self.graphs)
        if warm_up and self.graphs.enabled:
            self.warm_up()

    @torch.inference_mode()
    def warm_up(self) -> float:
        """Capture (and compile) every graph now, not on the first real frame: one answer on blank views, then
        every batch and question bucket. Returns (and keeps in ``warmup_ms``) the time taken. A no-op without
        graphs."""
        if not self.graphs.enabled:
            return 0.0
        t0 = time.perf_counter()
        images = [np.zeros((self.image_spec.size, self.image_spec.size, 3), np.uint8)] * NUM_CAMERAS
        try:
            self.answer(images, ["warm up"], frame_key=("warm-up",), max_new_tokens=min(2, self.max_new_tokens))
            if self._decode is not None:
                self._decode.capture_all()
        finally:
            self._prefix = None
        self.warmup_ms = (time.perf_counter() - t0) * 1000.0
        return self.warmup_ms

    def close(self) -> None:
        """Drop the model, graphs and cached state; frees GPU memory."""
        self._prefix = self._decode = self._static = self._vision_call = None
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

    def info(self) -> RunnerInfo:
        """What this runner is: device, dtype, vision backend and why, pruning, paths, warm-up time."""
        return RunnerInfo(
            model=self.config.model, device=str(self.device), dtype=str(self.dtype).removeprefix("torch."),
            vision_backend=self.vision.name, vision_reason=self.vision.reason, pruning=self.config.pruning,
            prune_layer=self.config.layer, budgets=tuple(self.budgets), tokens_per_view=self.tokens_per_view,
            max_new_tokens=self.max_new_tokens, warmup_ms=self.warmup_ms, paths=dict(self.paths))

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
    def answer(self, images: Sequence[np.ndarray], questions, *, frame_key: Hashable | None = None,
               max_new_tokens: int | None = None, on_progress: OnProgress | None = None) -> list[Answer]:
        """Answer ``questions`` about one synchronized set of six RGB views (camera order).

        ``max_new_tokens``: at most the configured ``max_new_tokens`` (the buffers are sized for it).
        ``on_progress({question index: tokens so far})``, called at every decode step of a batch, returns
        the indices of questions to stop (or None): their answers end with the tokens they have.
        """
        validate_images(images, self.max_image_side)
        suffixes = self._question_ids(questions)
        new_tokens = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= new_tokens <= self.config.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in [1, {self.config.max_new_tokens}] (the configured bound), "
                             f"got {new_tokens}")
        timer = StageTimer(self.device)
        paths = StagePaths(self.compiler)
        t_start = time.perf_counter()
        key = (frame_key if frame_key is not None else self.frame_key(images), self.plan)
        reused = self.plan.static and self._prefix is not None and self._prefix.key == key

        if reused:
            paths.notes.update(self._prefix_notes)  # how the reused prefix was built
        else:
            with timer.stage("preprocess"):
                self.pixels.copy_(preprocess(images, self.image_spec, self.device, self.dtype, self.upload))
            with timer.stage("vision"):
                self._run_vision(paths)
        if self.plan.static:
            if not reused:
                self._prefix = None  # until this frame's prefix is checked (finite features)
                prefix = self._static(self.embeds, timer, paths)
                self._prefix_notes = {stage: paths.notes[stage] for stage in ("vision", "prefix")}
            else:
                prefix = self._prefix
            results: list[list[int]] = []
            for start in range(0, len(suffixes), BATCH_BUCKETS[-1]):
                results += self._answer_on_prefix(suffixes[start : start + BATCH_BUCKETS[-1]], new_tokens, timer,
                                                  paths, _shifted(on_progress, start))
            self._check_finite()
            prefix.key = key
            self._prefix = prefix
            prefills = [prefix] * len(suffixes)
            shared = [reused or i > 0 for i in range(len(suffixes))]
        else:
            results, prefills = [], []
            for i, ids in enumerate(suffixes):
                result, prefill = self._answer_alone(ids, new_tokens, timer, paths, _shifted(on_progress, i))
                results.append(result)
                prefills.append(prefill)
            shared = [False] * len(suffixes)

        total_ms = (time.perf_counter() - t_start) * 1000.0
        measured = timer.ms  # after the tokens' host read: reading the events waits for nothing
        timings = {k: measured.get(k, 0.0) for k in STAGES}
        timings["total"] = total_ms
        self.paths = paths.resolve()
        return [self._make_answer(tokens, prefill, len(suffix), timings, reuse, self.paths)
                for tokens, prefill, suffix, reuse in zip(results, prefills, suffixes, shared)]

    # -- steps ---------------------------------------------------------------------------------
    def _scatter_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision backend on the six views, their features written into the prompt embeddings in place."""
        features = self.vision(pixels)
        self.embeds[0, self.image_positions] = features.reshape(-1, features.shape[-1]).to(self.embeds.dtype)
        return self.embeds

    def _run_vision(self, paths: StagePaths) -> None:
        if self.vision.name != "torch":  # an engine outside torch: not captured here
            self._scatter_features(self.pixels)
            paths.note("vision", False, f"{self.vision.name} engine")
            return
        if self._vision_call is None and self.graphs.enabled:
            self._vision_call = self.graphs.capture("vision", self._scatter_features, [self.pixels])
        paths.note("vision", self._vision_call is not None, self.graphs.eager_reason("vision"))
        (self._vision_call or self._scatter_features)(self.pixels)

    def _check_finite(self) -> None:
        """T-FPS on the device flags NaN/inf features instead of syncing; read after the tokens (no extra wait)."""
        if self.plan.graph_selection and not bool(self._static.finite):
            raise ValueError("features contain NaN or inf values; token pruning needs finite features")

    def _answer_on_prefix(self, chunk: list[list[int]], new_tokens: int, timer: StageTimer, paths: StagePaths,
                          on_progress: Progress | None) -> list[list[int]]:
        """Up to eight questions prefilled on the shared prefix at once, then decoded as one batch."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with timer.stage("question"):
            rows, width = self._decode.start(chunk, pad, self.eos_token_ids, paths)
        with timer.stage("decode"):
            return self._decode.generate(rows, width, len(chunk), new_tokens, self.eos_token_ids, paths, on_progress)

    def _answer_alone(self, suffix: list[int], new_tokens: int, timer: StageTimer, paths: StagePaths,
                      on_progress: Progress | None):
        """Question-dependent pruning: the whole prompt is prefilled (and pruned) for this question, eagerly."""
        ids = torch.tensor(suffix, device=self.device)
        embeds = torch.cat([self.embeds, self.llm.embed_tokens(ids[None])], dim=1)
        query_positions = None  # FastV: the last prompt token
        if self.plan.attention_queries == "instruction":
            query_positions = torch.arange(self.embeds.shape[1], embeds.shape[1], device=self.device)
        why = f"{self.plan.method} prunes per question"
        for stage in ("prefix", "question", "decode"):
            paths.note(stage, False, why)
        with timer.stage("prefill"):
            prefill = self.llm.prefill(embeds, self.layout, self.plan, self.pruner, query_rows=query_positions,
                                       timer=timer)
        with timer.stage("decode"):
            cache = StaticKVCache.on_prefix(prefill.keys, prefill.values, 1, max(new_tokens, 4))
            batch = DecodeBatch(self.llm, cache, prefill.prompt_length, (), new_tokens, self.sampler,
                                GraphSet(False, off_reason=why))
            rows, width = batch.start_after_prompt(prefill, self.eos_token_ids)
            tokens = batch.generate(rows, width, 1, new_tokens, self.eos_token_ids, on_progress=on_progress)[0]
        return tokens, prefill

    def text(self, tokens: Sequence[int]) -> str:
        """The answer text of generated token ids (stop tokens and special tokens left out)."""
        return self._text(list(tokens))

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.eos_token_ids], skip_special_tokens=True).strip()

    def _make_answer(self, tokens: list[int], prefill: Prefix, suffix_len: int, timings, reused: bool,
                     paths: dict[str, str]) -> Answer:
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
            path=summary(paths),
            paths=dict(paths),
        )
