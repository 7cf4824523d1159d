"""The README's main job end to end: sample nuScenes -> rosbag2 -> replay over DDS -> node -> answers."""

from __future__ import annotations

from pathlib import Path

import cv2
from conftest import run_cli


def test_demo_answers_bag_questions_and_summarises(tiny_model, tmp_path: Path) -> None:
    out = run_cli("demo", "--model", str(tiny_model), "--out", str(tmp_path), "--keyframes", "2",
                  "--questions", "4", "--max-new-tokens", "3", "--seconds", "150",
                  timeout=300, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert text.count("    A: ") == 4  # each question answered live
    assert "unanswered" not in text
    for stage in ("sync_wait", "image_decode", "preprocess", "vision", "prune", "prefill", "decode", "total"):
        assert f"\n{stage} " in text, stage
    assert "of dense" in text and "kept tokens per camera (of 729): CAM_FRONT=73" in text
    mosaic = cv2.imread(str(tmp_path / "kept_tokens.png"))
    assert mosaic is not None and mosaic.shape[0] > 0
