"""Questions and generated tokens on a shared prefix: ``DecodeBatch``, ``Sampler`` and ``generate``.

``DecodeBatch`` owns the static decode state of up to ``rows`` sequences: the ``StaticKVCache``, the
RoPE positions, the attention masks and the tail slot the next token goes to. The tail of every layer
is laid out the same way:

    [ prefix_l slots | question slots (question_capacity) | generated slots (max_new_tokens) ]

Questions are right-padded to ``question_capacity``; a padding slot stays masked forever. Each
sequence's positions continue from its own question length, so padding never shifts RoPE. The token
step reads and writes only these buffers, so one CUDA graph per batch bucket replays it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prune2drive_ros.vlm.graphs import GraphSet
from prune2drive_ros.vlm.kv_cache import StaticKVCache
from prune2drive_ros.vlm.pruned_llm import Prefix, PrunedLanguageModel

BATCH_BUCKETS = (1, 2, 4, 8)
# Question capacity grows in these steps: with CUDA graphs one 64-token block lets most questions share
# one graph; eagerly, padding is only wasted work, so the block is small.
QUESTION_BLOCK = {True: 64, False: 8}
STOP_CHECK_EVERY = 4  # tokens between host reads of "has every sequence stopped"
MIN_GENERATED_SLOTS = 4  # a capture runs the step three times (two warm-ups, one capture): room for them


def bucket(batch: int) -> int:
    return next((b for b in BATCH_BUCKETS if b >= batch), batch)


def question_capacity(longest: int, graphs: bool) -> int:
    block = QUESTION_BLOCK[graphs]
    return max(block, -(-longest // block) * block)


class Sampler:
    """Greedy (temperature 0) or temperature / nucleus sampling of the next token from logits [B, vocab]."""

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator | None = None):
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    def __call__(self, logits: Tensor) -> Tensor:
        if self.temperature <= 0:
            return logits.argmax(-1)
        probs = (logits / self.temperature).softmax(-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


class DecodeBatch:
    def __init__(self, llm: PrunedLanguageModel, prefix_lengths: Sequence[int], question_capacity: int,
                 max_new_tokens: int, rows: int, *, dtype: torch.dtype, device: torch.device):
        self.llm = llm
        self.prefix_lengths = [int(n) for n in prefix_lengths]
        self.question_capacity = int(question_capacity)
        self.max_new_tokens = max(int(max_new_tokens), MIN_GENERATED_SLOTS)
        self.rows = int(rows)
        self.device, self.dtype = device, dtype
        tail = self.question_capacity + self.max_new_tokens
        self.cache = StaticKVCache(self.prefix_lengths, tail, rows, llm.kv_heads, llm.head_dim, dtype=dtype,
                                   device=device)
        self.neg = torch.finfo(dtype).min
        # One mask per distinct prefix length (two for a plan pruned once: layers < K and >= K).
        self.decode_masks = {n: torch.full((rows, 1, 1, n + tail), self.neg, dtype=dtype, device=device)
                             for n in set(self.prefix_lengths)}
        self.tokens = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # tail slot of the next token
        self.question_slots = torch.arange(self.question_capacity, device=device)
        self._graphs: dict[int, object] = {}
        self.active = 0

    def fits(self, prefix_lengths: Sequence[int], longest_question: int, rows: int, max_new_tokens: int) -> bool:
        return (list(prefix_lengths) == self.prefix_lengths and longest_question <= self.question_capacity
                and rows <= self.rows and max_new_tokens <= self.max_new_tokens)

    # -- the question prefill ------------------------------------------------------------------
    def start(self, prefix: Prefix, questions: Sequence[Sequence[int]], pad_id: int) -> Tensor:
        """Prefill ``questions`` (token ids) on ``prefix`` in rows [:bucket]; returns their last hidden [B, D]."""
        batch = len(questions)
        rows = bucket(batch)
        if rows > self.rows:
            raise ValueError(f"{batch} questions do not fit a decode batch of {self.rows} rows")
        self.active = rows
        self.cache.load_prefix(prefix.keys, prefix.values, rows, prefix)
        q = self.question_capacity
        ids = torch.full((rows, q), pad_id, dtype=torch.long)
        valid = torch.zeros((rows, q), dtype=torch.bool)
        lengths = torch.zeros(rows, dtype=torch.long)
        for i in range(rows):
            question = questions[min(i, batch - 1)]  # bucket padding rows repeat the last question
            ids[i, : len(question)] = torch.tensor(question)
            valid[i, : len(question)] = True
            lengths[i] = len(question)
        ids, valid, lengths = ids.to(self.device), valid.to(self.device), lengths.to(self.device)
        positions = prefix.prompt_length + torch.arange(q, device=self.device).expand(rows, -1)
        causal = torch.arange(q, device=self.device)[None, :] <= torch.arange(q, device=self.device)[:, None]
        question_visible = valid[:, None, :] & causal[None]  # [rows, q, q]
        tail = self.question_capacity + self.max_new_tokens
        masks = {}
        for n in set(self.prefix_lengths):
            mask = torch.full((rows, 1, q, n + tail), self.neg, dtype=self.dtype, device=self.device)
            mask[:, :, :, :n] = 0
            mask[:, 0, :, n : n + q].masked_fill_(question_visible, 0)
            masks[n] = mask
            decode = self.decode_masks[n][:rows]
            decode.fill_(self.neg)
            decode[:, :, :, :n] = 0
            decode[:, 0, 0, n : n + q].masked_fill_(valid, 0)
        self.cache.rows, self.cache.tail_index = rows, self.question_slots
        hidden = self.llm.run_layers(self.llm.embed_tokens(ids), positions, self.cache,
                                     masks=[masks[n] for n in self.prefix_lengths])
        self.positions[:rows, 0] = prefix.prompt_length + lengths
        self.slot.fill_(q)
        self.cache.tail_index = self.slot
        return hidden[torch.arange(batch, device=self.device), lengths[:batch] - 1]

    def start_after_prompt(self, prefix: Prefix) -> Tensor:
        """Decode right after a prefill that already held the question (question-dependent pruners)."""
        self.active = 1
        self.cache.load_prefix(prefix.keys, prefix.values, 1, prefix)
        for n in set(self.prefix_lengths):
            decode = self.decode_masks[n][:1]
            decode.fill_(self.neg)
            decode[:, :, :, :n] = 0
        self.positions[:1, 0] = prefix.prompt_length
        self.slot.fill_(self.question_capacity)
        self.cache.rows, self.cache.tail_index = 1, self.slot
        return prefix.last_hidden

    # -- one token -----------------------------------------------------------------------------
    def _step(self, rows: int) -> Tensor:
        """Run ``tokens[:rows]`` one step; advances positions and slot in place (graph-replayable)."""
        for n, mask in self.decode_masks.items():
            mask[:rows].index_fill_(-1, self.slot + n, 0)  # the new token sees itself from now on
        self.cache.rows = rows
        hidden = self.llm.run_layers(self.llm.embed_tokens(self.tokens[:rows]), self.positions[:rows], self.cache,
                                     masks=[self.decode_masks[n][:rows] for n in self.prefix_lengths])
        self.positions[:rows] += 1
        self.slot += 1
        return self.llm.logits(hidden[:, -1])

    def capture(self, graphs: GraphSet, rows: int) -> None:
        """Capture the token step for ``rows`` (a bucket); the state it leaves behind is reset by ``start``."""
        if rows in self._graphs or not graphs.enabled:
            return
        saved = (self.slot.clone(), self.positions.clone(), {n: m.clone() for n, m in self.decode_masks.items()})
        self.slot.fill_(self.question_capacity)  # the runs below write the first generated slots, no further
        self.cache.tail_index = self.slot
        self._graphs[rows] = graphs.capture(lambda: self._step(rows))
        # Warm-up and capture ran the step three times: put the state back.
        self.slot.copy_(saved[0])
        self.positions.copy_(saved[1])
        for n, m in saved[2].items():
            self.decode_masks[n].copy_(m)

    def graphed(self, rows: int) -> bool:
        return self._graphs.get(rows) is not None

    def step(self) -> Tensor:
        graph = self._graphs.get(self.active)
        return graph() if graph is not None else self._step(self.active)

    # -- the loop ------------------------------------------------------------------------------
    def generate(self, first_hidden: Tensor, sampler: Sampler, eos_ids: Sequence[int], max_new_tokens: int,
                 batch: int) -> list[list[int]]:
        """Up to ``max_new_tokens`` per sequence, each cut after its first stop token.

        The loop never waits for the GPU, except to ask every few tokens whether all have stopped.
        """
        eos = torch.tensor(list(eos_ids), device=self.device)
        token = sampler(self.llm.logits(first_hidden))
        if token.shape[0] < self.active:  # bucket rows past the batch decode the last sequence again
            token = torch.cat([token, token[-1:].expand(self.active - token.shape[0])])
        out = torch.empty((self.active, max_new_tokens), dtype=torch.long, device=self.device)
        out[:, 0] = token
        done = torch.isin(token, eos)
        produced = 1
        for step in range(1, max_new_tokens):
            if step % STOP_CHECK_EVERY == 0 and bool(done.all()):
                break
            self.tokens[: self.active, 0] = token
            token = sampler(self.step())
            out[:, step] = token
            done |= torch.isin(token, eos)
            produced = step + 1
        result = []
        stops = set(eos_ids)
        for seq in out[:batch, :produced].tolist():
            cut = next((i + 1 for i, t in enumerate(seq) if t in stops), len(seq))
            result.append(seq[:cut])
        return result
