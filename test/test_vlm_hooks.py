"""What the node needs from the runner: ``info()`` and the progress / stop hook of the decode loop."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from prune2drive_ros.vlm import RunnerInfo, VLMRunner

QUESTIONS = ["Is it safe to turn left?", "What are the important objects in the current scene?",
             "Is there a pedestrian?"]
NEW_TOKENS = 12


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(6)]


@pytest.fixture(scope="module")
def runner(tiny_model) -> VLMRunner:
    # A stop token the random model never says, so every answer runs the full length.
    runner = VLMRunner.from_pretrained(tiny_model, pruning="tfps", retain=0.1, max_new_tokens=NEW_TOKENS,
                                       device="cpu", dtype="float32")
    runner.eos_token_ids = [-1]
    return runner


def test_info_says_what_the_runner_is(runner, tiny_model) -> None:
    info = runner.info()
    assert isinstance(info, RunnerInfo)
    assert info.model == str(tiny_model) and info.device == "cpu" and info.dtype == "float32"
    assert info.vision_backend == "torch" and info.vision_reason.startswith("auto:")  # no TensorRT on a CPU
    assert info.pruning == "tfps" and info.prune_layer == 1 and info.tokens_per_view == 729
    assert info.budgets == (73,) * 6 and info.max_new_tokens == NEW_TOKENS and info.warmup_ms == 0.0
    runner.set_pruning("divprune")
    try:
        assert runner.info().prune_layer == 0 and runner.info().pruning == "divprune"
    finally:
        runner.set_pruning("tfps")


def test_runner_info_and_config_import_without_torch() -> None:
    code = "import sys; from prune2drive_ros.vlm import RunnerConfig, RunnerInfo; assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr


def test_progress_sees_growing_prefixes_and_changes_nothing(runner) -> None:
    images = _images(0)
    plain = [a.token_ids for a in runner.answer(images, QUESTIONS, frame_key=("plain",))]
    seen: list[dict[int, list[int]]] = []
    watched = [a.token_ids for a in runner.answer(images, QUESTIONS, frame_key=("watched",),
                                                  on_progress=lambda t: seen.append(dict(t)))]
    assert watched == plain and all(len(t) == NEW_TOKENS for t in plain)
    assert len(seen) == NEW_TOKENS - 1  # once per step after the first token
    for step, tokens in enumerate(seen, start=1):
        assert sorted(tokens) == [0, 1, 2]
        assert all(tokens[i] == plain[i][:step] for i in tokens)
    assert runner.text(plain[0]) == runner.answer(images, QUESTIONS[:1], frame_key=("plain",))[0].text


def test_a_stopped_question_ends_there_and_the_others_run_on(runner) -> None:
    images = _images(1)
    plain = [a.token_ids for a in runner.answer(images, QUESTIONS, frame_key=("plain", 1))]
    def stop_the_second_at_three(tokens):
        return [1] if len(tokens[1]) == 3 else None

    answers = runner.answer(images, QUESTIONS, frame_key=("stopped", 1), on_progress=stop_the_second_at_three)
    assert answers[1].token_ids == plain[1][:3]
    assert [answers[0].token_ids, answers[2].token_ids] == [plain[0], plain[2]]
    assert answers[1].text == runner.text(plain[1][:3])


@pytest.mark.parametrize("method", ["tfps", "fastv"])  # the shared-prefix batch and the per-question prefill
def test_stopping_every_question_ends_the_decode_at_that_step(runner, method) -> None:
    runner.set_pruning(method)
    try:
        steps = []

        def stop_all_at_two(tokens):
            steps.append(max(len(t) for t in tokens.values()))
            return list(tokens) if steps[-1] >= 2 else None

        answers = runner.answer(_images(2), QUESTIONS[:2], frame_key=(method,), on_progress=stop_all_at_two)
        assert [len(a.token_ids) for a in answers] == [2, 2]
        # No step ran after the stop: per batch, the callback saw 1 then 2 tokens and nothing more.
        per_batch = 2 if method == "fastv" else 1
        assert steps == [1, 2] * per_batch
    finally:
        runner.set_pruning("tfps")
