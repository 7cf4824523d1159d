"""What the node needs from the runner: ``info()``."""

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
