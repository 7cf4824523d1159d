"""``prune2drive train-testbed OUT``: train a small LLaVA-OneVision model on the synthetic street.

The model has DriveMM's shape at toy size: a SigLIP vision tower (14-px patches), the 2-layer GELU
projector with an ``image_newline`` per view, and a Llama decoder, all from transformers' own
``LlavaOnevisionForConditionalGeneration``. It sees the six-camera rig through DriveMM's prompt, with
fewer tokens per view than DriveMM's 27 x 27, and learns the questions of ``data/testbed_scenes`` on
freshly drawn scenes (no scene is seen twice).

Training runs the decoder layer by layer, the way the runtime's pruned prefill does: every question of a
scene is packed after one shared visual prefix; a block mask lets each question see the prefix and
itself only, and each question starts at the RoPE position right after the prefix, so one forward pass
trains every question of the scene as if asked alone.

Two recipes (``RECIPES``), trained with the same budget for the ablation in the README:

- ``honest`` (the shipped one). No label reaches a visual token at or below the pruning layer: no
  probe, no auxiliary loss on the decoder's input or on layer 0's output. The answers carry the signal,
  each question's answer weighing the same (so the letter of a count question is not outweighed by the
  digits of a coordinate). Two aids sit above the pruning layer. Head 0 of layer 2 is asked to attend to
  the view a question names, which the question's own words say, or, for a nearest-cone answer, to the
  patch the answer's tag names (``view_attention_loss``). A linear head reads each view's cone count
  from the last layer's output at the view's ``image_newline`` (``ViewCounts``): one number per view,
  the count question asked of every view, with nothing about which token shows a cone. Token dropout,
  in half of the scenes of the second half of training, removes a uniformly random share of each view's
  tokens from layer K on, never looking at what they show.
- ``labels`` (the recipe of the earlier release, kept for the ablation). Adds training-only linear
  probes that label every patch token with the cone there (by range and bearing bin) at the decoder's
  input and after layer 0 (where the pruners compare tokens), and with its camera; points the hinted
  head at the tagged cone's patch for nearest-cone answers; and drops background tokens only, never a
  token that shows a road user or a cone. This trains object labels into exactly the features the
  pruners compare, and shows the model only oracle-pruned inputs: it flatters T-FPS.

The result is a normal safetensors checkpoint (config, tokenizer, weights) that
``VLMRunner.from_pretrained`` loads; ``config.json`` carries a ``prune2drive_testbed`` record (the
command, recipe, seed, time, machine load, development-set scores) that marks it as a synthetic test bed.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prune2drive_ros.cameras import CAMERA_NAMES, NUM_CAMERAS
from prune2drive_ros.data import testbed_scenes as T
from prune2drive_ros.data.synthetic_world import IMAGE_HEIGHT, IMAGE_WIDTH
from prune2drive_ros.training import TESTBED_MARKER

# Seeds of the scene sets, fixed before any model of this recipe was scored. Training streams are seeded
# with the (small) training seed and never draw from these.
DEV_SEED = 2_100_001
"""Development scenes: the only set looked at while choosing the world, the recipe and the setting."""
SEARCH_SEED = 2_100_002
"""The study's per-camera budget search (a development set too)."""
TEST_SEED = 3_100_003
"""Test scenes: scored once, by the final study, for the README's table. Nothing is tuned on them."""
OOD_SEED = 4_100_007
"""Out-of-distribution scenes (``testbed_scenes.OUT_OF_DISTRIBUTION``): reported, never tuned on."""
PATCH = 14


@dataclass(frozen=True)
class Setting:
    """Model size and training budget."""

    grid: int  # visual tokens per view = grid x grid
    vision_hidden: int
    vision_layers: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    steps: int
    batch: int  # scenes per step
    lr: float
    drop_p: float  # share of scenes trained with token dropout
    questions_per_scene: int  # questions drawn per scene and step (they share one visual prefix)
    eval_scenes: int


SETTINGS: dict[str, Setting] = {
    # The shipped test bed: within 30 minutes on two cores.
    "full": Setting(grid=8, vision_hidden=64, vision_layers=2, hidden=128, ffn=384, layers=4, heads=4, kv_heads=2,
                    vocab=1024, steps=1500, batch=2, lr=2e-3, drop_p=0.5, questions_per_scene=24, eval_scenes=40),
    # For tests: about a minute; learns the answer formats and the question priors.
    "quick": Setting(grid=4, vision_hidden=32, vision_layers=1, hidden=48, ffn=128, layers=2, heads=2, kv_heads=1,
                     vocab=768, steps=120, batch=4, lr=3e-3, drop_p=0.0, questions_per_scene=6, eval_scenes=10),
}


@dataclass(frozen=True)
class Recipe:
    """What supervises training besides the answers, and how token dropout picks the tokens it removes."""

    probes: bool  # label probes on the visual tokens at the decoder's input and after layer 0, and a camera probe
    object_hint: bool  # the hinted head (layer 2) is pointed at the patch a nearest-cone answer's tag names
    dropout: str  # "uniform": any of a view's tokens; "background": never one that shows a road user or a cone
    dropout_from: float  # share of the steps trained on whole inputs before token dropout starts
    per_question: bool  # every question's answer weighs the same (else every answer token weighs the same)
    view_counts: bool  # a head on the last layer reads each view's cone count from the view's newline token


RECIPES: dict[str, Recipe] = {
    "honest": Recipe(probes=False, object_hint=True, dropout="uniform", dropout_from=0.5, per_question=True,
                     view_counts=True),
    "labels": Recipe(probes=True, object_hint=True, dropout="background", dropout_from=0.0, per_question=False,
                     view_counts=False),
}


# ---------------------------------------------------------------- tokenizer and model


def corpus(seed: int, scenes: int = 50) -> list[str]:
    """Text the tokenizer is trained on: the prompt and questions/answers of undrawn scenes."""
    from prune2drive_ros.vlm.prompt import user_message

    rng = random.Random(f"corpus-{seed}")
    texts = [user_message("What should the ego vehicle do next?")]
    for _ in range(scenes):
        scene = T.make_scene(rng, draw=False)
        texts += [f"{qa.question} {qa.answer}" for qa in scene.qas]
    return texts


def build_tokenizer(texts: list[str], vocab_size: int):
    """The tiny model's byte-level BPE, trained on ``texts`` with every digit a token of its own.

    Pixel coordinates then read digit by digit (``8 1 6 . 3``), the same few tokens in every answer,
    instead of one merged token per frequent number that a small model would have to learn one by one.
    """
    from tokenizers import pre_tokenizers

    from prune2drive_ros.vlm.tiny import build_tokenizer as tiny_tokenizer

    base = tiny_tokenizer(vocab_size, corpus=texts[:1])
    base.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), base.backend_tokenizer.pre_tokenizer])
    tokenizer = base.train_new_from_iterator(texts, vocab_size)
    tokenizer.chat_template = base.chat_template
    return tokenizer


def model_config(tokenizer, s: Setting):
    from transformers import LlamaConfig, LlavaOnevisionConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=s.vision_hidden, intermediate_size=2 * s.vision_hidden,
                                num_hidden_layers=s.vision_layers, num_attention_heads=2, image_size=s.grid * PATCH,
                                patch_size=PATCH, vision_use_head=False)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=s.hidden, intermediate_size=s.ffn,
                       num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                       max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=eot,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                                video_token_index=image_token, vision_feature_select_strategy="full",
                                vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
                                image_grid_pinpoints=[[s.grid * PATCH, s.grid * PATCH]], tie_word_embeddings=False)


class PromptTokens:
    """The token layout the runtime builds: the visual prefix (six views, DriveMM's prompt), then a question."""

    def __init__(self, tokenizer, tokens_per_view: int):
        from prune2drive_ros.vlm.prompt import IMAGE_PLACEHOLDER, split_prompt

        self.tokenizer = tokenizer
        self.prompt = split_prompt(tokenizer)
        image = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        ids: list[int] = []
        patches = []
        for i, piece in enumerate(self.prompt.prefix.split(IMAGE_PLACEHOLDER)):
            ids += tokenizer(piece, add_special_tokens=False).input_ids
            if i < NUM_CAMERAS:
                patches.append(list(range(len(ids), len(ids) + tokens_per_view)))
                ids += [image] * (tokens_per_view + 1)  # the patches and the view's image_newline
        self.prefix = ids
        self.patches = torch.tensor(patches)  # [V, N] positions of each view's patch tokens
        self.image_mask = torch.tensor(ids) == image
        self.eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")

    def question(self, text: str) -> list[int]:
        return self.tokenizer(self.prompt.suffix(text.strip()), add_special_tokens=False).input_ids

    def answer(self, text: str) -> list[int]:
        return [*self.tokenizer(text, add_special_tokens=False).input_ids, self.eot]


# ---------------------------------------------------------------- one training batch


@dataclass
class Batch:
    pixels: torch.Tensor  # [B * V, 3, S, S]
    ids: torch.Tensor  # [B, T]
    positions: torch.Tensor  # [B, T]
    allowed: torch.Tensor  # [B, T, T] bool: who may attend to whom with every token present
    allowed_pruned: torch.Tensor  # [B, T, T] the same after token dropout
    prune_layer: torch.Tensor  # [B] layer from which allowed_pruned applies (num_layers: never)
    targets: torch.Tensor  # [B, T] next-token targets, -100 where no loss
    weights: torch.Tensor  # [B, T] loss weight per target (every answer token of the batch weighs the same)
    cones: torch.Tensor  # [B, V, N] per patch: 0, or 1 + the range slot of a cone centred there
    asks: torch.Tensor  # [R, 4] where to guide attention: batch row, position, view, patch in it (-1: the view)
    ask_weights: torch.Tensor  # [R] each question's rows sum to 1
    answer_kind: torch.Tensor  # [B, T] at each answer's first predicting position: index in T.KINDS, else -1
    view_counts: torch.Tensor  # [B, V] cones each camera sees (capped at T.MAX_CONES)
    # The packed questions in blocks of similar length: per block, [B, Q, L] positions of each question's
    # tokens (padded with 0) and which of them are real.
    blocks: list[tuple[torch.Tensor, torch.Tensor]]


def make_batch(scenes: list[T.TestbedScene], layout: PromptTokens, spec, s: Setting, num_layers: int,
               rng: random.Random, recipe: Recipe = RECIPES["honest"], dropout: bool = True) -> Batch:
    """One packed training batch; ``dropout``: whether token dropout may apply (the recipe says from when)."""
    from prune2drive_ros.vlm.preprocess import preprocess

    pixels = torch.cat([preprocess(sc.images, spec, torch.device("cpu"), torch.float32) for sc in scenes])
    seqs = []
    for sc in scenes:
        qas = rng.sample(sc.qas, min(s.questions_per_scene, len(sc.qas)))
        seqs.append([(layout.question(qa.question), layout.answer(qa.answer), qa) for qa in qas])
    p = len(layout.prefix)
    length = max(p + sum(len(q) + len(a) for q, a, _ in seq) for seq in seqs)
    b = len(scenes)
    pad = layout.tokenizer.pad_token_id
    ids = torch.full((b, length), pad, dtype=torch.long)
    positions = torch.zeros((b, length), dtype=torch.long)
    segment = torch.full((b, length), -2, dtype=torch.long)  # -1 prefix, k question k, -2 padding
    targets = torch.full((b, length), -100, dtype=torch.long)
    weights = torch.zeros((b, length))
    answer_kind = torch.full((b, length), -1, dtype=torch.long)
    answer_tokens = sum(len(a) for seq in seqs for _, a, _ in seq)
    questions = sum(len(seq) for seq in seqs)
    asks, ask_weights = [], []
    spans: list[list[tuple[int, int]]] = [[] for _ in seqs]  # (start, length) of each packed question
    for i, seq in enumerate(seqs):
        ids[i, :p] = torch.tensor(layout.prefix)
        positions[i, :p] = torch.arange(p)
        segment[i, :p] = -1
        at = p
        for k, (q, a, qa) in enumerate(seq):
            tokens = q + a
            n = len(tokens)
            ids[i, at:at + n] = torch.tensor(tokens)
            positions[i, at:at + n] = torch.arange(p, p + n)
            segment[i, at:at + n] = k
            spans[i].append((at, n))
            # Position j predicts token j + 1: the last question token predicts the first answer token.
            first = at + len(q) - 1
            targets[i, first:first + len(a)] = torch.tensor(a)
            weights[i, first:first + len(a)] = 1.0 / (questions * len(a)) if recipe.per_question else 1.0 / answer_tokens
            answer_kind[i, first] = T.KINDS.index(qa.kind)
            if qa.camera is not None:
                view = CAMERA_NAMES.index(qa.camera)
                if qa.point is None or not recipe.object_hint:  # look at the view from the position that answers
                    asks.append((i, first, view, -1))
                    ask_weights.append(1.0)
                else:  # look at the object the tag names from every answer position (the tag comes late)
                    patch = patch_index(qa.point, s.grid)
                    asks += [(i, first + j, view, patch) for j in range(len(a))]
                    ask_weights += [1.0 / len(a)] * len(a)
            at += n
    rows = torch.arange(length)
    causal = rows[None, :] <= rows[:, None]
    same = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == -1)
    allowed = causal[None] & same & (segment[:, None, :] != -2)
    allowed |= torch.eye(length, dtype=torch.bool)[None]  # padding rows attend to themselves only
    allowed_pruned = allowed.clone()
    prune_layer = torch.full((b,), num_layers, dtype=torch.long)
    labels = [patch_labels(sc, s.grid) for sc in scenes]
    for i in range(b):
        if rng.random() >= s.drop_p or not dropout:
            continue
        prune_layer[i] = 0 if rng.random() < 0.25 else 1
        drop = dropped_background if recipe.dropout == "background" else dropped_uniform
        cols = torch.cat([layout.patches[v][drop(labels[i][1][v], rng)] for v in range(NUM_CAMERAS)])
        allowed_pruned[i][:, cols] = False
        allowed_pruned[i][cols, cols] = True
    cones = torch.stack([cone for cone, _ in labels])
    counts = torch.tensor([[min(sc.cones.get(cam, 0), T.MAX_CONES) for cam in CAMERA_NAMES] for sc in scenes])
    return Batch(pixels, ids, positions, allowed, allowed_pruned, prune_layer, targets, weights, cones,
                 torch.tensor(asks, dtype=torch.long).reshape(-1, 4), torch.tensor(ask_weights), answer_kind,
                 counts, length_blocks(spans))


SHORT_QUESTION = 64
"""Tokens (question + answer) up to which a question goes in the short block: presence, count and nearest
questions are shorter, the multiple choices with sentence options longer."""


def length_blocks(spans: list[list[tuple[int, int]]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's questions ((start, length) spans) split into a short and a long block, padded per block."""
    blocks = []
    for short in (True, False):
        picked = [[(at, n) for at, n in row if (n <= SHORT_QUESTION) == short] for row in spans]
        if not any(picked):
            continue
        longest = max(n for row in picked for _, n in row)
        positions = torch.zeros((len(spans), max(map(len, picked)), longest), dtype=torch.long)
        valid = torch.zeros(positions.shape, dtype=torch.bool)
        for i, row in enumerate(picked):
            for k, (at, n) in enumerate(row):
                positions[i, k, :n] = torch.arange(at, at + n)
                valid[i, k, :n] = True
        blocks.append((positions, valid))
    return blocks


# The labels recipe's probe classes: no cone, or a cone in one range bin x bearing bin (nearest centre).
PROBE_RANGES_M = (5.0, 9.0, 13.0)
PROBE_BEARINGS_DEG = (-16.0, -5.0, 5.0, 16.0)
CONE_CLASSES = 1 + len(PROBE_RANGES_M) * len(PROBE_BEARINGS_DEG)


def cone_class(item: T.Seen) -> int:
    r = min(range(len(PROBE_RANGES_M)), key=lambda i: abs(item.depth - PROBE_RANGES_M[i]))
    b = min(range(len(PROBE_BEARINGS_DEG)), key=lambda i: abs(item.bearing - PROBE_BEARINGS_DEG[i]))
    return 1 + r * len(PROBE_BEARINGS_DEG) + b


def patch_labels(scene: T.TestbedScene, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view and patch ([V, grid * grid]): the class of a cone centred there, and whether any road user
    or cone covers it. Only the labels recipe trains on them; the study counts cone tokens with them."""
    cones = torch.zeros(NUM_CAMERAS, grid, grid, dtype=torch.long)
    objects = torch.zeros(NUM_CAMERAS, grid, grid, dtype=torch.bool)
    sx, sy = grid / IMAGE_WIDTH, grid / IMAGE_HEIGHT
    for v, cam in enumerate(CAMERA_NAMES):
        for item in sorted(scene.seen.get(cam, []), key=lambda o: -o.depth):  # the nearer object wins a patch
            x1, y1, x2, y2 = item.bbox
            objects[v, int(y1 * sy):int(y2 * sy) + 1, int(x1 * sx):int(x2 * sx) + 1] = True
            if item.kind == "cone":
                cones[v].view(-1)[patch_index(item.point, grid)] = cone_class(item)
    return cones.flatten(1), objects.flatten(1)


def patch_index(point: tuple[float, float], grid: int) -> int:
    """The patch (row-major, of grid x grid) that a full-resolution pixel falls in once the view is resized."""
    return int(point[1] * grid / IMAGE_HEIGHT) * grid + int(point[0] * grid / IMAGE_WIDTH)


def dropped_background(objects: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """The labels recipe's dropout: background patches only, down to a random share.

    Objects (road users, cones) are never dropped, so every input looks as if an oracle pruner had kept
    each object: inputs shaped like T-FPS's become the training distribution, and a pruner that drops a
    cone meets a model that never learned that an object it cannot see may still be there.
    """
    n = objects.numel()
    background = torch.nonzero(~objects).flatten()
    keep = max(int(objects.sum()), round(n * rng.uniform(0.05, 0.8)))
    drop = min(len(background), n - keep)
    order = torch.randperm(len(background), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    return background[order[:drop]]


def dropped_uniform(objects: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Indices of one view's patches that token dropout removes: any patches, down to a random share.

    ``objects`` only gives the view's size: what a token shows plays no part.
    """
    n = objects.numel()
    keep = max(1, round(n * rng.uniform(0.05, 0.8)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    return order[:n - keep].sort().values


class SceneBatches(torch.utils.data.IterableDataset):
    """Endless training batches of freshly drawn scenes; one stream per seed, whichever process draws it.

    A DataLoader worker draws the scenes while the main process trains; with a single worker the
    stream (and so the training run) is the same as drawing them in the main process.
    """

    def __init__(self, seed: int, setting: Setting, layout: PromptTokens, spec, num_layers: int,
                 recipe: Recipe = RECIPES["honest"]):
        self.seed, self.setting, self.layout, self.spec, self.num_layers = seed, setting, layout, spec, num_layers
        self.recipe = recipe

    def __iter__(self):
        from prune2drive_ros.data.synthetic_world import make_rig

        if torch.utils.data.get_worker_info() is not None:  # a drawing process: leave the cores to training
            torch.set_num_threads(1)
        rig = make_rig()
        scene_rng = random.Random(self.seed)  # evaluation sets come from their own seeds, never from this stream
        batch_rng = random.Random(self.seed + 1)
        start = round(self.recipe.dropout_from * self.setting.steps)
        for step in itertools.count():
            scenes = [T.make_scene(scene_rng, rig) for _ in range(self.setting.batch)]
            yield make_batch(scenes, self.layout, self.spec, self.setting, self.num_layers, batch_rng, self.recipe,
                             dropout=step >= start)


# ---------------------------------------------------------------- forward pass


def visual_embeddings(model, pixels: torch.Tensor) -> torch.Tensor:
    """[V, N + 1, D]: SigLIP features of the configured layer (no post-layernorm), projected, plus image_newline."""
    inner = model.model
    out = inner.vision_tower(pixels, output_hidden_states=True)
    hidden = out.hidden_states[model.config.vision_feature_layer]
    features = inner.multi_modal_projector(hidden)
    newline = inner.image_newline.expand(features.shape[0], 1, -1)
    return torch.cat([features, newline], dim=1)


@dataclass
class Packed:
    hidden: torch.Tensor  # [B, T, D] last-layer hidden states, before the final norm
    visual: torch.Tensor  # [B * V, N + 1, D] the projected views the decoder reads
    first: torch.Tensor  # [B, T, D] the output of decoder layer 0: the features T-FPS compares (K = 1)
    guided: torch.Tensor  # [B, T, D] the input of the decoder layer that guided_layer() names
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin at every position


def packed_forward(model, batch: Batch, layout: PromptTokens) -> Packed:
    """The decoder over a packed batch, layer by layer, switching to the dropout mask at each scene's layer."""
    lm = model.model.language_model
    b = batch.ids.shape[0]
    embeds = lm.embed_tokens(batch.ids)
    visual = visual_embeddings(model, batch.pixels)  # [B * V, N + 1, D]
    mask = layout.image_mask
    embeds = torch.cat([embeds[:, : len(mask)].masked_scatter(mask[None, :, None],
                                                               visual.reshape(b, -1, visual.shape[-1])),
                        embeds[:, len(mask):]], dim=1)
    cos, sin = lm.rotary_emb(embeds, batch.positions)
    hidden, first, guided = embeds, embeds, embeds
    for index, layer in enumerate(lm.layers):
        if index == guided_layer(len(lm.layers)):
            guided = hidden
        use_pruned = (batch.prune_layer <= index)[:, None, None]
        allowed = torch.where(use_pruned, batch.allowed_pruned, batch.allowed)  # [B, T, T]
        hidden = packed_layer(layer, hidden, (cos, sin), allowed, batch, len(layout.prefix))
        if index == 0:
            first = hidden
    return Packed(hidden, visual, first, guided, (cos, sin))


def packed_layer(layer, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], allowed: torch.Tensor,
                 batch: Batch, prefix: int) -> torch.Tensor:
    """One Llama decoder layer (its own weights) over a packed batch, with attention in two parts.

    ``allowed`` says who may attend to whom, but nearly all of it is empty: a question sees only the
    prefix and itself. So the prefix attends within the prefix, and each question, gathered into a
    padded block of its own, attends to the prefix's keys and its own; computing the whole T x T square
    cost twice as much. Boolean masks keep SDPA on its fused CPU kernel (additive masks are ~5x slower).
    """
    from transformers.models.llama.modeling_llama import rotate_half

    attn = layer.self_attn
    b, t, _ = hidden.shape
    d = attn.head_dim
    x = layer.input_layernorm(hidden)
    cos, sin = rope[0][:, :, None], rope[1][:, :, None]  # [B, T, 1, d]
    q = attn.q_proj(x).view(b, t, -1, d)
    k = attn.k_proj(x).view(b, t, -1, d)
    v = attn.v_proj(x).view(b, t, -1, d)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    groups = attn.num_key_value_groups
    k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)  # [B, T, H, d]

    out = q.new_zeros(q.shape)
    heads_first = (lambda z: z.transpose(1, 2))  # noqa: E731
    out[:, :prefix] = heads_first(F.scaled_dot_product_attention(
        heads_first(q[:, :prefix]), heads_first(k[:, :prefix]), heads_first(v[:, :prefix]),
        attn_mask=allowed[:, None, :prefix, :prefix], scale=attn.scaling))

    rows = torch.arange(b)[:, None, None]
    for positions, valid in batch.blocks:
        nq, length = positions.shape[1:]
        seen = allowed[torch.arange(b)[:, None], positions[:, :, 0], :prefix]  # [B, Q, P] prefix columns it may use
        own = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & valid[:, :, None, :]
        own |= torch.eye(length, dtype=torch.bool)  # padding rows attend to themselves only
        block_mask = torch.cat([seen[:, :, None].expand(b, nq, length, prefix), own], dim=3)

        queries = q[rows, positions].flatten(0, 1).transpose(1, 2)  # [B * Q, H, L, d]
        answered = F.scaled_dot_product_attention(queries, _with_prefix(k, positions, prefix),
                                                  _with_prefix(v, positions, prefix), scale=attn.scaling,
                                                  attn_mask=block_mask.flatten(0, 1)[:, None])
        answered = answered.transpose(1, 2).reshape(b, nq, length, -1, d)
        out = out.index_put((rows.expand_as(valid)[valid], positions[valid]), answered[valid])
    hidden = hidden + attn.o_proj(out.reshape(b, t, -1))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def _with_prefix(z: torch.Tensor, positions: torch.Tensor, prefix: int) -> torch.Tensor:
    """[B, T, H, d] keys or values -> [B * Q, H, P + L, d]: the shared prefix, then each question's own."""
    b, nq = positions.shape[:2]
    shared = z[:, None, :prefix].expand(b, nq, prefix, *z.shape[2:])
    own = z[torch.arange(b)[:, None, None], positions]
    return torch.cat([shared, own], dim=2).flatten(0, 1).transpose(1, 2)


@torch.no_grad()
def packed_logits(model, batch: Batch, layout: PromptTokens) -> torch.Tensor:
    hidden = packed_forward(model, batch, layout).hidden
    return model.lm_head(model.model.language_model.norm(hidden)).float()


class ViewCounts(torch.nn.Module):
    """Training only (never saved): each view's cone count, read from the last layer at the view's newline.

    The honest recipe's one aid besides the answers. It is the count question asked of every view of
    every scene, answered by a linear head instead of the language head: one label per view, above every
    layer a pruner compares tokens at, saying nothing about which token shows a cone. Without it the
    answer loss alone left the small model at the question priors (development set, MC 0.52 after 800
    steps): the letters of the view questions are a few tokens among the nearest-cone coordinates.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.head = torch.nn.Linear(hidden, T.MAX_CONES + 1)

    def forward(self, model, packed: Packed, batch: Batch, layout: PromptTokens) -> torch.Tensor:
        newline = layout.patches[:, -1] + 1  # [V] each view's image_newline token
        hidden = model.model.language_model.norm(packed.hidden[:, newline])  # [B, V, D]
        return F.cross_entropy(self.head(hidden).flatten(0, 1), batch.view_counts.flatten())


class Probes(torch.nn.Module):
    """Linear read-outs used during training only (never saved): they give every visual token a label.

    Answers alone say little per step about which of 384 tokens mattered. The probes ask each patch
    token whether a cone stands there (and at which range slot), once as the decoder receives it and
    once after layer 0, where T-FPS compares tokens; and ask the layer-0 output which camera the token
    came from, so that a question naming a view can find its tokens by content, also after pruning.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.cone_in = torch.nn.Linear(hidden, CONE_CLASSES)
        self.cone_first = torch.nn.Linear(hidden, CONE_CLASSES)
        self.camera_first = torch.nn.Linear(hidden, NUM_CAMERAS)
        self.register_buffer("cone_weight", torch.tensor([1.0] + [CONE_UPWEIGHT] * (CONE_CLASSES - 1)),
                             persistent=False)

    def forward(self, packed: Packed, batch: Batch, layout: PromptTokens) -> torch.Tensor:
        b, v, n = batch.cones.shape
        cones = batch.cones.flatten()
        loss = F.cross_entropy(self.cone_in(packed.visual[:, :n]).flatten(0, 1), cones, self.cone_weight)
        # Layer 0's output is a real feature only where layer 0 saw every token.
        whole = (batch.prune_layer >= 1)[:, None, None].expand(b, v, n).flatten()
        if whole.any():
            tokens = packed.first[:, layout.patches.flatten()].flatten(0, 1)[whole]  # [B * V * N, D]
            camera = torch.arange(v).repeat_interleave(n).repeat(b)[whole]
            loss = loss + F.cross_entropy(self.cone_first(tokens), cones[whole], self.cone_weight)
            loss = loss + F.cross_entropy(self.camera_first(tokens), camera)
        return loss


def view_attention_loss(model, packed: Packed, batch: Batch, layout: PromptTokens) -> torch.Tensor:
    """-log of the attention mass that head 0 of guided_layer() puts where a question points.

    That is the view a question names, from the position that predicts the answer; or, for an answer
    that tags an object, that object's patch, from every answer position. Without this hint the small model sits for
    thousands of steps answering per-view questions from their priors: it has to learn, at once, to
    look at one view and to read cones there, and neither pays off before the other.
    """
    from transformers.models.llama.modeling_llama import rotate_half

    if not len(batch.asks):
        return packed.hidden.new_zeros(())
    layers = model.model.language_model.layers
    index = guided_layer(len(layers))
    layer = layers[index]
    attn = layer.self_attn
    rows, at, views, patches = batch.asks.unbind(1)
    x = layer.input_layernorm(packed.guided)
    dim = attn.head_dim
    cos, sin = packed.rope
    q = attn.q_proj(x[rows, at])[:, :dim]  # [R, d] head 0
    k = attn.k_proj(x)[..., :dim]  # [B, T, d] its key/value head
    q = q * cos[rows, at] + rotate_half(q) * sin[rows, at]
    k = k * cos + rotate_half(k) * sin
    # Against every row's keys at once, then each ask's own row: cheaper than gathering [R, T, d] keys per ask.
    logits = (q @ k.flatten(0, 1).T).view(len(q), *k.shape[:2])[torch.arange(len(q)), rows] * attn.scaling
    pruned = batch.prune_layer[rows] <= index
    allowed = torch.where(pruned[:, None], batch.allowed_pruned[rows, at], batch.allowed[rows, at])
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    view = layout.patches[views]  # [R, N]
    on_view = torch.logsumexp(logp.gather(1, view).masked_fill(~allowed.gather(1, view), float("-inf")), dim=-1)
    on_patch = logp.gather(1, view.gather(1, patches.clamp(min=0)[:, None])).squeeze(1)
    # Uniform dropout may remove the tagged patch: then the hint points at the view.
    mass = torch.where((patches >= 0) & torch.isfinite(on_patch), on_patch, on_view)
    return -(mass * batch.ask_weights).sum() / batch.ask_weights.sum()


def aid_loss(model, packed: Packed, batch: Batch, layout: PromptTokens, probes: Probes | None,
             counts: ViewCounts | None) -> torch.Tensor:
    """The training-only losses besides the answers: the attention hint, and the recipe's probes or view counts."""
    loss = view_attention_loss(model, packed, batch, layout)
    if probes is not None:
        loss = loss + probes(packed, batch, layout)
    if counts is not None:
        loss = loss + counts(model, packed, batch, layout)
    return loss


def guided_layer(num_layers: int) -> int:
    """Layer 2 (layers 0-1 gather the view's name into the answer position), or the last of a shallower model."""
    return min(2, num_layers - 1)


CONE_UPWEIGHT = 4.0  # about 2 of a view's 64 patches hold a cone
PROBE_WEIGHT = 0.3


PROGRESS_EVERY = 100
"""Steps between two lines of the training log (loss, and the letter hits per multiple-choice kind)."""


def answer_loss(model, packed: Packed, batch: Batch) -> tuple[torch.Tensor, dict[str, list[bool]]]:
    """Cross-entropy of the answer tokens (every answer token of the batch weighs the same), and per
    multiple-choice kind whether each answer's letter was already the model's first choice.

    Every training scene is new, so the letters' hits before the update estimate held-out accuracy as
    training goes (progressive validation), at no cost.
    """
    picked = batch.targets != -100
    logits = model.lm_head(model.model.language_model.norm(packed.hidden[picked])).float()
    losses = F.cross_entropy(logits, batch.targets[picked], reduction="none")
    kinds = batch.answer_kind[picked]
    hits = (logits.argmax(-1) == batch.targets[picked]).tolist()
    by_kind = {kind: [h for h, k in zip(hits, kinds.tolist(), strict=True) if k == T.KINDS.index(kind)]
               for kind in T.MC_KINDS}
    return (losses * batch.weights[picked]).sum(), by_kind


# ---------------------------------------------------------------- training


def _lr_factor(step: int, steps: int, warmup: int = 30) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _deterministic(fn):
    """Run ``fn`` with torch's deterministic algorithms, then restore the caller's setting.

    Some CPU backward kernels accumulate in thread order, so without them a seed reproduces the loss
    curve but not the weights bit for bit. They cost about 8% of the training time.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(was)

    return wrapper


@_deterministic
def train(out: str | Path, setting: str | Setting = "full", *, recipe: str = "honest", seed: int = 0,
          steps: int | None = None, threads: int | None = None, workers: int = 1, progress: bool = True,
          command: str = "", init: str | Path | None = None) -> dict:
    """Train, write the checkpoint to ``out``, score it on the development scenes; returns the record."""
    from tqdm import tqdm
    from transformers import LlavaOnevisionForConditionalGeneration

    from prune2drive_ros.vlm.preprocess import ImageSpec

    name = setting if isinstance(setting, str) else "custom"
    s = SETTINGS[setting] if isinstance(setting, str) else setting
    how = RECIPES[recipe]
    if steps is not None:
        s = replace(s, steps=steps)
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    load_average = round(os.getloadavg()[0], 2)  # a shared machine's load says how comparable train_seconds is
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    if init is not None:  # continue from a checkpoint of the same setting (weights and tokenizer)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(init, trust_remote_code=False)
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(init, dtype=torch.float32,
                                                                       use_safetensors=True)
        config = model.config
        if config.vision_config.image_size != s.grid * PATCH:
            raise ValueError(f"{init} has {config.vision_config.image_size}-px views; setting {name!r} needs "
                             f"{s.grid * PATCH}")
    else:
        tokenizer = build_tokenizer(corpus(seed), s.vocab)
        config = model_config(tokenizer, s)
        model = LlavaOnevisionForConditionalGeneration(config)
        with torch.no_grad():  # some versions leave image_newline at zeros; start it like the other embeddings
            model.model.image_newline.normal_(0.0, 0.02)
    config.text_config._attn_implementation = "sdpa"
    model.train()
    layout = PromptTokens(tokenizer, s.grid * s.grid)
    spec = ImageSpec(size=s.grid * PATCH)
    batches = SceneBatches(seed, s, layout, spec, config.text_config.num_hidden_layers, how)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    probes = Probes(config.text_config.hidden_size) if how.probes else None
    counts = ViewCounts(config.text_config.hidden_size) if how.view_counts else None
    params = [*model.parameters(), *(probes.parameters() if probes is not None else ()),
              *(counts.parameters() if counts is not None else ())]
    optimizer = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, s.steps))
    losses: list[float] = []
    probe_losses: list[float] = []
    bar = tqdm(range(s.steps), desc="train-testbed", unit="step", disable=not progress, dynamic_ncols=True)
    window: dict[str, list[bool]] = {kind: [] for kind in T.MC_KINDS}
    progress_log: list[dict] = []
    for step, batch in zip(bar, loader, strict=False):
        packed = packed_forward(model, batch, layout)
        loss, hits = answer_loss(model, packed, batch)
        for kind, h in hits.items():
            window[kind] += h
        if (step + 1) % PROGRESS_EVERY == 0 or step + 1 == s.steps:
            progress_log.append({"step": step + 1, "loss": round(float(np.mean(losses[-PROGRESS_EVERY:] or [0])), 4),
                                 **{k: round(float(np.mean(v)), 3) for k, v in window.items() if v}})
            window = {kind: [] for kind in T.MC_KINDS}
            if progress:
                bar.write("  ".join(f"{k} {v}" for k, v in progress_log[-1].items()))
        probe = aid_loss(model, packed, batch, layout, probes, counts)
        optimizer.zero_grad(set_to_none=True)
        (loss + PROBE_WEIGHT * probe).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        probe_losses.append(probe.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", hints=f"{np.mean(probe_losses[-20:]):.3f}",
                        refresh=False)
    bar.close()
    train_s = time.perf_counter() - t0
    load_end = [round(v, 2) for v in os.getloadavg()]

    model.eval()
    record = {
        "trained_test_bed": True,
        "note": "synthetic test bed trained by `prune2drive train-testbed`, not DriveMM; scores on it are not DriveLM",
        "command": command or f"prune2drive train-testbed {out} --setting {name} --recipe {recipe} --seed {seed}",
        "setting": name,
        "recipe": recipe,
        "recipe_parts": asdict(how),
        "seed": seed,
        "dev_seed": DEV_SEED,
        "tokens_per_view": f"{s.grid}x{s.grid}",
        "train_seconds": round(train_s, 1),
        "threads": torch.get_num_threads(),
        "load_average": load_average,
        "load_average_end": load_end,
        "steps": s.steps,
        "scenes_seen": s.steps * s.batch,
        "loss_first20": round(float(np.mean(losses[:20])), 4),
        "loss_last20": round(float(np.mean(losses[-20:])), 4),
        "hint_loss_last20": round(float(np.mean(probe_losses[-20:])), 4),
        "progress": progress_log,
        "hyperparameters": asdict(s),
    }
    if init is not None:
        previous = getattr(model.config, TESTBED_MARKER, None) or {}
        record["continued_from"] = {k: previous.get(k) for k in ("command", "seed", "steps", "train_seconds")}
    save_checkpoint(model, tokenizer, s, out, record)
    (out / "loss.json").write_text(json.dumps([round(v, 5) for v in losses]))
    plot_loss(losses, out / "loss.png", f"train-testbed ({name}, {recipe} recipe, seed {seed}, "
              f"{s.grid}x{s.grid} tokens/view)")
    record["dev"] = evaluate(out, T.make_scenes(s.eval_scenes, DEV_SEED), progress=progress)
    save_checkpoint(model, tokenizer, s, out, record)  # again, now with the development scores in the record
    (out / "README.md").write_text(model_card(record))
    return record


def model_card(record: dict) -> str:
    """README.md of a trained checkpoint: what it is, how it was trained, what it scores."""
    dev = record["dev"]
    h = record["hyperparameters"]
    rows = "\n".join(f"| {kind} | {dev[kind]:.3f} |" for kind in (*T.KINDS, "mc_accuracy", "mc_chance")
                     if dev.get(kind) is not None)
    return f"""# Test-bed model (synthetic street, not DriveMM)

A small LLaVA-OneVision model (SigLIP-shaped vision tower, 2-layer GELU projector, Llama decoder) trained
from scratch by `prune2drive train-testbed` on this package's synthetic six-camera street with traffic
cones among look-alikes. It reads DriveMM's six-view prompt with **{record['tokens_per_view']} visual tokens
per view** (DriveMM: 27x27). Its answers are meaningful for the synthetic scenes only; scores on it are not
DriveLM scores. `config.json` carries the record below under `{TESTBED_MARKER}`.

- command: `{record['command']}`
- recipe: `{record['recipe']}` ({', '.join(f'{k}={v}' for k, v in record['recipe_parts'].items())}; see
  `prune2drive_ros/training/testbed.py`; hints and probes are training-only and not part of the checkpoint)
- seed: {record['seed']}; the scores below are on the development scenes (seed {record['dev_seed']}), never
  trained on; the README's table is on the test scenes, which this record does not touch
- training: {record['steps']} steps, {record['scenes_seen']} freshly drawn scenes, {record['train_seconds']:.0f} s on
  {record['threads']} CPU threads (machine load average {record['load_average']} at the start,
  {record.get('load_average_end', 'not recorded')} (1/5/15 min) at the end); answer loss
  {record['loss_first20']:.3f} (first 20 steps) -> {record['loss_last20']:.3f} (last 20), curve in `loss.png`
- model: vision {h['vision_layers']} x {h['vision_hidden']}, text {h['layers']} layers x {h['hidden']} (FFN {h['ffn']}),
  vocabulary {h['vocab']}

Development scores, dense (no pruning), {dev['scenes']} scenes / {dev['questions']} questions
(multiple choice: accuracy; nearest cone: point-match F1 within 16 px):

| question kind | score |
|---|---|
{rows}
"""


def save_checkpoint(model, tokenizer, s: Setting, out: Path, record: dict) -> None:
    from transformers import GenerationConfig

    from prune2drive_ros.vlm.tiny import preprocessor_config

    setattr(model.config, TESTBED_MARKER, record)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[eot, tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
        pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    write_hub_layout(out / "model.safetensors")
    tokenizer.save_pretrained(out)
    pre = preprocessor_config()
    pre["size"] = {"height": s.grid * PATCH, "width": s.grid * PATCH}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))


def write_hub_layout(weights: Path) -> None:
    """Rename the SigLIP tower's weights to the hub's ``vision_tower.vision_model.*``, in place.

    Recent transformers releases save the tower without the ``vision_model`` level; 5.0 reads such a
    file with a random vision tower (and only a warning). Every 5.x release reads the hub layout.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    prefix = "vision_tower."
    renamed = {(f"{prefix}vision_model.{k[len(prefix):]}" if k.startswith(prefix) and
                not k.startswith(f"{prefix}vision_model.") else k): v for k, v in tensors.items()}
    save_file(renamed, str(weights), metadata=metadata)


def plot_loss(losses: list[float], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="C0", alpha=0.35, lw=0.8, label="per step")
    window = max(1, len(losses) // 25)
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="C0", lw=2, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("answer-token cross-entropy (per question)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- scores


def evaluate(model_dir: str | Path, scenes: int | list[T.TestbedScene], *, pruning: str = "none",
             retain: float | None = None, progress: bool = False) -> dict:
    """Per-kind accuracy (multiple choice) and match F1 (nearest cone) of a checkpoint, dense by default, on
    ``scenes`` (a count: that many development scenes)."""
    from tqdm import tqdm

    from prune2drive_ros.eval.metrics import match_f1, parse_option_letter, question_options
    from prune2drive_ros.vlm.runner import VLMRunner

    scenes = T.make_scenes(scenes, DEV_SEED) if isinstance(scenes, int) else scenes
    runner = VLMRunner.from_pretrained(str(model_dir), pruning=pruning, retain=retain, device="cpu",
                                       dtype="float32", max_new_tokens=40)
    scores: dict[str, list[float]] = {kind: [] for kind in T.KINDS}
    chance: list[float] = []
    for scene in tqdm(scenes, desc="scoring", unit="scene", disable=not progress):
        answers = runner.answer(scene.images, [qa.question for qa in scene.qas])
        for qa, ans in zip(scene.qas, answers, strict=True):
            if qa.kind == "nearest":
                scores[qa.kind].append(match_f1(ans.text, qa.answer))
            else:
                scores[qa.kind].append(float(parse_option_letter(ans.text, qa.question) == qa.answer))
                chance.append(1.0 / len(question_options(qa.question)))
    runner.close()
    result = {kind: round(float(np.mean(v)), 4) for kind, v in scores.items() if v}
    mc = [x for kind in T.MC_KINDS for x in scores[kind]]
    result["mc_accuracy"] = round(float(np.mean(mc)), 4) if mc else None
    result["mc_chance"] = round(float(np.mean(chance)), 4) if chance else None  # uniform guessing
    result["questions"] = sum(len(v) for v in scores.values())
    result["scenes"] = len(scenes)
    return result


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder for the checkpoint")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="full",
                        help="full: the shipped test bed (within 30 min on 2 cores); quick: about 1 min, for tests")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="honest",
                        help="honest: answers only, no labels on visual tokens (default); labels: the earlier "
                             "release's probes and background-only dropout, for the ablation")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--steps", type=int, help="override the setting's number of steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing scenes (default 1; 0: in-process)")
    parser.add_argument("--init", type=Path, help="continue training this checkpoint (same setting) instead of a new model")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    command = "prune2drive train-testbed " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
    record = train(args.out, args.setting, recipe=args.recipe, seed=args.seed, steps=args.steps, threads=args.threads,
                   workers=args.workers, progress=not args.no_progress, command=command, init=args.init)
    dev = record["dev"]
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    print(f"trained in {record['train_seconds']:.0f} s (load {record['load_average']} -> "
          f"{record['load_average_end']}); loss {record['loss_first20']:.3f} -> {record['loss_last20']:.3f}; "
          f"development set ({dev['scenes']} scenes, {dev['questions']} questions): "
          + ", ".join(f"{k} {v}" for k, v in dev.items() if k in (*T.KINDS, "mc_accuracy")))
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB, {record['tokens_per_view']} visual tokens per view)")
    return 0
