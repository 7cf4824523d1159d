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
    assert "of dense" in text and "kept tokens per camera: CAM_FRONT=73" in text
    mosaic = cv2.imread(str(tmp_path / "kept_tokens.png"))
    assert mosaic is not None and mosaic.shape[0] > 0


def test_model_choice_order(tmp_path: Path, monkeypatch, capsys) -> None:
    from prune2drive_ros import demo

    monkeypatch.setattr(demo, "CACHE", tmp_path / "p2d")
    monkeypatch.delenv("PRUNE2DRIVE_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert demo.choose_model("/models/x") == ("/models/x", "--model")

    for repo in ("models--llava-hf--llava-onevision-qwen2-0.5b-ov-hf", "models--DriveMM--DriveMM"):
        snapshot = tmp_path / "hub" / repo / "snapshots" / "rev"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model.safetensors").write_bytes(b"")
    model, why = demo.choose_model(None)
    assert "DriveMM" in model and "Hugging Face cache" in why  # DriveMM preferred

    monkeypatch.setenv("PRUNE2DRIVE_MODEL", "/models/configured")
    assert demo.choose_model(None)[0] == "/models/configured"

    monkeypatch.delenv("PRUNE2DRIVE_MODEL")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    import prune2drive_ros.training as training

    monkeypatch.setattr(training, "shipped_testbed", lambda: None)  # an install without models/testbed
    model, why = demo.choose_model(None)
    assert model == str(tmp_path / "p2d" / "tiny-model") and (tmp_path / "p2d" / "tiny-model" / "config.json").is_file()
    assert "MEANINGLESS" in capsys.readouterr().out
