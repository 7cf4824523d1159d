"""Reporting: the random-weight banner, plot scales and colours, one layer per method name, exact
view_ratios.yaml budgets and threads per optimize worker. No model is loaded here."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from prune2drive_ros.eval import optimize
from prune2drive_ros.eval.options import add_model_arguments, runner_settings
from prune2drive_ros.eval.plots import METHOD_COLORS, MethodPoint, method_color, plot_methods, quality_limits
from prune2drive_ros.eval.report import markdown_table, partial_note
from prune2drive_ros.eval.weights import random_banner, weights_info
from prune2drive_ros.pruning.budgets import view_budgets
from prune2drive_ros.settings import prune_layer_for


def _config(folder, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "llava_onevision", "text_config": {"hidden_size": 64}, **extra}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_tiny_random_model_is_flagged_and_a_trained_one_is_not(tmp_path, tiny_model):
    info = weights_info(tiny_model)  # what `prune2drive make-tiny-model` writes
    assert info["weights"] == "random" and "hidden size" in info["reason"]
    assert "scores are meaningless" in random_banner(info, str(tiny_model))
    record = {"seed": 0, "note": "synthetic test bed, not DriveLM", "tokens_per_view": "12x12"}
    trained = _config(tmp_path / "testbed", prune2drive_testbed=record)
    assert weights_info(trained)["weights"] == "trained" and random_banner(weights_info(trained)) is None
    assert weights_info(trained)["note"] == "synthetic test bed, not DriveLM; 12x12 visual tokens per view"
    table = markdown_table([_row("tfps", "0.1", 0.29, 0.13, model_weights=weights_info(trained))])
    assert table.startswith("> Model: synthetic test bed, not DriveLM; 12x12 visual tokens per view")
    record = _config(tmp_path / "record")
    (record / "training.json").write_text("{}")
    assert weights_info(record)["weights"] == "trained"
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 4096}}))
    assert weights_info(big)["weights"] == "trained"
    marked = _config(tmp_path / "marked", prune2drive_random_weights=True, hidden_size=4096)
    assert weights_info(marked)["weights"] == "random"
    assert weights_info("lmms-lab/llava-onevision-qwen2-0.5b-ov")["weights"] == "unknown"


def _row(method, retain, final, flops, **kw):
    row = {
        "method": method, "retain": retain, "prune_layer": 1, "folder": "x", "model": "m", "model_weights": None,
        "rules": "official", "tokens_per_view": 72.0, "flops_ratio": flops, "keyframe_prefill_speedup": None,
        "accuracy": 0.5, "gpt": None, "match": None, "match_f1": 40.0, "bleu_1": 0.1, "bleu_2": 0.1, "bleu_3": 0.1,
        "bleu_4": 0.1, "rouge_l": 0.2, "cider": 0.3, "language_score": 0.2, "final_score": final,
        "final_score_partial": True, "final_score_formula": "0.2*L + 0.1*MatchF1/100 + 0.2*Acc",
        "final_score_missing": ["0.4*GPT/100", "0.1*MatchGPT/100"], "ci95": {"final_score": [final - 0.01, final + 0.01]},
        "scored": 90, "questions": 100, "gpt_failed": 0, "warnings": [],
    }  # fmt: skip
    row.update(kw)
    return row


def test_table_says_partial_counts_and_random_weights():
    rows = [_row("none", "1.0", 0.3, 1.0), _row("tfps", "0.1", 0.29, 0.13)]
    text = markdown_table(rows)
    assert "RANDOM" not in text
    assert "| 90/100 |" in text and "[29.0, 31.0]" in text
    assert "without 0.4*GPT/100 + 0.1*MatchGPT/100; 90 of 100 questions scored" in text
    assert "Prefill/keyframe speed-up" in text
    random = {"weights": "random", "reason": "a tiny checkpoint"}
    text = markdown_table([_row("tfps", "0.1", 0.29, 0.13, model_weights=random)])
    assert text.startswith("> **RANDOM WEIGHTS") and "meaningless" in text
    failed = _row("tfps", "0.1", 0.29, 0.13, gpt_failed=4, warnings=["GPT judge failed on 4 of 50 questions"])
    assert "GPT judge failed on 4 question(s)" in partial_note([failed])
    assert "GPT judge failed on 4 of 50 questions" in markdown_table([failed])


def test_plot_does_not_zoom_onto_noise():
    lo, hi = quality_limits([0.3001, 0.3002, 0.30005])
    assert hi - lo >= 0.1 and lo <= 0.3001 and hi >= 0.3002
    assert quality_limits([0.01, 0.02])[0] == 0.0  # clipped at the scale's ends
    assert quality_limits([0.98, 0.99])[1] == 1.0
    lo, hi = quality_limits([0.2, 0.6])
    assert lo < 0.2 and hi > 0.6 and hi - lo < 0.5  # real spreads are shown in full, not squashed


def test_method_colours_are_fixed(tmp_path):
    assert method_color("tfps") == METHOD_COLORS["tfps"] == method_color("tfps-adaptive")
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    assert method_color("newmethod") == method_color("newmethod")
    series = {"tfps": [MethodPoint(0.13, 0.3, "r=0.1", (0.28, 0.32)), MethodPoint(0.3, 0.31, "r=0.25")]}
    path = plot_methods(series, tmp_path / "p.png", "final score (partial)", note="partial", banner="RANDOM WEIGHTS")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_method_name_means_one_layer_in_eval_and_compare(tmp_path):
    from prune2drive_ros.eval.engine import compare_runs

    assert runner_settings(_args("--pruning", "divprune"))["prune_layer"] == 0 == prune_layer_for("divprune")
    assert runner_settings(_args("--pruning", "tfps"))["prune_layer"] == 1
    assert runner_settings(_args("--pruning", "divprune", "--prune-layer", "2"))["prune_layer"] == 2
    for given in ([], ["--prune-layer", "2"]):
        args = _args(*given)
        args.compare, args.compare_retain, args.out = "none,tfps,divprune,fastv", "0.1,0.25", tmp_path
        for name, sub in compare_runs(args):
            alone = runner_settings(_args("--pruning", sub.pruning, *given))
            assert runner_settings(sub)["prune_layer"] == alone["prune_layer"], name


@pytest.mark.parametrize("tokens_per_view", [729, 144, 256])
def test_view_ratios_yaml_reproduces_the_budgets(tokens_per_view):
    # Budgets a TPE trial can keep, including the one 4-decimal rounding got wrong (347 of 729).
    n = tokens_per_view
    budgets = [347, 73, 729, 1, 100, 243] if n == 729 else [n // 2 + 1, n // 10, n, 1, n // 7, n // 3]
    text = optimize.view_ratios_yaml([0.47602, 0.1, 1.0, 0.001, 0.137, 0.33], "tfps", 1, ["c"], budgets, tokens_per_view)
    params = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert view_budgets(tokens_per_view, view_ratios=params["view_ratios"]) == budgets
    assert f"kept tokens per view: {budgets}" in text
    # Without budgets the trial's own ratios go out in full precision, which YAML reads back exactly.
    ratios = [0.4760288399, 0.1, 1.0, 0.25, 0.9999999, 0.123456789012345]
    back = yaml.safe_load(optimize.view_ratios_yaml(ratios, "tfps", 1))["/**"]["ros__parameters"]["view_ratios"]
    assert back == ratios


def test_threads_per_worker(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(optimize.os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert optimize.threads_per_worker(1) == 16
    assert optimize.threads_per_worker(2) == 8
    assert optimize.threads_per_worker(32) == 1
    assert optimize.threads_per_worker(2, threads=3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert optimize.threads_per_worker(1) == 2
