"""``prune2drive study OUT``: the pruning study on the trained test bed, with one command.

1. Writes two disjoint sets of test-bed scenes as DriveLM files: a held-out set (seed
   ``HELDOUT_SEED``, never used in training) and a search set for the budget search (another seed).
2. ``prune2drive eval --compare`` on the held-out set: none, tfps, divprune, fastv, mvpruner, random
   and pool at the retain ratios asked for (default 0.1 and 0.25).
3. ``eval``'s bootstrap over questions gives a 95% interval for accuracy, match and the partial final
   score (no judge: GPT missing) of each run. Scoring uses ``--rules lenient`` (every question
   scored): the official rule skips questions that name objects the frame's first answer did not
   match, and the test bed has no "important objects" question to come first.
4. ``prune2drive optimize`` searches per-camera ratios for T-FPS on the search set; the best ratios
   and a uniform ratio with the same total budget (so the same FLOPs) are then evaluated on the
   held-out set, to show whether view-adaptive budgets beat uniform ones.
5. Writes ``study.md`` (the tables), ``study.json`` and the plots ``testbed_quality_vs_flops.png`` and
   ``testbed_adaptive.png`` into OUT.

Every score is on the synthetic test bed (small model, few tokens per view), not on DriveLM.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prune2drive_ros import settings
from prune2drive_ros.cameras import CAMERA_NAMES
from prune2drive_ros.settings import PRUNING_METHODS as METHODS
from prune2drive_ros.training.testbed import HELDOUT_SEED

STUDY_SETTINGS = ("device", "dtype", "max_new_tokens")
"""Runner settings the study takes as flags (their defaults: ``prune2drive_ros.settings``)."""
SEARCH_SEED = HELDOUT_SEED + 1
COLORS = {"none": "black", "tfps": "C3", "divprune": "C1", "fastv": "C0", "mvpruner": "C4", "random": "C7",
          "pool": "C2", "tfps-adaptive": "C5", "tfps-uniform": "C3"}


def _cli(argv: list[str]) -> None:
    from prune2drive_ros.cli import main

    print("$ prune2drive " + " ".join(argv), flush=True)
    code = main(argv)
    if code:
        raise RuntimeError(f"prune2drive {argv[0]} failed with exit code {code}")


# ---------------------------------------------------------------- scores


def run_scores(run_dir: Path) -> dict[str, Any]:
    """Scores of one eval run and their 95% bootstrap intervals (eval's, over questions)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = ("accuracy", "match", "language_score", "final_score", "final_score_formula", "flops_ratio",
            "kept_per_view", "counts")
    out: dict[str, Any] = {k: metrics.get(k) for k in keys}
    out["ci95"] = {k: v for k, v in (metrics.get("ci95") or {}).items() if v is not None}
    return out


def _interval(run: dict[str, Any], key: str, scale: float = 1.0) -> str:
    value, ci = run.get(key), run.get("ci95", {}).get(key)
    if value is None:
        return "n/a"
    text = f"{value * scale:.1f}" if scale != 1.0 else f"{value:.3f}"
    if ci:
        text += f" [{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]" if scale != 1.0 else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def table(runs: dict[str, dict[str, Any]], dense: dict[str, Any]) -> str:
    lines = ["| run | FLOPs (% dense) | tokens/view kept | Acc % [95% CI] | Match [95% CI] | L | final, partial "
             "[95% CI] | final vs dense |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        kept = run.get("kept_per_view")
        kept_text = "/".join(str(round(k)) for k in kept) if isinstance(kept, list) else "all"
        flops = run.get("flops_ratio")
        rel = run["final_score"] / dense["final_score"] if run.get("final_score") and dense.get("final_score") else None
        lines.append(
            f"| {name} | {100 * flops:.1f} | {kept_text} | {_interval(run, 'accuracy', 100)} | "
            f"{_interval(run, 'match')} | {run.get('language_score') or 0:.3f} | {_interval(run, 'final_score')} | "
            f"{'' if rel is None else f'{100 * rel:.1f}%'} |"
            if flops is not None else f"| {name} | n/a | | | | | | |")
    return "\n".join(lines)


# ---------------------------------------------------------------- plots


def plot_quality_vs_flops(runs: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.8), dpi=120)
    ax = fig.subplots()
    for name, run in runs.items():
        method = name.split("-r")[0]
        if run.get("final_score") is None or run.get("flops_ratio") is None:
            continue
        x, y = 100 * run["flops_ratio"], run["final_score"]
        lo, hi = run["ci95"].get("final_score", [y, y])
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o" if method != "none" else "s",
                    color=COLORS.get(method, "C9"), capsize=3, label=method if "-r0.1" in name or
                    method in ("none",) or "-r" not in name else None)
        ax.annotate(name.replace(f"{method}-", "") if method != "none" else "dense", (x, y),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("prefill FLOPs (% of dense)")
    ax.set_ylabel("final score, partial (max 0.6)\n0.2 L + 0.2 Match/100 + 0.2 Acc", fontsize=9)
    ax.set_ylim(0.0, 0.6)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_adaptive(runs: dict[str, dict[str, Any]], ratios: list[float], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 3.8), dpi=120)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    labels = [c.removeprefix("CAM_").replace("_", "\n") for c in CAMERA_NAMES]
    bars = left.bar(labels, ratios, color="C5")
    for bar, r in zip(bars, ratios, strict=True):
        left.annotate(f"{r:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                      fontsize=8)
    left.axhline(float(np.mean(ratios)), color="C3", ls="--", label=f"uniform {np.mean(ratios):.3f}")
    left.set_ylabel("retain ratio")
    left.set_title("best per-camera ratios (TPE, search set)", fontsize=9)
    left.legend(fontsize=8)
    names = list(runs)
    ys = [runs[n]["final_score"] for n in names]
    errs = [[y - runs[n]["ci95"]["final_score"][0] for n, y in zip(names, ys, strict=True)],
            [runs[n]["ci95"]["final_score"][1] - y for n, y in zip(names, ys, strict=True)]]
    right.bar(names, ys, yerr=errs, capsize=4, color=[COLORS.get(n, "C9") for n in names])
    right.set_ylabel("final score, partial (held-out)")
    right.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- the study


def cone_tokens_kept(model: str, scenes: int, methods: Sequence[str], retains: Sequence[float],
                     runner_settings: dict[str, Any] | None = None) -> dict[str, list]:
    """Per method and retain ratio: [cone tokens kept, cone tokens] over the first ``scenes`` held-out scenes.

    This is the mechanism the scores rest on: a cone is about one token, and a method that drops it
    loses every answer about it.
    """
    from prune2drive_ros.training.testbed import heldout_scenes, patch_labels
    from prune2drive_ros.vlm.runner import VLMRunner

    drawn = heldout_scenes(scenes)
    out: dict[str, list] = {}
    for method in methods:
        for retain in retains:
            given = {**(runner_settings or {}), "max_new_tokens": 1}  # the kept tokens need no answer
            runner = VLMRunner.from_pretrained(model, pruning=method, retain=retain, **given)
            grid = math.isqrt(runner.tokens_per_view)
            kept = total = 0
            for scene in drawn:
                answer = runner.answer(scene.images, [scene.qas[0].question])[0]
                cones, _ = patch_labels(scene, grid)
                for view, indices in enumerate(answer.kept_indices):
                    patches = cones[view].nonzero().flatten().tolist()
                    total += len(patches)
                    kept += len(set(patches) & set(indices))
            runner.close()
            out[f"{method}-r{retain:g}"] = [kept, total]
    return out


def _tokens_per_view(model: str) -> str:
    from prune2drive_ros.training import TESTBED_MARKER

    record = json.loads((Path(model) / "config.json").read_text()).get(TESTBED_MARKER) or {}
    return record.get("tokens_per_view", "?")


def study(out: Path, model: str, *, scenes: int, search_scenes: int, retains: str, trials: int, limit: int,
          resamples: int, methods: Sequence[str] = METHODS, progress: bool = True,
          runner: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole study into ``out``; ``runner`` holds the runner settings of ``STUDY_SETTINGS`` (defaults from
    ``prune2drive_ros.settings``)."""
    from prune2drive_ros.data.drivelm import load_drivelm
    from prune2drive_ros.data.testbed_scenes import write_drivelm_set

    out.mkdir(parents=True, exist_ok=True)
    heldout = out / "heldout"
    search_set = out / "search"
    if not (heldout / "drivelm.json").is_file():
        write_drivelm_set(heldout, scenes, HELDOUT_SEED, progress=progress)
    if not (search_set / "drivelm.json").is_file():
        write_drivelm_set(search_set, search_scenes, SEARCH_SEED, progress=progress)
    # Lenient rules: the test bed has no DriveLM "important objects" first question, so the official rule
    # that skips questions naming unmatched objects would drop every tagged-vehicle question.
    chosen = {name: settings.default(name) for name in STUDY_SETTINGS} | (runner or {})
    common = ["--model", model, "--rules", "lenient"]
    for name, value in chosen.items():
        common += [settings.BY_NAME[name].flag_name, str(value)]
    scoring = ["--bootstrap", str(resamples)]
    quiet = [] if progress else ["--no-progress"]
    _cli(["eval", *common, "--drivelm", str(heldout / "drivelm.json"), "--out", str(out / "compare"),
          "--compare", ",".join(methods), "--compare-retain", retains, *scoring, *quiet])
    _cli(["optimize", *common, "--drivelm", str(search_set / "drivelm.json"), "--out", str(out / "optimize"),
          "--trials", str(trials), "--limit", str(limit), "--pruning", "tfps", "--seed", "0", *quiet])
    best = json.loads((out / "optimize" / "study.json").read_text())
    ratios = [float(best["view_ratios"][cam]) for cam in CAMERA_NAMES]
    _cli(["eval", *common, "--drivelm", str(heldout / "drivelm.json"), "--out", str(out / "adaptive"),
          "--pruning", "tfps", "--view-ratios", *[f"{r:.6f}" for r in ratios], *scoring, *quiet])
    uniform = float(np.mean(ratios))
    _cli(["eval", *common, "--drivelm", str(heldout / "drivelm.json"), "--out", str(out / "uniform"),
          "--pruning", "tfps", "--retain", f"{uniform:.6f}", *scoring, *quiet])

    questions = list(load_drivelm(heldout / "drivelm.json").questions())
    runs = {p.name: run_scores(p) for p in sorted((out / "compare").iterdir()) if (p / "metrics.json").is_file()}
    order = {m: i for i, m in enumerate(methods)}
    runs = dict(sorted(runs.items(), key=lambda kv: (order.get(kv[0].split("-r")[0], 99), kv[0])))
    dense = runs.get("none", {})
    adaptive = {"tfps-adaptive": run_scores(out / "adaptive"), "tfps-uniform": run_scores(out / "uniform")}

    def separated(a: dict, b: dict) -> str:
        """'higher' / 'lower' when the final-score intervals do not overlap, else 'overlapping'."""
        (alo, ahi), (blo, bhi) = a["ci95"]["final_score"], b["ci95"]["final_score"]
        return "higher" if alo > bhi else "lower" if ahi < blo else "overlapping"

    comparisons = {}
    for r in retains.split(","):
        tfps = runs.get(f"tfps-r{float(r):g}")
        for other in ("random", "pool", "fastv", "divprune", "mvpruner"):
            o = runs.get(f"{other}-r{float(r):g}")
            if tfps and o:
                comparisons[f"tfps-r{float(r):g} vs {other}-r{float(r):g}"] = separated(tfps, o)
    comparisons["tfps-adaptive vs tfps-uniform"] = separated(adaptive["tfps-adaptive"], adaptive["tfps-uniform"])
    # MVPruner's second stage reselects per question, so one question's selection would not describe it.
    pruning_methods = [m for m in methods if m not in ("none", "mvpruner")]
    kept = cone_tokens_kept(model, scenes, pruning_methods, [float(r) for r in retains.split(",")], chosen)

    n_q = len(questions)
    title = (f"synthetic test bed (not DriveLM): {n_q} held-out questions, {_tokens_per_view(model)} tokens/view\n"
             "final score partial (no GPT judge), 95% bootstrap CI")
    plot_quality_vs_flops(runs, out / "testbed_quality_vs_flops.png", title)
    plot_adaptive(adaptive, ratios, out / "testbed_adaptive.png", f"T-FPS at equal FLOPs ({n_q} questions)")
    summary = {"questions": n_q, "scenes": scenes, "heldout_seed": HELDOUT_SEED, "search_seed": SEARCH_SEED,
               "model": model, "rules": "lenient", "runs": {**runs, **adaptive}, "view_ratios": ratios,
               "uniform_ratio": uniform, "final_score_intervals": comparisons, "resamples": resamples,
               "cone_tokens_kept": kept}
    (out / "study.json").write_text(json.dumps(summary, indent=1))
    md = [f"Synthetic test bed, not DriveLM. {n_q} held-out questions ({scenes} scenes, seed {HELDOUT_SEED}), "
          "lenient rules (every question scored; see README); final score is partial (no GPT judge): "
          f"{dense.get('final_score_formula')}. 95% intervals: bootstrap over questions ({resamples} resamples).", "",
          table(runs, dense), "", "View-adaptive vs uniform T-FPS at equal total budget:", "", table(adaptive, dense),
          "", "Final-score 95% intervals compared (higher / lower: they do not overlap):", ""]
    md += [f"- {k}: {v}" for k, v in comparisons.items()]
    md += ["", "Cone tokens kept on the held-out scenes (a cone is about one token; what a method drops, the "
           "answers lose):", "", "| run | cone tokens kept |", "|---|---|"]
    md += [f"| {name} | {k} / {n} ({100 * k / max(n, 1):.1f}%) |" for name, (k, n) in kept.items()]
    (out / "study.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from prune2drive_ros.training import shipped_testbed

    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--model", default=None, help="test-bed checkpoint (default: the shipped models/testbed)")
    parser.add_argument("--scenes", type=int, default=40, help="held-out scenes (default 40, ~19 questions each)")
    parser.add_argument("--search-scenes", type=int, default=12, help="scenes of the budget-search set (default 12)")
    parser.add_argument("--retains", default="0.1,0.25", help="retain ratios compared (default 0.1,0.25)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"methods compared (default {','.join(METHODS)})")
    parser.add_argument("--trials", type=int, default=24, help="TPE trials of the budget search (default 24)")
    parser.add_argument("--limit", type=int, default=80, help="questions per trial (default 80)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--no-progress", action="store_true")
    settings.add_arguments(parser, STUDY_SETTINGS)
    parser.set_defaults(default_model=shipped_testbed)


def run(args: argparse.Namespace) -> int:
    model = args.model or args.default_model()
    if model is None:
        print("prune2drive study: no --model and no shipped models/testbed; run `prune2drive train-testbed` first",
              file=sys.stderr)
        return 2
    random.seed(0)
    study(args.out, str(model), scenes=args.scenes, search_scenes=args.search_scenes, retains=args.retains,
          trials=args.trials, limit=args.limit, resamples=args.resamples, methods=args.methods.split(","),
          progress=not args.no_progress, runner=settings.from_args(args, STUDY_SETTINGS))
    return 0
