"""The static-shape runtime: the cache keyword per transformers release, fixed buffers, batch buckets,
nested stage timing, the frozen config, and (on a GPU) CUDA graphs against eager and ``generate``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version

from prune2drive_ros.vlm import RunnerConfig, VLMRunner
from prune2drive_ros.vlm.decode import DecodeBatch
from prune2drive_ros.vlm.runner import StageTimer

QUESTIONS = ["Is it safe to turn left?", "What are the important objects in the current scene?",
             "Is there a pedestrian?"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(6)]


def test_decoder_layers_get_the_cache_keyword_of_the_installed_release(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.1, max_new_tokens=2)
    renamed = Version(transformers.__version__) >= Version("5.24.0.dev0")
    assert runner.llm.cache_keyword == ("cache" if renamed else "past_key_values")
    assert runner.answer(_images(0), QUESTIONS[0])[0].token_ids  # and the layers really write into our cache


def test_buffers_are_allocated_once_and_reused_across_frames_and_questions(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.1, max_new_tokens=6)
    runner.answer(_images(1), QUESTIONS[:2])
    batch = runner._decode
    assert isinstance(batch, DecodeBatch)
    pointers = [k.data_ptr() for k in batch.cache.keys]
    runner.answer(_images(2), QUESTIONS[:1])  # another frame, fewer questions: same buffers
    runner.answer(_images(2), QUESTIONS[1:])
    assert runner._decode is batch and [k.data_ptr() for k in batch.cache.keys] == pointers
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
    runner = VLMRunner.from_config(config.replace(max_new_tokens=3))
    assert runner.config.max_new_tokens == 3 and runner.budgets == [73] * 6
    assert runner.answer(_images(4), QUESTIONS[0])[0].path == "eager"  # no CUDA graphs on a CPU


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("pruning", ["none", "tfps"])
def test_cuda_graphs_equal_eager_and_transformers_generate(tiny_model, pruning) -> None:
    from test_vlm_runtime import MAX_NEW, _hf_generate

    settings = dict(pruning=pruning, retain=0.1, max_new_tokens=MAX_NEW, device="cuda", dtype="float32")
    graphed = VLMRunner.from_pretrained(tiny_model, cuda_graphs="on", **settings)
    eager = VLMRunner.from_pretrained(tiny_model, cuda_graphs="off", **settings)
    assert graphed.warmup_ms > 0
    for seed in (5, 6):
        images = _images(seed)
        with_graphs = graphed.answer(images, QUESTIONS)
        assert {a.path for a in with_graphs} == {"cuda-graph"}
        tokens = [a.token_ids for a in with_graphs]
        assert tokens == [a.token_ids for a in eager.answer(images, QUESTIONS)]
        if pruning == "none":
            assert tokens == [_hf_generate(graphed, images, q) for q in QUESTIONS]
    # A budget change captures again, before the next frame arrives.
    graphed.set_budgets(retain=0.25)
    eager.set_budgets(retain=0.25)
    images = _images(7)
    assert [a.token_ids for a in graphed.answer(images, QUESTIONS[:1])] == [
        a.token_ids for a in eager.answer(images, QUESTIONS[:1])]


class _ReplayOnCPU:
    """Stands in for ``CapturedCall`` off CUDA with a graph's contract: fixed input buffers that calls are
    copied into, and fixed output tensors that every replay overwrites. So the CPU suite checks that the
    captured functions (prefill selection and tail, the token step) read and write only static state."""

    def __init__(self, fn, example_inputs=(), pool=None):
        self.fn, self.inputs = fn, [x.clone() for x in example_inputs]
        for _ in range(2):  # the warm-up runs a real capture makes
            fn(*self.inputs)
        self.outputs = fn(*self.inputs)
        self.capture_ms = 0.0

    def __call__(self, *inputs):
        for buffer, value in zip(self.inputs, inputs, strict=True):
            buffer.copy_(value)
        fresh = self.fn(*self.inputs)
        targets = self.outputs if isinstance(self.outputs, (list, tuple)) else [self.outputs]
        values = fresh if isinstance(fresh, (list, tuple)) else [fresh]
        for target, value in zip(targets, values, strict=True):
            for t, v in zip(target if isinstance(target, list) else [target],
                            value if isinstance(value, list) else [value], strict=True):
                t.copy_(v)
        return self.outputs


@pytest.mark.parametrize("pruning", ["none", "tfps", "pool"])
def test_graph_replay_contract_holds_for_prefill_and_token_step(tiny_model, monkeypatch, pruning) -> None:
    from prune2drive_ros.vlm import graphs

    monkeypatch.setattr(graphs, "CapturedCall", _ReplayOnCPU)
    settings = dict(pruning=pruning, retain=0.25, max_new_tokens=6)
    eager = VLMRunner.from_pretrained(tiny_model, **settings)
    replayed = VLMRunner.from_pretrained(tiny_model, **settings)
    replayed.graphs = graphs.GraphSet.__new__(graphs.GraphSet)
    vars(replayed.graphs).update(enabled=True, strict=True, pool=None, capture_ms=0.0, failure="")
    replayed.set_budgets(retain=0.25)  # re-plans with graphs on and warms up every bucket
    assert replayed.warmup_ms > 0
    for seed in (11, 12):  # a second frame replays the same captures with new inputs
        images = _images(seed)
        got = replayed.answer(images, QUESTIONS)
        assert {a.path for a in got} == {"cuda-graph"}
        assert [a.token_ids for a in got] == [a.token_ids for a in eager.answer(images, QUESTIONS)]
        assert [a.kept_indices for a in got] == [a.kept_indices for a in eager.answer(images, QUESTIONS)]
