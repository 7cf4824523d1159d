"""``eval``, ``optimize`` and ``--compare`` with the tiny random-weight model, as a user runs them.

All runs use one CPU thread: torchrun sets OMP_NUM_THREADS=1 for its workers, and the single-process
reference must do the same arithmetic for greedy answers to be comparable token for token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO
from test_eval_support import make_drivelm

from prune2drive_ros.cli import main as cli
from prune2drive_ros.pruning.budgets import view_budgets

FAST = ["--max-new-tokens", "4", "--no-progress"]
COMPARED = (
    "accuracy",
    "bleu_1",
    "bleu_4",
    "rouge_l",
    "cider",
    "match",
    "match_f1",
    "language_score",
    "final_score",
    "ci95",
    "flops_ratio",
    "kept_per_view",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_drivelm(tmp_path_factory.mktemp("drivelm"), keyframes=3)


@pytest.fixture(scope="module")
def eval_args(tiny_model, data):
    drivelm, dataroot = data
    return ["eval", "--model", str(tiny_model), "--drivelm", str(drivelm), "--dataroot", str(dataroot), *FAST]


@pytest.fixture(scope="module")
def single(eval_args, tmp_path_factory):
    """The reference: one uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("single")
    assert cli([*eval_args, "--out", str(out)]) == 0
    return out


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_eval_outputs(single):
    m = _metrics(single)
    sub = json.loads((single / "submission.json").read_text())
    assert len(sub) == 12 and set(sub[0]) == {"id", "question", "answer"}
    assert 0.0 < m["flops_ratio"] < 0.5 and len(m["kept_per_view"]) == 6
    assert set(m["latency_ms"]) >= {"preprocess", "vision", "prune", "prefill", "decode", "total"}
    assert set(m["latency_ms"]["prefill"]) == {"p50", "p90"}
    assert m["gpt"] is None and m["final_score_partial"] is True
    assert m["run"]["pruning"] == "tfps" and m["run"]["retain"] == 0.1 and m["run"]["prune_layer"] == 1
    assert m["run"]["model_weights"]["weights"] == "random"  # the tiny test model: its scores mean nothing
    assert m["rules"] == "official" and set(m["ci95"]) >= {"accuracy", "language_score", "final_score"}
    assert len((single / "answers.jsonl").read_text().splitlines()) == 12


def test_eval_console_says_random_weights(eval_args, single, capsys):
    # A finished folder is rescored without the model: here under the lenient rules.
    assert cli([*eval_args, "--out", str(single), "--rules", "lenient", "--bootstrap", "0"]) == 0
    out, err = capsys.readouterr()
    assert "RANDOM WEIGHTS" in err and "meaningless" in err
    assert "[lenient rules]" in out and "PARTIAL" in out
    assert _metrics(single)["rules"] == "lenient"
    assert cli([*eval_args, "--out", str(single)]) == 0  # back to the defaults for the other tests
    assert _metrics(single)["rules"] == "official"


def test_resumed_eval_equals_uninterrupted(eval_args, single, tmp_path, monkeypatch):
    from prune2drive_ros.vlm import VLMRunner

    real_answer, calls = VLMRunner.answer, []

    def interrupted(self, images, questions, **kw):
        calls.append(len(questions))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second keyframe
        return real_answer(self, images, questions, **kw)

    monkeypatch.setattr(VLMRunner, "answer", interrupted)
    assert cli([*eval_args, "--out", str(tmp_path)]) == 130
    with (tmp_path / "answers.jsonl").open("a") as f:
        f.write('{"id": "cut sho')
    monkeypatch.setattr(VLMRunner, "answer", real_answer)
    assert cli([*eval_args, "--out", str(tmp_path)]) == 0

    assert (tmp_path / "submission.json").read_text() == (single / "submission.json").read_text()
    resumed, whole = _metrics(tmp_path), _metrics(single)
    assert {k: resumed[k] for k in COMPARED} == {k: whole[k] for k in COMPARED}


def test_torchrun_two_ranks_equals_single_process(eval_args, single, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "prune2drive_ros.cli",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*cmd, *eval_args, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "submission.json").read_text() == (single / "submission.json").read_text()
    dist, whole = _metrics(tmp_path), _metrics(single)
    assert {k: dist[k] for k in COMPARED} == {k: whole[k] for k in COMPARED}
    assert dist["run"]["world_size"] == 2
    assert not list(tmp_path.glob("answers.rank*.jsonl"))  # folded into answers.jsonl
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 12


def test_compare_methods(eval_args, tmp_path, capsys):
    """The test bed's study command: every method at retain 0.1 and 0.25, with intervals and the plot."""
    methods = ("none", "tfps", "divprune", "fastv", "mvpruner", "random", "pool")
    compare = ["--compare", ",".join(methods), "--compare-retain", "0.1,0.25", "--bootstrap", "200"]
    assert cli([*eval_args, "--out", str(tmp_path), "--limit", "4", *compare]) == 0
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert runs == sorted(["none"] + [f"{m}-r{r}" for m in methods[1:] for r in ("0.1", "0.25")])
    table = (tmp_path / "comparison.md").read_text()
    assert table.splitlines()[2].startswith("> **RANDOM WEIGHTS")  # the tiny model's scores rank noise
    assert "| none | 1.0 | – | 729 | 100.0% | 1.00x |" in table  # the dense run against itself
    assert "| tfps | 0.25 | 1 |" in table
    assert "| divprune | 0.1 | 0 |" in table  # DivPrune selects before the LLM, as `eval --pruning divprune` does
    assert "4 of 4 questions scored" in table or "3 of 4 questions scored" in table
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert len(rows) == 13 and all(r["final_score_partial"] for r in rows)
    for r in rows:
        lo, hi = r["ci95"]["final_score"]
        assert lo - 1e-9 <= r["final_score"] <= hi + 1e-9
        assert r["flops_ratio"] is not None and r["accuracy"] is not None and r["language_score"] is not None
    assert (tmp_path / "quality_vs_flops.png").stat().st_size > 1000
    out, err = capsys.readouterr()
    assert "RANDOM WEIGHTS" in err and "| Method | Retain | K |" in out  # the table is printed too


def test_two_optimize_workers_share_one_sqlite_study(tiny_model, data, tmp_path):
    import optuna

    drivelm, dataroot = data
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    base = [sys.executable, "-m", "prune2drive_ros.cli", "optimize", "--model", str(tiny_model), "--drivelm", str(drivelm),
            "--dataroot", str(dataroot), "--trials", "4", "--limit", "4", "--storage", storage, "--study-name", "shared",
            "--max-new-tokens", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([*base, "--seed", str(i), "--out", str(tmp_path / f"w{i}")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        for i in range(2)
    ]  # fmt: skip
    outputs = []
    try:
        for w in workers:
            out, err = w.communicate(timeout=300)
            assert w.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=10)

    study = optuna.load_study(study_name="shared", storage=storage)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ran = [int(o.split("this worker ran ")[1].split()[0]) for o in outputs]
    # One budget for both: together they ran what the study holds, about --trials (a trial started
    # by one worker while the other checks the count may add one).
    assert sum(ran) == len(study.trials) == len(completed) and 4 <= len(completed) <= 5
    assert all({"worker", "quality", "flops_ratio", "language_score", "accuracy"} <= set(t.user_attrs) for t in completed)

    for i in range(2):
        out = tmp_path / f"w{i}"
        params = yaml.safe_load((out / "view_ratios.yaml").read_text())["/**"]["ros__parameters"]
        assert params["pruning_method"] == "tfps" and len(params["view_ratios"]) == 6
        assert all(0.1 <= r <= 1.0 for r in params["view_ratios"])
        # The node's budget rule maps the written ratios back to the best trial's kept tokens exactly.
        best_budgets = json.loads((out / "study.json").read_text())["budgets"]
        assert view_budgets(729, view_ratios=params["view_ratios"]) == best_budgets
        assert (out / "search.png").stat().st_size > 1000 and (out / "view_ratios.png").stat().st_size > 1000
    best = study.best_trial
    summary = json.loads((tmp_path / "w1" / "study.json").read_text())
    assert summary["completed_trials"] >= 1 and set(summary["view_ratios"]) == set(best.params)


def test_optimize_workers_option_sets_threads_per_worker(tiny_model, data, tmp_path):
    """``--workers 2`` on one machine: two processes share the study, each with half the cores."""
    import optuna

    drivelm, dataroot = data
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "prune2drive_ros.cli", "optimize", "--model", str(tiny_model), "--drivelm", str(drivelm),
           "--dataroot", str(dataroot), "--trials", "3", "--limit", "2", "--max-new-tokens", "2", "--no-progress",
           "--workers", "2", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"2 worker(s), {threads} torch threads each" in result.stdout
    study = optuna.load_study(study_name="prune2drive-view-ratios", storage=f"sqlite:///{tmp_path / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 3 <= len(done) <= 4 and {t.user_attrs["torch_threads"] for t in done} == {threads}
    assert "RANDOM WEIGHTS" in result.stderr and "RANDOM WEIGHTS" in (tmp_path / "view_ratios.yaml").read_text()
