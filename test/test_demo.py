"""The README's main job end to end: sample nuScenes -> rosbag2 -> replay over DDS -> node -> answers."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import cv2
import pytest
from conftest import run_cli, shutdown_context, wait_for


def test_demo_answers_bag_questions_and_summarises(tiny_model, tmp_path: Path) -> None:
    out = run_cli("demo", "--model", str(tiny_model), "--out", str(tmp_path), "--keyframes", "2",
                  "--questions", "4", "--max-new-tokens", "3", "--seconds", "150",
                  timeout=300, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert text.count("    A: ") == 4  # each question answered live
    assert "unanswered" not in text and "all 4 questions answered" in text
    for stage in ("sync_wait", "image_decode", "preprocess", "vision", "prune", "prefill", "decode", "total"):
        assert f"\n{stage} " in text, stage
    assert "of dense" in text and "kept tokens per camera: CAM_FRONT=73" in text
    mosaic = cv2.imread(str(tmp_path / "kept_tokens.png"))
    assert mosaic is not None and mosaic.shape[0] > 0


def test_summary_puts_each_answer_beside_its_ground_truth(tmp_path: Path) -> None:
    from prune2drive_ros.demo import ground_truth, summary

    mcq = "Is there a traffic cone in the front view? Please select the correct answer from the following options: " \
          "A. Yes. B. No."
    count = "How many traffic cones are in the back view? Please select the correct answer from the following " \
            "options: A. 0 B. 1 C. 2 D. 3"
    nearest = "Where is the nearest traffic cone in the back view?"
    frames = {"s1": {"QA": {"perception": [{"Q": mcq, "A": "A"}, {"Q": count, "A": "C"},
                                           {"Q": nearest, "A": "<c1,CAM_BACK,800.0,500.0>"}]}},
              "s2": {"QA": {"perception": [{"Q": mcq, "A": "A"}, {"Q": nearest, "A": "<c1,CAM_BACK,790.0,520.0>"}]}}}
    path = tmp_path / "drivelm.json"
    path.write_text(json.dumps({"scene": {"key_frames": frames}}))
    timing = {"total": 10.0}
    records = [{"status": "answered", "question": q, "answer": a, "timings_ms": timing, "flops_ratio": 0.4,
                "kept_per_view": [6] * 6} for q, a in ((mcq, "A"), (count, "B"), (nearest, "<c1,CAM_BACK,1.0,2.0>"),
                                                        ("What now?", "Stop."))]
    text = summary(records, ground_truth(path))
    assert "truth: A  right" in text and "truth: C  WRONG" in text
    assert "(differs by keyframe): <c1,CAM_BACK,790.0,520.0> | <c1,CAM_BACK,800.0,500.0>" in text
    assert "(no ground truth)" in text
    assert "accuracy on lettered multiple choice: 1/2 = 50%" in text
    assert "accuracy" not in summary(records[2:], ground_truth(path))  # nothing lettered, no accuracy line


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


def test_one_play_of_the_demo_bag_accounts_for_every_question(tiny_model, tmp_path: Path) -> None:
    """`prune2drive play BAG` (once) next to the node: each of the bag's DriveLM questions ends in an
    /vlm/answer_info record, answered (on the keyframe it was asked at) or dropped with a reason."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from prune2drive_ros.cameras import ANSWER_INFO_TOPIC
    from prune2drive_ros.data.nuscenes_to_bag import convert_nuscenes
    from prune2drive_ros.data.player import BagPlayer
    from prune2drive_ros.data.sample_nuscenes import make_sample_nuscenes
    from prune2drive_ros.demo import _bag_questions
    from prune2drive_ros.ros.node import DriveVqaNode

    root = make_sample_nuscenes(tmp_path / "nuscenes", scenes=1, keyframes=2, seed=3, progress=False)
    bag = convert_nuscenes(root, "v1.0-mini", tmp_path / "bag", drivelm=root / "drivelm.json", progress=False)
    questions = [q for group in _bag_questions(bag, 0) for q in group]
    context = rclpy.Context()
    rclpy.init(context=context)
    node = DriveVqaNode("drive_vqa_play", context=context, parameter_overrides=[
        Parameter("model", value=str(tiny_model)), Parameter("vision_backend", value="torch"),
        Parameter("device", value="cpu"), Parameter("dtype", value="float32"), Parameter("max_new_tokens", value=2),
        Parameter("qos_reliability", value="reliable")])
    listener = rclpy.create_node("play_listener", context=context)
    records: list[dict] = []
    listener.create_subscription(String, ANSWER_INFO_TOPIC, lambda m: records.append(json.loads(m.data)), 200)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(listener)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        assert node.autostart()
        BagPlayer(bag, wait_for_subscribers=10).run(max_duration=120)
        assert wait_for(lambda: len(records) >= len(questions), 240), (len(records), len(questions))
    finally:
        stop.set()
        spinner.join(10)
        node.release()
        executor.shutdown(timeout_sec=1)
        node.destroy_node()
        listener.destroy_node()
        shutdown_context(context)
    assert Counter(r["question"] for r in records) == Counter(questions)
    assert all(r["source"] == "replay" for r in records)
    outcome = Counter(r["status"] if r["status"] == "answered" else r["reason"] for r in records)
    print(f"{len(questions)} questions: {dict(outcome)}")
    # Nothing overflows or waits in vain: every question arrives while its keyframe's set is fresh.
    assert outcome["answered"] == len(questions), outcome
