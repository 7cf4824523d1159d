"""The VLM runtime: parity with transformers' generate, pruning, prefix reuse, conversion, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from prune2drive_ros.vlm import VLMRunner
from prune2drive_ros.vlm.preprocess import preprocess

QUESTIONS = ["Is it safe to turn left?", "What are the important objects in the current scene?"]
MAX_NEW = 8


def _images(seed: int = 0, h: int = 90, w: int = 160) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(6)]


def _hf_generate(runner: VLMRunner, images, question: str) -> list[int]:
    """transformers' own generate on the same prompt ids and pixels."""
    suffix = runner.tokenizer(runner.prompt.suffix(question), add_special_tokens=False).input_ids
    ids = torch.cat([runner.prefix_ids, torch.tensor(suffix, device=runner.device)])[None]
    pixels = preprocess(images, runner.image_spec, runner.device, runner.dtype)
    out = runner.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels,
        image_sizes=torch.tensor([[384, 384]] * 6, device=runner.device),
        batch_num_images=torch.tensor([6], device=runner.device),
        max_new_tokens=MAX_NEW,
        do_sample=False,
        eos_token_id=runner.eos_token_ids,
        pad_token_id=runner.tokenizer.pad_token_id,
    )
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def dense(tiny_model) -> VLMRunner:
    return VLMRunner.from_pretrained(tiny_model, pruning="none", max_new_tokens=MAX_NEW)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_unpruned_greedy_equals_transformers_generate(arch, tiny_model, tiny_qwen_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model if arch == "llama" else tiny_qwen_model, pruning="none",
                                       max_new_tokens=MAX_NEW)
    images = _images(1)
    answers = runner.answer(images, QUESTIONS)
    for question, answer in zip(QUESTIONS, answers):
        assert answer.token_ids == _hf_generate(runner, images, question)
    assert answers[0].token_ids != answers[1].token_ids  # the check can fail: answers depend on input


def test_compiled_layers_equal_transformers_generate_and_fuse_the_token_step(tiny_model) -> None:
    """compile="on" on a CPU (inductor's C++ backend): generate's greedy tokens, and a decoder layer of the
    token step is a few fused kernels around its GEMMs."""
    from torch._inductor.utils import run_and_get_code

    from prune2drive_ros.vlm.graph_rules import inductor_launches
    from prune2drive_ros.vlm.graphs import Compiler
    from prune2drive_ros.vlm.layers import cached_layer, tail_mask

    runner = VLMRunner.from_pretrained(tiny_model, pruning="none", max_new_tokens=MAX_NEW, compile="on")
    images = _images(1)
    answers = runner.answer(images, QUESTIONS)
    assert set(answers[0].paths.values()) == {"eager (cpu; compiled)"} and not runner.compiler.failures
    for question, answer in zip(QUESTIONS, answers):
        assert answer.token_ids == _hf_generate(runner, images, question)

    llm, batch, shape = runner.llm, runner._decode, runner.llm.shape

    def layer(x, cos, sin, w, *buffers):  # the same traced graph as the runner's: inductor's cache answers
        return cached_layer(x, cos, sin, w, shape, *buffers)

    x = torch.zeros(2, 1, runner.model.config.text_config.hidden_size)
    cos = sin = torch.zeros(2, 1, llm.head_dim)
    hidden = tail_mask(torch.ones(2, 1, 8 + batch.max_new_tokens, dtype=torch.bool), shape.groups)
    with torch.inference_mode():
        _, codes = run_and_get_code(Compiler(True, strict=True)(layer, "cached layer"), x, cos, sin, llm.weights[0],
                                    batch.cache.prefix_k[0], batch.cache.prefix_v[0], batch.cache.tail_k[0],
                                    batch.cache.tail_v[0], batch.slot_index[8:9], hidden)
    launches = inductor_launches(codes[0])
    assert launches["mm"] + launches["bmm"] + launches["addmm"] == 8  # qkv, o, gate_up, down; 2 x 2 attention
    assert sum(launches.values()) <= 17, launches  # eagerly: 39 (test_vlm_static.OPS_PER_LAYER)


def test_tfps_at_full_retain_equals_none(tiny_model, dense) -> None:
    full = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=1.0, max_new_tokens=MAX_NEW)
    images = _images(2)
    assert [a.token_ids for a in full.answer(images, QUESTIONS)] == [
        a.token_ids for a in dense.answer(images, QUESTIONS)
    ]


def test_pruned_prefill_keeps_budgets_and_cache_holds_only_kept(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.1, prune_layer=1, max_new_tokens=MAX_NEW)
    answers = runner.answer(_images(3), QUESTIONS[:1])
    assert answers[0].kept_per_view == [73] * 6
    assert answers[0].visual_tokens == 6 * 730
    assert all(k == sorted(set(k)) for k in answers[0].kept_indices)
    assert 0 < answers[0].flops < answers[0].flops_dense
    lengths = runner.prefix.tokens_per_layer
    text_tokens = runner.layout.length - 6 * 729
    assert lengths[0] == runner.layout.length  # layer 0 (< K) sees everything
    assert set(lengths[1:]) == {text_tokens + 6 * 73}


def test_prefix_is_shared_and_batching_matches_single_questions(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.25, max_new_tokens=MAX_NEW)
    images = _images(4)
    batch = runner.answer(images, QUESTIONS)
    assert [a.prefix_reused for a in batch] == [False, True]
    again = runner.answer(images, QUESTIONS[1])
    assert again[0].prefix_reused and again[0].timings_ms["vision"] == 0.0
    assert again[0].token_ids == batch[1].token_ids
    fresh = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.25, max_new_tokens=MAX_NEW)
    assert fresh.answer(images, QUESTIONS[1])[0].token_ids == batch[1].token_ids
    other = runner.answer(_images(5), QUESTIONS[1])
    assert not other[0].prefix_reused
    for key in ("preprocess", "vision", "prune", "prefill", "decode", "total"):
        assert key in batch[0].timings_ms


def test_budget_change_invalidates_prefix(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.25, max_new_tokens=2)
    images = _images(6)
    runner.answer(images, QUESTIONS[0])
    runner.set_budgets(view_ratios=[0.5, 0.1, 0.1, 0.2, 0.1, 0.1])
    answer = runner.answer(images, QUESTIONS[0])[0]
    assert not answer.prefix_reused
    assert answer.kept_per_view == [int(729 * r + 0.5) for r in [0.5, 0.1, 0.1, 0.2, 0.1, 0.1]]


@pytest.mark.parametrize("method,layer", [("fastv", 1), ("mvpruner", 1), ("divprune", 0), ("pool", 2),
                                          ("random", 1)])
def test_every_pruner_runs_in_the_model(tiny_model, method, layer) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning=method, retain=0.1, prune_layer=layer, max_new_tokens=3)
    answers = runner.answer(_images(7), QUESTIONS)
    assert len(answers) == 2 and all(a.token_ids for a in answers)
    total = sum(answers[0].kept_per_view)
    assert total <= 6 * 73 + 6  # rounding in adaptive re-division may move a token between views
    if runner.pruner.question_dependent:
        assert not any(a.prefix_reused for a in answers)


def test_llava_next_checkpoint_converts_to_identical_logits(tmp_path: Path) -> None:
    from transformers import LlavaOnevisionForConditionalGeneration

    from prune2drive_ros.vlm.convert import load_llava_next
    from prune2drive_ros.vlm.tiny import make_tiny_model

    hf = make_tiny_model(tmp_path / "hf", fmt="hf", seed=3)
    orig = make_tiny_model(tmp_path / "orig", fmt="llava-next", seed=3)
    assert json.loads((orig / "config.json").read_text())["model_type"] == "llava_llama"
    reference = LlavaOnevisionForConditionalGeneration.from_pretrained(hf).eval()
    converted = load_llava_next(orig)[0]
    ids = torch.tensor([[1, 7, 9, 11, 42, 100]])
    with torch.no_grad():
        assert torch.equal(reference(input_ids=ids).logits, converted(input_ids=ids).logits)

    out = run_cli("convert-model", str(orig), str(tmp_path / "converted"))
    assert out.returncode == 0, out.stderr
    a = VLMRunner.from_pretrained(tmp_path / "converted", pruning="none", max_new_tokens=4)
    b = VLMRunner.from_pretrained(orig, pruning="none", max_new_tokens=4)  # in-memory conversion
    images = _images(8)
    assert a.answer(images, QUESTIONS[0])[0].token_ids == b.answer(images, QUESTIONS[0])[0].token_ids


def test_make_tiny_model_cli_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    from transformers import AutoConfig

    out = run_cli("make-tiny-model", str(tmp_path / "m"), "--text-arch", "qwen2")
    assert out.returncode == 0, out.stderr
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert config.model_type == "llava_onevision" and config.text_config.model_type == "qwen2"
    assert config.vision_config.image_size // config.vision_config.patch_size == 27
    size = sum(f.stat().st_size for f in (tmp_path / "m").iterdir())
    assert size < 8 * 2**20


def test_bad_inputs_raise_clear_errors(dense) -> None:
    good = _images(9)
    with pytest.raises(ValueError, match="expected 6 images"):
        dense.answer(good[:5], "q?")
    with pytest.raises(ValueError, match="image 2 must be an HxWx3 uint8"):
        dense.answer([*good[:2], good[2].astype(np.float32), *good[3:]], "q?")
    with pytest.raises(ValueError, match="bound is 4096"):
        dense.answer([np.zeros((10, 5000, 3), np.uint8), *good[1:]], "q?")
    with pytest.raises(ValueError, match="empty"):
        dense.answer([np.zeros((0, 5, 3), np.uint8), *good[1:]], "q?")
    with pytest.raises(ValueError, match="non-empty"):
        dense.answer(good, "   ")
    with pytest.raises(ValueError, match="bound is 512"):
        dense.answer(good, "why " * 600)


def test_bad_models_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VLMRunner.from_pretrained(tmp_path / "nope")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="unsupported architecture 'bert'"):
        VLMRunner.from_pretrained(tmp_path / "bert")


def test_weights_missing_from_the_checkpoint_refuse_to_load(tiny_model: Path, tmp_path: Path) -> None:
    """transformers only warns about weights it cannot find and leaves them random; the runner refuses."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "renamed"
    shutil.copytree(tiny_model, broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if "patch_embedding" in k)
    weights[name.replace("patch_embedding", "patch_embeddings")] = weights.pop(name)
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"weights of the model are not in the checkpoint.*patch_embedding"):
        VLMRunner.from_pretrained(broken)


def test_fastv_keeps_the_tokens_transformers_says_the_last_token_attends_most(tiny_model) -> None:
    """An independent check of the attention probe: eager attention weights from transformers itself."""
    from transformers import LlavaOnevisionForConditionalGeneration

    runner = VLMRunner.from_pretrained(tiny_model, pruning="fastv", retain=0.1, prune_layer=1, max_new_tokens=1)
    images = _images(10)
    kept = runner.answer(images, QUESTIONS[0])[0].kept_indices
    eager = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model, attn_implementation="eager").eval()
    suffix = runner.tokenizer(runner.prompt.suffix(QUESTIONS[0]), add_special_tokens=False).input_ids
    ids = torch.cat([runner.prefix_ids, torch.tensor(suffix)])[None]
    with torch.no_grad():
        out = eager(input_ids=ids, pixel_values=preprocess(images, runner.image_spec, runner.device, runner.dtype),
                    image_sizes=torch.tensor([[384, 384]] * 6), batch_num_images=torch.tensor([6]),
                    output_attentions=True)
    scores = out.attentions[0][0, :, -1].mean(0)  # layer K-1 = 0, last token, averaged over heads
    for view, positions in enumerate(runner.layout.patch_positions):
        expected = scores[positions].topk(73).indices.sort().values.tolist()
        assert kept[view] == expected
