"""The static-shape runtime on a CPU: the fused layers against transformers' own, fixed buffers, batch and
question buckets, nested stage timing, the frozen config, and the rules of CUDA graphs checked without a
GPU: every captured function runs under ``HostSyncGuard`` and is replayed from its recorded operations
(``graph_rules.RecordedCall``), with an operation budget per decoder layer of the token step."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from prune2drive_ros.vlm import RunnerConfig, VLMRunner
from prune2drive_ros.vlm.decode import BATCH_BUCKETS, DecodeBatch
from prune2drive_ros.vlm.graph_rules import HostSyncError, HostSyncGuard, OpCounter, RecordedCall
from prune2drive_ros.vlm.graphs import CaptureFailed, GraphSet, describe_failure
from prune2drive_ros.vlm.kv_cache import StaticKVCache
from prune2drive_ros.vlm.layers import tail_mask
from prune2drive_ros.vlm.runner import StageTimer

QUESTIONS = ["Is it safe to turn left?", "What are the important objects in the current scene?",
             "Is there a pedestrian?"]
# Kernels (aten operations, views excluded) per decoder layer of the eager fp32 token step: 39 = two RMSNorms
# (6 each), fused qkv, RoPE on q and k at once (5), KV writes (2), query regrouping, split-KV attention (10),
# o, residual, fused gate/up, SiLU, mul, down, residual. bf16 adds 5 casts. transformers' stock layer in the
# same step (main before issue 18): 37 with SDPA counted as one, q/k/v and gate/up separate.
OPS_PER_LAYER = 40
GRAPHED = dict(pruning="tfps", retain=0.25, max_new_tokens=6)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(6)]


def _graphed_on_cpu(model, **settings) -> VLMRunner:
    """A runner whose graphs are ``RecordedCall``s: captured under the guard and replayed without Python."""
    runner = VLMRunner.from_pretrained(model, max_question_tokens=64, **settings)
    runner.graphs = GraphSet(True, strict=True, call_type=RecordedCall)
    runner.set_pruning(runner.config.pruning)  # re-plans with graphs on: captures everything now
    return runner


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_layers_equal_transformers_decoder_layers(arch, tiny_model, tiny_qwen_model) -> None:
    """Our layer (fused weights, split-KV attention) against transformers' layer on the same weights."""
    runner = VLMRunner.from_pretrained(tiny_model if arch == "llama" else tiny_qwen_model, pruning="none",
                                       max_new_tokens=2)
    llm, index = runner.llm, 1
    prefix, tail = 40, 7
    torch.manual_seed(0)
    x = torch.randn(1, prefix + tail, runner.model.config.text_config.hidden_size)
    positions = torch.arange(prefix + tail)[None]
    with torch.inference_mode():
        cos, sin = llm.rope(x, positions)
        expected = llm.layers[index](x, attention_mask=None, position_ids=positions, position_embeddings=(cos, sin))
        expected = expected[0] if isinstance(expected, tuple) else expected
        got, _, _ = llm.prompt_layer(x, cos, sin, llm.weights[index])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)

        # The last 7 tokens as two rows' questions on the prefix of the first 40: row 1 holds 4 of them and
        # 3 padding tokens. Each row must see the prefix, and of its own tail only what causality allows.
        _, prefix_k, prefix_v = llm.prompt_layer(x[:, :prefix], cos[:, :prefix], sin[:, :prefix], llm.weights[index])
        cache = StaticKVCache([prefix] * llm.num_layers, 2, tail + 4, llm.kv_heads, llm.head_dim, dtype=x.dtype,
                              device=x.device)
        rows = torch.cat([x[:, prefix:], torch.cat([x[:, prefix : prefix + 4], torch.randn(1, 3, x.shape[-1])], 1)])
        slots = torch.arange(tail)
        visible = (torch.arange(tail + 4)[None, :] <= slots[:, None]).expand(2, -1, -1)
        out = llm.cached_layer(rows, cos[:, prefix:].expand(2, -1, -1), sin[:, prefix:].expand(2, -1, -1),
                               llm.weights[index], prefix_k, prefix_v, cache.tail_k[index], cache.tail_v[index], slots,
                               tail_mask(visible, llm.shape.groups))
    torch.testing.assert_close(out[0], expected[0, prefix:], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[1, :4], expected[0, prefix : prefix + 4], rtol=1e-5, atol=1e-4)
    # The stock projections are views of the fused ones: transformers' generate runs on the same weights.
    attn = llm.layers[index].self_attn
    assert attn.k_proj.weight.data_ptr() == attn.qkv_proj.weight.data_ptr() + attn.q_proj.weight.nbytes


def test_buffers_are_allocated_once_and_reused_across_frames_and_questions(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.1, max_new_tokens=6)
    runner.answer(_images(1), QUESTIONS[:2])
    batch = runner._decode
    assert isinstance(batch, DecodeBatch)
    pointers = [k.data_ptr() for k in (*batch.cache.prefix_k, *batch.cache.tail_k, batch.ids, batch.out)]
    runner.answer(_images(2), QUESTIONS[:1])  # another frame, fewer questions: same buffers
    runner.answer(_images(2), [QUESTIONS[1], "why " * 40])  # a longer question bucket: same buffers
    assert runner._decode is batch
    assert [k.data_ptr() for k in (*batch.cache.prefix_k, *batch.cache.tail_k, batch.ids, batch.out)] == pointers
    assert runner.prefix.keys[1].data_ptr() == batch.cache.prefix_k[1].data_ptr()  # the prefix is not copied
    # Only a budget change re-plans (and sizes new buffers).
    runner.set_budgets(retain=0.25)
    runner.answer(_images(2), QUESTIONS[:1])
    assert runner._decode is not batch


def test_a_bucket_padded_batch_answers_like_single_questions(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.25, max_new_tokens=8)
    images = _images(3)
    together = [a.token_ids for a in runner.answer(images, QUESTIONS)]  # 3 questions run in the 4-row bucket
    alone = [runner.answer(images, q, frame_key=("alone", i))[0].token_ids for i, q in enumerate(QUESTIONS)]
    assert together == alone
    assert len({tuple(t) for t in together}) > 1


def test_answers_stay_within_the_configured_bounds(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.1, max_new_tokens=4,
                                       max_question_tokens=40)
    images = _images(4)
    assert len(runner.answer(images, QUESTIONS[0], max_new_tokens=2)[0].token_ids) <= 2
    with pytest.raises(ValueError, match=r"max_new_tokens must be in \[1, 4\]"):
        runner.answer(images, QUESTIONS[0], max_new_tokens=5)
    with pytest.raises(ValueError, match="bound is 40"):
        runner.answer(images, "why " * 45)
    answers = runner.answer(images, [f"{q} ({i})" for i in range(3) for q in QUESTIONS])  # 9: two batches
    assert len(answers) == 9 and all(a.token_ids for a in answers)


def test_prune_time_is_its_own_stage_and_not_charged_to_prefill() -> None:
    timer = StageTimer(torch.device("cpu"))
    with timer.stage("prefill"):
        with timer.stage("prune"):
            x = torch.randn(300, 300)
            for _ in range(20):
                x = x @ x.T / 300
    assert timer.ms["prune"] > 0
    assert timer.ms["prefill"] < timer.ms["prune"]  # the outer stage got only its own (tiny) share


def test_runner_config_is_frozen_and_rejects_unknown_settings(tiny_model) -> None:
    config = RunnerConfig(model=str(tiny_model), view_ratios=[0.1] * 6)
    assert config.view_ratios == (0.1,) * 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retain = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown runner settings: colour"):
        VLMRunner.from_pretrained(tiny_model, colour="red")
    with pytest.raises(ValueError, match="cuda_graphs"):
        RunnerConfig(cuda_graphs="sometimes")
    with pytest.raises(ValueError, match="compile"):
        RunnerConfig(compile="maybe")
    runner = VLMRunner.from_config(config.replace(max_new_tokens=3))
    assert runner.config.max_new_tokens == 3 and runner.budgets == [73] * 6
    answer = runner.answer(_images(4), QUESTIONS[0])[0]
    assert answer.path == "eager"  # no CUDA graphs on a CPU
    assert answer.paths == {stage: "eager (cpu)" for stage in ("vision", "prefix", "question", "decode")}
    again = runner.answer(_images(4), QUESTIONS[1], frame_key=None)[0]
    assert again.prefix_reused and again.paths == answer.paths  # how the reused prefix was built


# -- CUDA graph rules, without a GPU ---------------------------------------------------------------------
def test_host_sync_guard_refuses_what_a_graph_cannot_do() -> None:
    x = torch.arange(6.0)
    forbidden = [lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x.nonzero(), lambda: x[x > 2],
                 lambda: x.masked_select(x > 2), lambda: x.tolist(), lambda: torch.tensor([1, 2]),
                 lambda: x.unique(), lambda: int(x[0])]
    for fn in forbidden:
        with pytest.raises(HostSyncError), HostSyncGuard():
            fn()
    with HostSyncGuard():  # integer positions, device-side selection and Python constants are fine
        picked = x[torch.arange(3)] + torch.where(x > 2, x, 0.0)[:3] + torch.full((3,), 2.0)
    assert picked.tolist() == [2.0, 3.0, 4.0]


def test_recorded_call_replays_like_a_graph_without_rerunning_python() -> None:
    state = {"scale": 2.0}
    buffer = torch.ones(3)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x * state["scale"] + buffer  # a Python value read at capture time

    call = RecordedCall(fn, [torch.zeros(3)])
    state["scale"] = 100.0  # a graph keeps the captured value; so does the replay
    buffer.fill_(5.0)  # but a static buffer's new contents are read
    assert call(torch.tensor([1.0, 2.0, 3.0])).tolist() == [7.0, 9.0, 11.0]


@pytest.fixture(scope="module")
def graphed(tiny_model) -> VLMRunner:
    return _graphed_on_cpu(tiny_model, **GRAPHED)


@pytest.mark.parametrize("pruning", ["tfps", "divprune"])
def test_captured_functions_keep_graph_rules_and_replay_equal_eager(tiny_model, graphed, pruning) -> None:
    settings = dict(GRAPHED, pruning=pruning, prune_layer=0 if pruning == "divprune" else 1)
    eager = VLMRunner.from_pretrained(tiny_model, max_question_tokens=64, **settings)
    replayed = graphed if pruning == "tfps" else _graphed_on_cpu(tiny_model, **settings)
    assert replayed.warmup_ms > 0
    captured = set(replayed._decode._calls)
    assert captured == {(k, r, 64) for k in ("question", "step") for r in BATCH_BUCKETS}
    note = "graph (compile=auto compiles on CUDA only)"
    for seed in (11, 12):  # a second frame replays the same captures with new inputs
        images = _images(seed)
        got = replayed.answer(images, QUESTIONS)
        want = eager.answer(images, QUESTIONS)
        assert [a.token_ids for a in got] == [a.token_ids for a in want]
        assert [a.kept_indices for a in got] == [a.kept_indices for a in want]
        prefix = "eager (divprune picks on the host)" if pruning == "divprune" else note
        assert got[0].paths == {"vision": note, "prefix": prefix, "question": note, "decode": note}
    assert set(replayed._decode._calls) == captured  # serving captured nothing new


def test_token_step_stays_within_its_operation_budget_per_layer(graphed) -> None:
    runner = graphed
    layers = runner.llm.num_layers
    batch = runner._decode
    step = batch._calls[("step", 8, 64)].count_ops()
    x = torch.zeros(8, 1, runner.model.config.text_config.hidden_size)
    cos = sin = torch.zeros(8, 1, runner.llm.head_dim)
    hidden = tail_mask(torch.ones(8, 1, 64 + batch.max_new_tokens, dtype=torch.bool), runner.llm.shape.groups)
    with torch.inference_mode(), OpCounter() as counter:  # one layer of the same step, alone
        runner.llm.cached_layer(x, cos, sin, runner.llm.weights[0], batch.cache.prefix_k[0], batch.cache.prefix_v[0],
                                batch.cache.tail_k[0], batch.cache.tail_v[0], batch.slot_index[64:65], hidden)
    per_layer = counter.total
    assert per_layer <= OPS_PER_LAYER, counter.counts
    matmuls = sum(counter.counts[name] for name in ("linear", "matmul", "mm", "addmm", "bmm"))
    assert matmuls == 8, counter.counts  # qkv, o, gate_up, down; 2 x 2 for the prefix and the tail
    outside = sum(step.values()) - layers * per_layer
    assert 0 < outside <= 40, step  # embedding, RoPE, mask, logits, greedy pick, bookkeeping


def test_a_failed_capture_says_why_runs_eagerly_and_strict_mode_raises(tiny_model, monkeypatch, caplog) -> None:
    from prune2drive_ros.vlm import prefill

    real = prefill.farthest_point_sampling_static

    def syncing(features, budgets, precision="fp32"):
        picks, finite = real(features, budgets, precision)
        if not bool(finite):  # a host read: no graph can hold it
            raise ValueError("not finite")
        return picks, finite

    monkeypatch.setattr(prefill, "farthest_point_sampling_static", syncing)
    eager = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.25, max_new_tokens=4)
    with pytest.raises(CaptureFailed, match="capture of select failed: HostSyncError") as raised:
        _graphed_on_cpu(tiny_model, pruning="tfps", retain=0.25, max_new_tokens=4)
    assert isinstance(raised.value.__cause__, HostSyncError)

    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.25, max_new_tokens=4,
                                       max_question_tokens=64)
    runner.graphs = GraphSet(True, strict=False, call_type=RecordedCall)
    with caplog.at_level(logging.WARNING, logger="prune2drive_ros.vlm.graphs"):
        runner.set_pruning("tfps")
        answers = [runner.answer(_images(seed), QUESTIONS[:1]) for seed in (13, 14)]
    assert len([r for r in caplog.records if "capture of select failed" in r.getMessage()]) == 1  # logged once
    assert answers[1][0].paths["prefix"].startswith("eager (capture failed: HostSyncError: ")
    assert answers[1][0].paths["decode"].startswith("graph")
    assert answers[1][0].path == "vision graph, prefix eager, question graph, decode graph"
    assert answers[1][0].token_ids == eager.answer(_images(14), QUESTIONS[:1])[0].token_ids


def test_failures_name_their_root_cause() -> None:
    try:
        try:
            raise HostSyncError("aten.nonzero syncs with the host")
        except HostSyncError as inner:
            raise RuntimeError("operation not permitted when stream is capturing\nmore lines") from inner
    except RuntimeError as outer:
        message = describe_failure(outer)
    assert message == ("RuntimeError: operation not permitted when stream is capturing "
                       "(root cause: HostSyncError: aten.nonzero syncs with the host)")


def test_nan_features_are_refused_after_the_answer_without_a_sync(graphed) -> None:
    weight = graphed.llm.weights[0].input_norm
    kept = weight.data[0].item()
    weight.data[0] = float("nan")  # layer 0's output, T-FPS's input, turns NaN
    try:
        with pytest.raises(ValueError, match="NaN or inf"):
            graphed.answer(_images(15), QUESTIONS[0])
        assert graphed.prefix is None  # a refused prefix is not reused
    finally:
        weight.data[0] = kept
    assert graphed.answer(_images(15), QUESTIONS[0])[0].token_ids
