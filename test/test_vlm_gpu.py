"""The answer path on a GPU (every test is ``gpu``-marked and skips without CUDA; scripts/gpu-check.sh runs
them): every stage captured, with and without torch.compile, equal to eager and to transformers' generate;
serving that never captures again; the pinned upload; CUDA-event timing; honest capture failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prune2drive_ros.vlm import VLMRunner
from prune2drive_ros.vlm.graphs import CaptureFailed, GraphSet
from prune2drive_ros.vlm.preprocess import FrameUploader
from prune2drive_ros.vlm.runner import StageTimer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

QUESTIONS = ["Is it safe to turn left?", "What are the important objects in the current scene?",
             "Is there a pedestrian?"]
STAGES = ("vision", "prefix", "question", "decode")


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(6)]


# Compiled once (Triton compiles take most of a cold run), on the plan generate is the reference for.
@pytest.mark.parametrize(("pruning", "compile_mode"), [("none", "off"), ("tfps", "off"), ("none", "on")])
def test_every_stage_is_captured_and_equals_eager_and_generate(tiny_model, pruning, compile_mode) -> None:
    from test_vlm_runtime import MAX_NEW, _hf_generate

    settings = dict(pruning=pruning, retain=0.1, max_new_tokens=MAX_NEW, device="cuda", dtype="float32",
                    max_question_tokens=128)
    graphed = VLMRunner.from_pretrained(tiny_model, cuda_graphs="on", compile=compile_mode, **settings)
    eager = VLMRunner.from_pretrained(tiny_model, cuda_graphs="off", compile="off", **settings)
    assert graphed.warmup_ms > 0
    captured = dict(graphed._decode._calls)
    assert len(captured) == 2 * 4 * 2  # question and step, 4 batch buckets, 2 question buckets (64, 128)
    expected = "compiled-graph" if compile_mode == "on" else "graph"
    for seed in (5, 6):
        images = _images(seed)
        with_graphs = graphed.answer(images, QUESTIONS)
        assert with_graphs[0].paths == {stage: expected for stage in STAGES}
        assert {a.path for a in with_graphs} == {"cuda-graph"}
        tokens = [a.token_ids for a in with_graphs]
        assert tokens == [a.token_ids for a in eager.answer(images, QUESTIONS)]
        if pruning == "none":
            assert tokens == [_hf_generate(graphed, images, q) for q in QUESTIONS]
    # Serving captures nothing: other batch sizes, a longer question, fewer new tokens, a reused prefix.
    capture_ms = graphed.graphs.capture_ms
    graphed.answer(_images(7), [QUESTIONS[0]] * 7 + ["why " * 25], max_new_tokens=3)
    graphed.answer(_images(7), QUESTIONS[:1])
    assert graphed._decode._calls == captured and graphed.graphs.capture_ms == capture_ms
    # A budget change captures again, before the next frame arrives.
    graphed.set_budgets(retain=0.25)
    eager.set_budgets(retain=0.25)
    images = _images(8)
    assert [a.token_ids for a in graphed.answer(images, QUESTIONS[:1])] == [
        a.token_ids for a in eager.answer(images, QUESTIONS[:1])]


def test_bf16_runner_captures_everything_and_prunes_with_tf32x3(tiny_model) -> None:
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.1, max_new_tokens=4, device="cuda",
                                       dtype="bfloat16", cuda_graphs="on", max_question_tokens=64)
    assert runner.tfps_precision == "tf32x3"
    answer = runner.answer(_images(9), QUESTIONS[0])[0]
    assert answer.path == "cuda-graph" and answer.kept_per_view == [73] * 6 and answer.token_ids


def test_pinned_upload_sends_the_six_views_in_one_copy() -> None:
    upload = FrameUploader(torch.device("cuda"))
    images = _images(10)
    frames = upload(images)
    staging = upload._staging
    assert staging.is_pinned() and frames.is_cuda and frames.shape == (6, 90, 160, 3)
    assert np.array_equal(frames.cpu().numpy(), np.stack(images))
    again = upload(_images(11))  # the same staging buffer for the next frame of the same size
    assert upload._staging is staging and np.array_equal(again.cpu().numpy(), np.stack(_images(11)))


def test_stage_timer_records_events_without_waiting_for_the_gpu() -> None:
    timer = StageTimer(torch.device("cuda"))
    x = torch.randn(2048, 2048, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing call inside raises
    try:
        with timer.stage("prefill"):
            with timer.stage("prune"):
                for _ in range(10):
                    x = x @ x / 2048
            x = x + 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ms = timer.ms
    assert ms["prune"] > 0 and 0 <= ms["prefill"] < ms["prune"]


def test_a_failed_capture_restores_the_stream_and_names_the_root_cause(caplog) -> None:
    def syncs(x):
        return x * x.sum().item()  # a host read: cudaStreamSynchronize inside the capture

    x = torch.ones(4, device="cuda")
    before = torch.cuda.current_stream()
    graphs = GraphSet(True, strict=False)
    assert graphs.capture("syncs", syncs, [x]) is None
    assert torch.cuda.current_stream() == before
    assert graphs.eager_reason("syncs").startswith("capture failed: ")
    assert (x + 1).sum().item() == 8.0  # the device still works, on the right stream
    with pytest.raises(CaptureFailed, match="capture of syncs failed") as raised:
        GraphSet(True, strict=True).capture("syncs", syncs, [x])
    assert raised.value.__cause__ is not None and torch.cuda.current_stream() == before


def test_compiled_decode_layer_is_a_few_triton_kernels_around_its_gemms(tiny_model) -> None:
    pytest.importorskip("triton")
    from torch._inductor.utils import run_and_get_code

    from prune2drive_ros.vlm.graph_rules import inductor_launches
    from prune2drive_ros.vlm.graphs import Compiler
    from prune2drive_ros.vlm.layers import cached_layer, tail_mask

    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.1, max_new_tokens=4, device="cuda",
                                       dtype="bfloat16", cuda_graphs="off", compile="off", max_question_tokens=64)
    llm, batch, shape = runner.llm, runner._decode, runner.llm.shape

    def layer(x, cos, sin, w, *buffers):
        return cached_layer(x, cos, sin, w, shape, *buffers)

    x = torch.zeros(8, 1, runner.model.config.text_config.hidden_size, device="cuda", dtype=torch.bfloat16)
    cos = sin = torch.zeros(8, 1, llm.head_dim, device="cuda", dtype=torch.bfloat16)
    hidden = tail_mask(torch.ones(8, 1, 8 + batch.max_new_tokens, dtype=torch.bool, device="cuda"), shape.groups)
    with torch.inference_mode():
        _, codes = run_and_get_code(Compiler(True, strict=True)(layer, "cached layer"), x, cos, sin, llm.weights[0],
                                    batch.cache.prefix_k[0], batch.cache.prefix_v[0], batch.cache.tail_k[0],
                                    batch.cache.tail_v[0], batch.slot_index[8:9], hidden)
    launches = inductor_launches(codes[0])
    assert sum(launches.values()) <= 17, launches
