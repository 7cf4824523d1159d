"""Questions and generated tokens on a shared prefix: ``DecodeBatch``, ``Sampler`` and the generate loop.

``DecodeBatch`` owns the static decode state of up to ``rows`` sequences on a ``StaticKVCache``: the
question ids and lengths, the token each row feeds next, the generated-token counter, the output ids
and the stop flags, all device buffers allocated once. Two functions read and write only these:

    question(R, Q)   R rows of questions padded to the bucket Q: their KV into tail slots [0, Q),
                     the first answer token of each row
    step(R, Q)       one generated token per row: its KV into tail slot Q + t, the next token

Each is captured as a CUDA graph for every batch bucket R and question bucket Q at configure time,
so serving never captures: a question longer than the last bucket (``max_question_tokens``) or more
new tokens than ``max_new_tokens`` is refused by the runner before anything runs. Each row's
positions continue from its own question length, so padding never shifts RoPE; padding slots stay
hidden from the tokens after them. The loop reads the device only every few tokens (has every row
stopped?) and once at the end (the tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from prune2drive_ros.vlm.graphs import GraphSet, StagePaths
from prune2drive_ros.vlm.kv_cache import StaticKVCache
from prune2drive_ros.vlm.layers import tail_mask
from prune2drive_ros.vlm.pruned_llm import Prefix, PrunedLanguageModel

BATCH_BUCKETS = (1, 2, 4, 8)
# The smallest question bucket. With CUDA graphs one 64-token bucket lets most questions share a graph;
# eagerly, padding is only wasted work, so buckets start small.
MIN_QUESTION_BUCKET = {True: 64, False: 8}
STOP_CHECK_EVERY = 4  # tokens between host reads of "has every sequence stopped"
MIN_GENERATED_SLOTS = 4  # a capture runs the step up to three times (warm-ups, capture): room for them

MAX_STOP_TOKENS = 8  # stop tokens the device-side stop flags can hold

Progress = Callable[[list[list[int]]], Iterable[int] | None]
"""``on_progress(tokens per sequence so far) -> indices of sequences to stop`` (None: stop none)."""


def bucket(batch: int) -> int:
    return next((b for b in BATCH_BUCKETS if b >= batch), batch)


def question_buckets(max_tokens: int, graphs: bool) -> tuple[int, ...]:
    """Question lengths the batches are padded to: doubling from the smallest bucket up to ``max_tokens``."""
    sizes, size = [], MIN_QUESTION_BUCKET[graphs]
    while size < max_tokens:
        sizes.append(size)
        size *= 2
    return (*sizes, max_tokens)


class Sampler:
    """Greedy (temperature 0) or temperature / nucleus sampling of the next token from logits [B, vocab]."""

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator | None = None):
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    @property
    def greedy(self) -> bool:
        """Greedy picks run inside the graphs; sampling (a generator's state) runs eagerly after them."""
        return self.temperature <= 0

    def __call__(self, logits: Tensor) -> Tensor:
        if self.greedy:
            return logits.argmax(-1)
        probs = (logits / self.temperature).softmax(-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


class DecodeBatch:
    def __init__(self, llm: PrunedLanguageModel, cache: StaticKVCache, prompt_length: int, buckets: Sequence[int],
                 max_new_tokens: int, sampler: Sampler, graphs: GraphSet):
        self.llm, self.cache, self.sampler, self.graphs = llm, cache, sampler, graphs
        self.prompt_length = int(prompt_length)
        self.buckets = tuple(buckets)
        self.max_new_tokens = max(int(max_new_tokens), MIN_GENERATED_SLOTS)
        self.rows = cache.rows
        questions = self.buckets[-1] if self.buckets else 0
        if cache.tail_capacity < questions + self.max_new_tokens:
            raise ValueError(f"the cache tail holds {cache.tail_capacity} slots, the batch needs "
                             f"{questions + self.max_new_tokens}")
        device = cache.tail_k[0].device
        self.device = device
        rows, slots = self.rows, questions + self.max_new_tokens
        self.ids = torch.zeros((rows, max(questions, 1)), dtype=torch.long, device=device)
        self.lengths = torch.ones(rows, dtype=torch.long, device=device)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.generated = torch.zeros(1, dtype=torch.long, device=device)  # tokens fed so far after the first
        self.out = torch.zeros((rows, self.max_new_tokens), dtype=torch.long, device=device)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.eos = torch.full((MAX_STOP_TOKENS,), -1, dtype=torch.long, device=device)  # -1: no token
        self._stops: tuple[int, ...] | None = None
        self.slot_index = torch.arange(slots, device=device)
        self.row_index = torch.arange(rows, device=device)
        self.question_positions = self.prompt_length + self.slot_index[:questions]
        self.causal = self.slot_index[None, :] <= self.slot_index[:questions, None]  # [Q, slots]
        pin = device.type == "cuda"
        self._host_ids = torch.zeros((rows, max(questions, 1)), dtype=torch.long, pin_memory=pin)
        self._host_lengths = torch.zeros(rows, dtype=torch.long, pin_memory=pin)
        self._calls: dict[tuple[str, int, int], object] = {}

    # -- the captured functions ---------------------------------------------------------------------
    def _question(self, rows: int, width: int) -> Tensor:
        """Logits of each row's last question token; the questions' KV go to tail slots [0, width)."""
        hidden = self.llm.embed_tokens(self.ids[:rows, :width])
        positions = self.question_positions[:width].expand(rows, width)
        visible = self.causal[:width, : width + self.max_new_tokens].expand(rows, -1, -1)
        hidden = self.llm.run_cached(hidden, positions, self.cache, self.slot_index[:width],
                                     tail_mask(visible, self.llm.shape.groups))
        return self.llm.logits(hidden[self.row_index[:rows], self.lengths[:rows] - 1])

    def _first(self, logits: Tensor) -> None:
        token = self.sampler(logits)
        rows = token.shape[0]
        self.tokens[:rows] = token
        self.out[:rows, 0] = token
        self.done[:rows] = torch.isin(token, self.eos)
        self.generated.zero_()

    def _step(self, rows: int, width: int) -> Tensor:
        """Logits after feeding ``tokens[:rows]``; its KV go to tail slot ``width + generated``."""
        slot = width + self.generated
        window = self.slot_index[: width + self.max_new_tokens]
        # A row sees its own question (not the padding after it) and the tokens generated so far.
        visible = (window < self.lengths[:rows, None]) | ((window >= width) & (window <= slot))
        positions = (self.prompt_length + self.lengths[:rows] + self.generated)[:, None]
        hidden = self.llm.run_cached(self.llm.embed_tokens(self.tokens[:rows, None]), positions, self.cache, slot,
                                     tail_mask(visible[:, None], self.llm.shape.groups))
        return self.llm.logits(hidden[:, -1])

    def _advance(self, logits: Tensor) -> None:
        token = self.sampler(logits)
        rows = token.shape[0]
        self.tokens[:rows] = token
        self.out[:rows].index_copy_(1, self.generated + 1, token[:, None])
        self.done[:rows] |= torch.isin(token, self.eos)
        self.generated += 1

    # -- graphs ---------------------------------------------------------------------------------------
    def _function(self, kind: str, rows: int, width: int) -> Callable[[], Tensor | None]:
        """The function to capture: with greedy decoding the pick and its bookkeeping run inside the graph."""
        logits_of = self._question if kind == "question" else self._step
        record = self._first if kind == "question" else self._advance
        if self.sampler.greedy:
            return lambda: record(logits_of(rows, width))
        return lambda: logits_of(rows, width)

    def capture_all(self) -> None:
        """Capture question and step for every batch bucket and question bucket (configure time)."""
        if not self.graphs.enabled:
            return
        for rows in BATCH_BUCKETS:
            for width in self.buckets:
                for kind in ("question", "step"):  # a step capture runs from the state the question left
                    self._call(kind, rows, width)

    def _call(self, kind: str, rows: int, width: int):
        key = (kind, rows, width)
        if key not in self._calls:
            # The warm-up runs of a capture advance the decode state; put it back for the step that follows.
            state = [self.generated, self.tokens, self.done, self.out]
            saved = [t.clone() for t in state]
            self.generated.zero_()  # the runs write the first generated slots, no further (MIN_GENERATED_SLOTS)
            self._calls[key] = self.graphs.capture(f"{kind} {rows}x{width}", self._function(kind, rows, width))
            for t, s in zip(state, saved, strict=True):
                t.copy_(s)
        return self._calls[key]

    def _run(self, kind: str, rows: int, width: int, paths: StagePaths | None = None) -> None:
        call = self._call(kind, rows, width) if self.graphs.enabled else None
        if paths is not None:
            stage = "question" if kind == "question" else "decode"
            paths.note(stage, call is not None, self.graphs.eager_reason(f"{kind} {rows}x{width}"))
        logits = call() if call is not None else self._function(kind, rows, width)()
        if not self.sampler.greedy:  # the graph (or eager run) returned logits
            (self._first if kind == "question" else self._advance)(logits)

    # -- host side ------------------------------------------------------------------------------------
    def _set_stops(self, eos_ids: Sequence[int]) -> None:
        """The stop tokens the captured functions compare with (a buffer: changing them captures nothing)."""
        stops = tuple(eos_ids)
        if stops != self._stops:
            if len(stops) > MAX_STOP_TOKENS:
                raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens, got {len(stops)}")
            self.eos.copy_(torch.tensor([*stops, *[-1] * (MAX_STOP_TOKENS - len(stops))]))
            self._stops = stops

    def start(self, questions: Sequence[Sequence[int]], pad_id: int, eos_ids: Sequence[int],
              paths: StagePaths | None = None) -> tuple[int, int]:
        """Prefill ``questions`` (token ids) in rows [:bucket] and pick each one's first token.

        Returns the rows and the question bucket the batch runs in.
        """
        batch = len(questions)
        rows = bucket(batch)
        longest = max(len(q) for q in questions)
        if rows > self.rows or not self.buckets or longest > self.buckets[-1]:
            raise ValueError(f"{batch} questions of up to {longest} tokens do not fit this decode batch "
                             f"({self.rows} rows, questions up to {self.buckets[-1] if self.buckets else 0} tokens)")
        self._set_stops(eos_ids)
        width = next(b for b in self.buckets if b >= longest)
        ids, lengths = self._host_ids.numpy(), self._host_lengths.numpy()
        for i in range(rows):
            question = questions[min(i, batch - 1)]  # bucket padding rows repeat the last question
            ids[i, : len(question)] = question
            ids[i, len(question) : width] = pad_id
            lengths[i] = len(question)
        # One upload of ids and lengths each; the pinned source makes them asynchronous.
        self.ids[:rows].copy_(self._host_ids[:rows], non_blocking=True)
        self.lengths[:rows].copy_(self._host_lengths[:rows], non_blocking=True)
        self._run("question", rows, width, paths)
        return rows, width

    def start_after_prompt(self, prefix: Prefix, eos_ids: Sequence[int]) -> tuple[int, int]:
        """Decode right after a prefill that already held the question (question-dependent pruners; eager).
        The cache must sit on that prefill (``StaticKVCache.on_prefix``)."""
        self._set_stops(eos_ids)
        self.lengths[:1] = 0
        self._first(self.llm.logits(prefix.last_hidden))
        return 1, 0

    def generate(self, rows: int, width: int, batch: int, max_new_tokens: int, eos_ids: Sequence[int],
                 paths: StagePaths | None = None, on_progress: Progress | None = None) -> list[list[int]]:
        """Up to ``max_new_tokens`` per sequence (the first came from ``start``), each cut after its first stop
        token.

        Without ``on_progress`` the loop reads the device every few tokens (has every sequence stopped?). With
        it, that read happens before every step and brings the tokens too (still one host read): the callback
        gets each sequence's tokens so far and returns the indices of sequences to stop; a stopped sequence
        ends where it is, and the loop ends once every one has ended.
        """
        if max_new_tokens > self.max_new_tokens:
            raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the configured {self.max_new_tokens}")
        stops = set(eos_ids)
        stopped: dict[int, int] = {}  # sequence -> its length when it was stopped
        check_every = STOP_CHECK_EVERY if on_progress is None else 1
        produced = 1
        for step in range(1, max_new_tokens):
            if step % check_every == 0:
                if on_progress is None:
                    if bool(self.done[:batch].all()):
                        break
                elif self._report(batch, produced, stops, stopped, on_progress):
                    break
            self._run("step", rows, width, paths)
            produced = step + 1
        if produced == 1 and paths is not None:  # no step ran: say how it would have
            paths.note("decode", self.graphs.enabled and self._calls.get(("step", rows, width)) is not None,
                       self.graphs.eager_reason(f"step {rows}x{width}"))
        return [_cut(seq, stops, stopped.get(i)) for i, seq in enumerate(self.out[:batch, :produced].tolist())]

    def _report(self, batch: int, produced: int, stops: set[int], stopped: dict[int, int],
                on_progress: Progress) -> bool:
        """Hand the tokens so far to ``on_progress`` and record the sequences it stops; True when all ended."""
        rows = torch.cat([self.done[:batch, None].long(), self.out[:batch, :produced]], dim=1).tolist()  # one read
        tokens = [_cut(row[1:], stops, stopped.get(i)) for i, row in enumerate(rows)]
        for i in on_progress(tokens) or ():
            if 0 <= i < batch:
                stopped.setdefault(i, len(tokens[i]))
        return all(row[0] or i in stopped for i, row in enumerate(rows))


def _cut(seq: list[int], stops: set[int], length: int | None = None) -> list[int]:
    """``seq`` up to and including its first stop token, and at most ``length`` long."""
    seq = seq if length is None else seq[:length]
    end = next((i + 1 for i, t in enumerate(seq) if t in stops), len(seq))
    return seq[:end]
