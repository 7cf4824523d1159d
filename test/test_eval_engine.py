"""The evaluation loop with a stand-in runner: resume, answer logs, run statistics, reports."""

from __future__ import annotations

import json

import pytest
from test_eval_support import FakeRunner, make_drivelm

from prune2drive_ros.data.drivelm import load_drivelm
from prune2drive_ros.eval.engine import evaluate, run_stats
from prune2drive_ros.eval.files import read_jsonl
from prune2drive_ros.eval.report import write_report

SETTINGS = {"model": "fake", "pruning": "tfps", "retain": 0.1, "view_ratios": None, "prune_layer": 1, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path, dataroot = make_drivelm(tmp_path_factory.mktemp("drivelm"), keyframes=3)
    return load_drivelm(path, dataroot, check_images=True)


def _run(dataset, out, runner=None, settings=SETTINGS):
    runner = runner or FakeRunner()
    return evaluate(dataset, lambda: runner, out, settings=settings, progress=False), runner


def test_resumed_run_equals_uninterrupted(dataset, tmp_path):
    whole, _ = _run(dataset, tmp_path / "whole")

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _run(dataset, out, FakeRunner(interrupt_after=1))
    assert len(read_jsonl(out / "answers.jsonl")) == 4  # the first keyframe's questions
    with (out / "answers.jsonl").open("a") as f:
        f.write('{"id": "half a rec')  # killed mid-write
    resumed, runner = _run(dataset, out)
    assert runner.calls == 2  # only the keyframes not done

    assert (out / "submission.json").read_text() == (tmp_path / "whole" / "submission.json").read_text()
    for key in ("accuracy", "bleu_4", "rouge_l", "cider", "match", "final_score", "flops_ratio", "kept_per_view"):
        assert resumed[key] == whole[key]
    lines = (out / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line) for line in lines)


def test_finished_run_rescores_without_model(dataset, tmp_path):
    first, _ = _run(dataset, tmp_path)

    def no_model():
        raise AssertionError("model loaded for a finished run")

    again = evaluate(dataset, no_model, tmp_path, settings=SETTINGS, progress=False)
    assert again["final_score"] == first["final_score"]


def test_other_settings_are_refused(dataset, tmp_path):
    _run(dataset, tmp_path)
    with pytest.raises(ValueError, match=r"other settings.*retain: 0\.1 there, 0\.2 now"):
        _run(dataset, tmp_path, settings={**SETTINGS, "retain": 0.2})


def test_limit_and_metrics_document(dataset, tmp_path):
    doc, _ = _run(dataset.limit(5), tmp_path)
    assert len(json.loads((tmp_path / "submission.json").read_text())) == 5
    assert doc["run"]["questions"] == 5 and doc["flops_ratio"] == pytest.approx(0.13)
    assert doc["kept_per_view"] == [72.0] * 6
    assert doc["latency_ms"]["prefill"] == {"p50": 4.0, "p90": 4.0}


def test_run_stats_percentiles():
    # Ten keyframes of two questions each; both answers of a call carry the call's timings.
    recs = [
        {"id": f"k{t}_{q}", "keyframe": f"k{t}", "timings_ms": {"total": float(t)}, "flops": 1.0 + q, "flops_dense": 4.0,
         "kept_per_view": [1, 2, 3, 4, 5, 6 + 2 * q]}
        for t in range(1, 11)
        for q in range(2)
    ]  # fmt: skip
    s = run_stats(recs)
    assert s["latency_ms"]["total"] == {"p50": 5.5, "p90": 9.1}
    assert s["flops_ratio"] == 0.375 and s["kept_per_view"] == [1, 2, 3, 4, 5, 7]
    assert run_stats([]) == {"flops_ratio": None, "latency_ms": None, "kept_per_view": None, "visual_tokens": None}


def test_answer_log_repair(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "1"}\n{"id": "2"}\n{"id": ')
    assert [r["id"] for r in read_jsonl(path)] == ["1", "2"]
    assert path.read_text().endswith('{"id": ')  # untouched without repair
    read_jsonl(path, repair=True)
    assert path.read_text() == '{"id": "1"}\n{"id": "2"}\n'
    path.write_text('{"id": "1"}\nnot json\n{"id": "3"}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_jsonl(path)


def test_compare_report(dataset, tmp_path):
    _run(dataset, tmp_path / "none", settings={**SETTINGS, "pruning": "none", "retain": 1.0})
    _run(dataset, tmp_path / "tfps-r0.1")
    table, plot = write_report([tmp_path / "none", tmp_path / "tfps-r0.1"], tmp_path / "report")
    text = table.read_text()
    assert "| Method | Retain | K | Tokens/view | FLOPs | Prefill/keyframe speed-up | Acc | GPT | Match | Match F1 |" in text
    assert "| tfps | 0.1 | 1 | 72 | 13.0% | 1.00x |" in text and "| none | 1.0 | – |" in text
    assert "partial final score (no GPT judge): without 0.4*GPT/100 + 0.1*MatchGPT/100; 12 of 12 questions scored" in text
    assert "RANDOM" not in text  # a stand-in runner, not a random checkpoint
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert [r["method"] for r in rows] == ["none", "tfps"]
    with pytest.raises(FileNotFoundError, match="eval output folder"):
        write_report([tmp_path / "missing"], tmp_path / "report")


def test_keyframe_without_questions_is_skipped(dataset, tmp_path):
    from dataclasses import replace

    frames = list(dataset.keyframes)
    frames[1] = replace(frames[1], questions=())
    doc, runner = _run(replace(dataset, keyframes=tuple(frames)), tmp_path)
    assert runner.calls == 2 and doc["counts"]["questions"] == 8


def test_progress_bar_counts_keyframes_in_plain_units(dataset, capsys):
    from prune2drive_ros.eval.engine import answer_keyframes

    answer_keyframes(FakeRunner(), dataset.keyframes, lambda *_: None, progress=True)
    bar = capsys.readouterr().err
    assert "3/3" in bar and "questions=" in bar and "/s" in bar
    assert "keyframe/s" in bar or "s/keyframe" in bar
    assert "kf/s" not in bar  # tqdm's "1.10kf/s" read as kilo-frames per second


def test_the_engine_holds_no_command_line_code() -> None:
    """eval/run.py (argparse) uses eval/engine.py, never the other way round; the study calls the engine."""
    import ast
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys, prune2drive_ros.eval.engine; "
            "bad = [m for m in ('prune2drive_ros.eval.run', 'prune2drive_ros.eval.options', 'prune2drive_ros.cli') "
            "if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    for path in ("prune2drive_ros/eval/engine.py", "prune2drive_ros/training/study.py"):
        tree = ast.parse((REPO / path).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"prune2drive_ros.cli", "prune2drive_ros.eval.run"}, path
    assert "import argparse" not in (REPO / "prune2drive_ros/eval/engine.py").read_text()


def test_nothing_cites_a_file_the_repository_does_not_have() -> None:
    from conftest import REPO

    cited = [str(p.relative_to(REPO)) for folder in ("prune2drive_ros", "docs", "test", "scripts", "launch")
             for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".sh")
             and "DESIGN" + ".md" in p.read_text(errors="replace")]
    assert not cited and "DESIGN" + ".md" not in (REPO / "README.md").read_text(), cited
