"""``prune2drive study OUT``: the pruning study on the trained test bed, paired, at equal settings.

What it runs, all through ``VLMRunner`` on freshly drawn test-bed scenes (``data/testbed_scenes``):

1. The test set: ``--scenes`` scenes of seed ``TEST_SEED``, drawn for this table only (nothing is trained,
   tuned or selected on them). Every method prunes at the same layer K = 1 (``STUDY_LAYER``) at each
   retain ratio; DivPrune also runs at K = 0, where its paper selects, as a row of its own. The random
   pruner runs with ``--random-seeds`` different draws; its row is their mean and says their spread.
2. The out-of-distribution set (seed ``OOD_SEED``, ``testbed_scenes.OUT_OF_DISTRIBUTION``): every
   method at the first retain ratio, reported relative to dense.
3. With ``--compare-model`` (the ``labels`` recipe of the ablation): the same runs on the same test
   scenes, side by side with the main model.
4. With ``--trials`` > 0: a per-camera budget search for T-FPS on the search set (seed ``SEARCH_SEED``),
   then the best ratios against a uniform ratio of the same total budget on the test set.

Statistics. Scores are multiple-choice accuracy and nearest-cone match F1 (lenient rules: every question
scored, tags matched within 16 px in the same camera). Each comparison is paired: both runs answered the
same questions on the same frames, and one bootstrap resamples whole scenes (a scene's questions share
its views, so they are not independent) with the same draws for every run; the table gives each
method's difference from dense and from T-FPS at the same ratio, with its 95% interval. The cone-token
table comes from the very answers that were scored: each answer's kept tokens, counted against the
patches each cone covers. The seeds of every set, of the random pruner and of the bootstrap are
written into ``study.json`` and ``study.md``.

Every score is on the synthetic test bed (a small model, few tokens per view), not on DriveLM.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prune2drive_ros import settings
from prune2drive_ros.cameras import CAMERA_NAMES
from prune2drive_ros.data.synthetic_world import IMAGE_HEIGHT, IMAGE_WIDTH
from prune2drive_ros.settings import PRUNING_METHODS as METHODS
from prune2drive_ros.training.testbed import OOD_SEED, SEARCH_SEED, TEST_SEED

STUDY_SETTINGS = ("device", "dtype", "vision_backend", "max_new_tokens")
"""Runner settings the study takes as flags (their defaults: ``prune2drive_ros.settings``)."""
STUDY_LAYER = 1
"""K for every method (Prune2Drive's layer); DivPrune's own K = 0 is an extra, labelled row."""
BOOTSTRAP_SEED = 0
COLORS = {"none": "black", "tfps": "C3", "divprune": "C1", "divprune-K0": "C8", "fastv": "C0", "mvpruner": "C4",
          "random": "C7", "pool": "C2", "tfps-adaptive": "C5", "tfps-uniform": "C3"}


@dataclass(frozen=True)
class RunSpec:
    """One setting of the runner that the study scores."""

    name: str  # "tfps-r0.1", "divprune-K0-r0.1", "random-r0.1-seed2", ...
    method: str
    retain: float | None
    layer: int
    seed: int = 0  # the random pruner's draw
    view_ratios: tuple[float, ...] | None = None

    @property
    def row(self) -> str:
        """The table row it belongs to (the random draws of one ratio share a row)."""
        return self.name.split("-seed")[0]

    def runner_settings(self) -> dict[str, Any]:
        return {"pruning": self.method, "retain": self.retain, "prune_layer": self.layer, "pruning_seed": self.seed,
                "view_ratios": list(self.view_ratios) if self.view_ratios else None}


def study_runs(methods: Sequence[str], retains: Sequence[float], random_seeds: int) -> list[RunSpec]:
    """Dense, then each method at each ratio at K = 1; DivPrune also at K = 0; random once per seed."""
    runs = [RunSpec("none", "none", None, STUDY_LAYER)] if "none" in methods else []
    for method in (m for m in methods if m != "none"):
        for r in retains:
            if method == "random":
                runs += [RunSpec(f"random-r{r:g}-seed{s}", method, r, STUDY_LAYER, s) for s in range(random_seeds)]
            else:
                runs.append(RunSpec(f"{method}-r{r:g}", method, r, STUDY_LAYER))
            if method == "divprune":
                runs.append(RunSpec(f"divprune-K0-r{r:g}", method, r, 0))
    return runs


# ---------------------------------------------------------------- scoring


@dataclass
class Scored:
    """One run's answers, scored, kept per scene so the bootstrap can resample scenes."""

    mc: list[list[float]] = field(default_factory=list)  # per scene: 1/0 per multiple-choice question
    kinds: list[list[str]] = field(default_factory=list)  # per scene: the kind of each of those
    f1: list[list[float]] = field(default_factory=list)  # per scene: match F1 per nearest-cone question
    cones_seen: list[float] = field(default_factory=list)  # per scene: cones with a kept token, mean over answers
    cones: list[int] = field(default_factory=list)  # per scene: cones in the views
    cone_tokens_kept: list[float] = field(default_factory=list)  # per scene: kept tokens on cones, mean over answers
    cone_tokens: list[int] = field(default_factory=list)
    flops: float = 1.0
    kept_per_view: list[float] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)


def cone_patches(scene, grid: int) -> list[tuple[int, set[int]]]:
    """(view, patch indices its box covers) for every cone of ``scene`` on a grid x grid token layout."""
    out = []
    for view, cam in enumerate(CAMERA_NAMES):
        for item in scene.seen.get(cam, []):
            if item.kind != "cone":
                continue
            x1, y1, x2, y2 = item.bbox
            cols = range(int(x1 * grid / IMAGE_WIDTH), min(grid - 1, int(x2 * grid / IMAGE_WIDTH)) + 1)
            rows = range(int(y1 * grid / IMAGE_HEIGHT), min(grid - 1, int(y2 * grid / IMAGE_HEIGHT)) + 1)
            out.append((view, {r * grid + c for r in rows for c in cols}))
    return out


def patch_centre_ceiling(scenes: list, grid: int) -> float:
    """Match F1 (%) of an oracle that names the centre of the patch each nearest cone's centre falls in.

    A model that localises to the right token and no finer scores this: the ceiling of patch-level
    localisation on a grid x grid layout, against which a nearest-cone score is read.
    """
    from prune2drive_ros.eval.metrics import match_f1_lenient

    width, height = IMAGE_WIDTH / grid, IMAGE_HEIGHT / grid
    f1 = []
    for scene in scenes:
        for qa in (qa for qa in scene.qas if qa.kind == "nearest"):
            x, y = ((math.floor(c / size) + 0.5) * size for c, size in zip(qa.point, (width, height), strict=True))
            f1.append(match_f1_lenient(f"<c1,{qa.camera},{x:.1f},{y:.1f}>", qa.answer))
    return 100.0 * float(np.mean(f1)) if f1 else float("nan")


def score(model: str, scenes: list, spec: RunSpec, runner: dict[str, Any], progress: bool = True) -> Scored:
    """Answer every question of ``scenes`` under ``spec`` and score each answer."""
    from tqdm import tqdm

    from prune2drive_ros.eval.metrics import match_f1_lenient, parse_option_letter
    from prune2drive_ros.vlm.runner import VLMRunner

    vlm = VLMRunner.from_pretrained(model, **{**runner, **spec.runner_settings()})
    grid = math.isqrt(vlm.tokens_per_view)
    out = Scored()
    flops, kept = [], []
    for scene in tqdm(scenes, desc=spec.name, unit="scene", disable=not progress, leave=False):
        answers = vlm.answer(scene.images, [qa.question for qa in scene.qas])
        out.mc.append([float(parse_option_letter(a.text, qa.question) == qa.answer)
                       for qa, a in zip(scene.qas, answers, strict=True) if qa.kind != "nearest"])
        out.kinds.append([qa.kind for qa in scene.qas if qa.kind != "nearest"])
        out.f1.append([match_f1_lenient(a.text, qa.answer)
                       for qa, a in zip(scene.qas, answers, strict=True) if qa.kind == "nearest"])
        out.answers.append([a.text for a in answers])
        patches = cone_patches(scene, grid)
        seen, tokens = [], []
        for a in answers:  # question-dependent methods (FastV, MVPruner) keep other tokens per question
            kept_sets = [set(k) for k in a.kept_indices] if a.kept_indices else [set(range(grid * grid))] * 6
            seen.append(sum(bool(p & kept_sets[v]) for v, p in patches))
            tokens.append(sum(len(p & kept_sets[v]) for v, p in patches))
            flops.append(a.flops_ratio)
            kept.append(a.kept_per_view)
        out.cones_seen.append(float(np.mean(seen)))
        out.cones.append(len(patches))
        out.cone_tokens_kept.append(float(np.mean(tokens)))
        out.cone_tokens.append(sum(len(p) for _, p in patches))
    vlm.close()
    out.flops = float(np.mean(flops))
    out.kept_per_view = np.mean(np.array(kept, dtype=float), axis=0).round(1).tolist()
    return out


def mean_of_draws(draws: list[Scored]) -> Scored:
    """The random pruner's row: per question, the mean over its seeded draws."""
    first = draws[0]
    out = Scored(kinds=first.kinds, cones=first.cones, cone_tokens=first.cone_tokens)
    out.mc = [np.mean([d.mc[s] for d in draws], axis=0).tolist() for s in range(len(first.mc))]
    out.f1 = [np.mean([d.f1[s] for d in draws], axis=0).tolist() if first.f1[s] else [] for s in range(len(first.f1))]
    out.cones_seen = np.mean([d.cones_seen for d in draws], axis=0).tolist()
    out.cone_tokens_kept = np.mean([d.cone_tokens_kept for d in draws], axis=0).tolist()
    out.flops = float(np.mean([d.flops for d in draws]))
    out.kept_per_view = np.mean([d.kept_per_view for d in draws], axis=0).round(1).tolist()
    return out


# ---------------------------------------------------------------- statistics


def resample_counts(scenes: int, resamples: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[resamples, scenes]: how often each scene is drawn in each bootstrap resample (one matrix for all runs)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, scenes, size=(resamples, scenes))
    return np.stack([np.bincount(row, minlength=scenes) for row in draws])


def _sums(per_scene: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([sum(v) for v in per_scene], dtype=float), np.array([len(v) for v in per_scene], dtype=float)


def metric(per_scene: list[list[float]], counts: np.ndarray | None = None) -> float | np.ndarray | None:
    """Mean over all questions (of the resampled scenes, one value per resample when ``counts`` is given)."""
    total, n = _sums(per_scene)
    if n.sum() == 0:
        return None
    if counts is None:
        return float(total.sum() / n.sum())
    return (counts @ total) / np.maximum(counts @ n, 1)


def paired_difference(a: list[list[float]], b: list[list[float]], counts: np.ndarray) -> dict[str, float] | None:
    """a - b over the same questions: the point difference and the 2.5/97.5% of its scene bootstrap."""
    if metric(a) is None or metric(b) is None:
        return None
    diffs = metric(a, counts) - metric(b, counts)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": metric(a) - metric(b), "lo": float(lo), "hi": float(hi)}


def interval(a: list[list[float]], counts: np.ndarray) -> list[float] | None:
    if metric(a) is None:
        return None
    return np.percentile(metric(a, counts), [2.5, 97.5]).round(4).tolist()


def summarize(rows: dict[str, Scored], draws: dict[str, list[Scored]], counts: np.ndarray) -> dict[str, dict]:
    """Per row: scores with intervals, paired differences from dense and from T-FPS at the same ratio,
    the cones and cone tokens kept, FLOPs; for the random rows also each draw's scores (the spread)."""
    dense = rows.get("none")
    out: dict[str, dict] = {}
    for name, run in rows.items():
        ratio = name.rsplit("-r", 1)[1] if "-r" in name else None
        tfps = rows.get(f"tfps-r{ratio}") if ratio else None
        kinds = {k: float(np.mean([h for hs, ks in zip(run.mc, run.kinds, strict=True) for h, kk in zip(hs, ks,
                                                                                                       strict=True)
                                   if kk == k])) for k in sorted({k for ks in run.kinds for k in ks})}
        entry: dict[str, Any] = {
            "mc_accuracy": metric(run.mc), "mc_ci95": interval(run.mc, counts),
            "match_f1": metric(run.f1), "match_ci95": interval(run.f1, counts), "per_kind": kinds,
            "flops_ratio": run.flops, "kept_per_view": run.kept_per_view,
            "cones_seen": float(np.sum(run.cones_seen)), "cones": int(np.sum(run.cones)),
            "cone_tokens_kept": float(np.sum(run.cone_tokens_kept)), "cone_tokens": int(np.sum(run.cone_tokens)),
        }
        if dense is not None and name != "none":
            entry["mc_vs_dense"] = paired_difference(run.mc, dense.mc, counts)
            entry["match_vs_dense"] = paired_difference(run.f1, dense.f1, counts)
        if tfps is not None and not name.startswith("tfps-"):
            entry["mc_vs_tfps"] = paired_difference(run.mc, tfps.mc, counts)
            entry["match_vs_tfps"] = paired_difference(run.f1, tfps.f1, counts)
        if name in draws:
            per_draw = [metric(d.mc) for d in draws[name]]
            entry["draws"] = {"mc_accuracy": per_draw, "match_f1": [metric(d.f1) for d in draws[name]],
                              "mc_sd": float(np.std(per_draw, ddof=1)) if len(per_draw) > 1 else 0.0,
                              "cones_seen": [float(np.sum(d.cones_seen)) for d in draws[name]]}
        out[name] = entry
    return out


def score_set(model: str, scenes: list, specs: list[RunSpec], runner: dict[str, Any], counts: np.ndarray,
              progress: bool = True) -> tuple[dict[str, dict], dict[str, Scored]]:
    """Score every run on one scene set; random draws are folded into their row."""
    rows: dict[str, Scored] = {}
    draws: dict[str, list[Scored]] = {}
    for spec in specs:
        if progress:
            print(f"== {spec.name} (K={spec.layer})", flush=True)
        scored = score(model, scenes, spec, runner, progress)
        if spec.name != spec.row:
            draws.setdefault(spec.row, []).append(scored)
            rows[spec.row] = mean_of_draws(draws[spec.row])
        else:
            rows[spec.row] = scored
    return summarize(rows, draws, counts), rows


# ---------------------------------------------------------------- tables and plots


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _diff(d: dict[str, float] | None) -> str:
    if d is None:
        return ""
    mark = " *" if d["hi"] < 0 or d["lo"] > 0 else ""
    return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]{mark}"


def _row_label(name: str) -> str:
    if name.startswith("divprune-K0-"):
        return name.replace("-K0", "") + " (K=0, its own layer)"
    return name + " (mean of draws)" if name.startswith("random-") else name


def table(summary: dict[str, dict]) -> str:
    lines = ["| run | FLOPs % | MC acc % [95%] | vs dense | vs tfps | match F1 % [95%] | vs dense | vs tfps | "
             "cones seen |",
             "|---|---:|---|---|---|---|---|---|---:|"]
    for name, s in summary.items():
        ci, mci = s["mc_ci95"], s["match_ci95"]
        acc = f"{_pct(s['mc_accuracy'])} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else _pct(s["mc_accuracy"])
        match = f"{_pct(s['match_f1'])} [{_pct(mci[0])}, {_pct(mci[1])}]" if mci else _pct(s["match_f1"])
        spread = ""
        if "draws" in s:
            spread = f" (draws {min(s['draws']['mc_accuracy']) * 100:.1f}-{max(s['draws']['mc_accuracy']) * 100:.1f})"
        lines.append(f"| {_row_label(name)} | {100 * s['flops_ratio']:.1f} | {acc}{spread} | {_diff(s.get('mc_vs_dense'))}"
                     f" | {_diff(s.get('mc_vs_tfps'))} | {match} | {_diff(s.get('match_vs_dense'))} | "
                     f"{_diff(s.get('match_vs_tfps'))} | {s['cones_seen']:.0f} / {s['cones']} |")
    return "\n".join(lines)


def side_by_side(main: dict[str, dict], other: dict[str, dict], names: tuple[str, str]) -> str:
    lines = [f"| run | {names[0]}: MC acc % | vs dense | cones seen | {names[1]}: MC acc % | vs dense | cones seen |",
             "|---|---|---|---:|---|---|---:|"]
    for name in other:
        a, b = main.get(name), other[name]
        if a is None:
            continue
        lines.append(f"| {_row_label(name)} | {_pct(a['mc_accuracy'])} | {_diff(a.get('mc_vs_dense'))} | "
                     f"{a['cones_seen']:.0f} / {a['cones']} | {_pct(b['mc_accuracy'])} | {_diff(b.get('mc_vs_dense'))} | "
                     f"{b['cones_seen']:.0f} / {b['cones']} |")
    return "\n".join(lines)


def relative_table(summary: dict[str, dict]) -> str:
    dense = summary["none"]
    lines = ["| run | MC acc % | relative to dense | vs dense | match F1 % | cones seen |", "|---|---|---:|---|---|---:|"]
    for name, s in summary.items():
        rel = s["mc_accuracy"] / dense["mc_accuracy"] if dense["mc_accuracy"] else None
        lines.append(f"| {_row_label(name)} | {_pct(s['mc_accuracy'])} | {'' if rel is None else f'{100 * rel:.1f}%'} | "
                     f"{_diff(s.get('mc_vs_dense'))} | {_pct(s['match_f1'])} | {s['cones_seen']:.0f} / {s['cones']} |")
    return "\n".join(lines)


def plot_quality_vs_flops(summary: dict[str, dict], path: Path, title: str) -> Path:
    """MC accuracy and match F1 against FLOPs, each with its scene-bootstrap interval."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.6), dpi=120)
    axes = fig.subplots(1, 2)
    for ax, key, ci_key, label in ((axes[0], "mc_accuracy", "mc_ci95", "multiple-choice accuracy"),
                                   (axes[1], "match_f1", "match_ci95", "nearest-cone match F1")):
        for name, s in summary.items():
            if s[key] is None:
                continue
            method = name.rsplit("-r", 1)[0] if name != "none" else "none"
            x, y = 100 * s["flops_ratio"], s[key]
            lo, hi = s[ci_key] or (y, y)
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="s" if method == "none" else "o",
                        color=COLORS.get(method, "C9"), capsize=3,
                        label=method if "r0.1" in name or method == "none" else None)
            ax.annotate(name.rsplit("-r", 1)[1] if method != "none" else "dense", (x, y), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
        ax.set_xlabel("prefill FLOPs (% of dense)")
        ax.set_ylabel(label)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_adaptive(summary: dict[str, dict], ratios: list[float], path: Path, title: str) -> Path:
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
    names = list(summary)
    ys = [summary[n]["mc_accuracy"] for n in names]
    errs = [[y - summary[n]["mc_ci95"][0] for n, y in zip(names, ys, strict=True)],
            [summary[n]["mc_ci95"][1] - y for n, y in zip(names, ys, strict=True)]]
    right.bar(names, ys, yerr=errs, capsize=4, color=[COLORS.get(n, "C9") for n in names])
    right.set_ylabel("MC accuracy (test set)")
    right.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- the study


def _grid(model: str) -> int:
    """Tokens per side of a view: the vision tower's input size over its patch size."""
    vision = json.loads((Path(model) / "config.json").read_text())["vision_config"]
    return vision["image_size"] // vision["patch_size"]


def _tokens_per_view(model: str) -> str:
    from prune2drive_ros.training import TESTBED_MARKER

    record = json.loads((Path(model) / "config.json").read_text()).get(TESTBED_MARKER) or {}
    return record.get("tokens_per_view", "?")


def budget_search(out: Path, model: str, runner: dict[str, Any], scenes: int, trials: int, limit: int,
                  progress: bool) -> list[float]:
    """T-FPS's per-camera ratios found by the ``optimize`` engine on the search set (not the test set)."""
    from prune2drive_ros.data.drivelm import load_drivelm
    from prune2drive_ros.data.testbed_scenes import write_drivelm_set
    from prune2drive_ros.eval import optimize

    search = out / "search"
    if not (search / "drivelm.json").is_file():
        write_drivelm_set(search, scenes, SEARCH_SEED, progress=progress)
    searched = {**runner, "pruning": "tfps", "prune_layer": STUDY_LAYER}
    storage = f"sqlite:///{(out / 'optimize').resolve() / 'study.db'}"
    (out / "optimize").mkdir(parents=True, exist_ok=True)
    optimize.run_trials(load_drivelm(search / "drivelm.json").limit(limit), model, searched, storage,
                        optimize.STUDY_NAME, 0, trials, lam=optimize.LAMBDA, lo=optimize.RATIO_RANGE[0],
                        hi=optimize.RATIO_RANGE[1], rules="lenient", progress=progress)
    best = optimize.write_outputs(optimize.open_study(storage, optimize.STUDY_NAME, 0), out / "optimize", "tfps",
                                  STUDY_LAYER, optimize.LAMBDA)
    return [float(best["view_ratios"][cam]) for cam in CAMERA_NAMES]


def study(out: Path, model: str, *, scenes: int = 40, ood_scenes: int = 40, retains: Sequence[float] = (0.1, 0.25),
          methods: Sequence[str] = METHODS, random_seeds: int = 5, resamples: int = 2000,
          compare_model: str | None = None, trials: int = 0, search_scenes: int = 12, limit: int = 80,
          runner: dict[str, Any] | None = None, progress: bool = True, test_seed: int = TEST_SEED,
          ood_seed: int = OOD_SEED) -> dict[str, Any]:
    """The whole study into ``out`` (``study.json``, ``study.md`` and the plots); returns the summary.

    ``test_seed`` and ``ood_seed`` are for trying the study out (on development seeds): the README's table
    is the default test seed's, looked at once.
    """
    from prune2drive_ros.data.testbed_scenes import OUT_OF_DISTRIBUTION, make_scenes

    out.mkdir(parents=True, exist_ok=True)
    chosen = {name: settings.default(name) for name in STUDY_SETTINGS} | (runner or {})
    test = make_scenes(scenes, test_seed)
    counts = resample_counts(len(test), resamples)
    specs = study_runs(methods, retains, random_seeds)
    main_summary, _ = score_set(model, test, specs, chosen, counts, progress)
    summary: dict[str, Any] = {
        "note": "synthetic test bed, not DriveLM; lenient rules; paired scene bootstrap",
        "model": model, "tokens_per_view": _tokens_per_view(model), "layer": STUDY_LAYER,
        "seeds": {"test": test_seed, "ood": ood_seed, "search": SEARCH_SEED, "bootstrap": BOOTSTRAP_SEED,
                  "random_pruner": list(range(random_seeds))},
        "scenes": scenes, "questions": sum(len(s.qas) for s in test), "resamples": resamples,
        "runs": [asdict(s) for s in specs], "settings": chosen, "test": main_summary,
    }
    summary["patch_grid"] = grid = _grid(model)
    summary["patch_centre_f1"] = round(patch_centre_ceiling(test, grid), 1)
    first = [retains[0]]
    if ood_scenes:
        ood = make_scenes(ood_scenes, ood_seed, OUT_OF_DISTRIBUTION)
        summary["ood_scenes"] = ood_scenes
        summary["ood"], _ = score_set(model, ood, study_runs(methods, first, random_seeds), chosen,
                                      resample_counts(len(ood), resamples), progress)
    if compare_model:
        summary["compare_model"] = compare_model
        summary["compare"], _ = score_set(compare_model, test, study_runs(methods, first, random_seeds), chosen,
                                          counts, progress)
    if trials:
        ratios = budget_search(out, model, chosen, search_scenes, trials, limit, progress)
        uniform = float(np.mean(ratios))
        adaptive_specs = [RunSpec("tfps-adaptive", "tfps", uniform, STUDY_LAYER, view_ratios=tuple(ratios)),
                          RunSpec("tfps-uniform", "tfps", uniform, STUDY_LAYER)]
        adaptive, rows = score_set(model, test, adaptive_specs, chosen, counts, progress)
        adaptive["tfps-adaptive"]["mc_vs_uniform"] = paired_difference(rows["tfps-adaptive"].mc,
                                                                       rows["tfps-uniform"].mc, counts)
        summary.update(view_ratios=ratios, uniform_ratio=uniform, adaptive=adaptive)
        plot_adaptive(adaptive, ratios, out / "testbed_adaptive.png", "T-FPS at equal FLOPs (test set)")
    (out / "study.json").write_text(json.dumps(summary, indent=1))
    title = (f"synthetic test bed (not DriveLM): {summary['questions']} test questions ({scenes} scenes, seed "
             f"{test_seed}), {summary['tokens_per_view']} tokens/view, K={STUDY_LAYER}; 95% scene-bootstrap intervals")
    plot_quality_vs_flops(main_summary, out / "testbed_quality_vs_flops.png", title)
    (out / "study.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    md = [f"Synthetic test bed, not DriveLM. Model `{summary['model']}`, {summary['tokens_per_view']} tokens per view. "
          f"Test set: {summary['scenes']} scenes, {summary['questions']} questions, seed {seeds['test']} (drawn for "
          f"this table only). Every method prunes at layer K = {summary['layer']}; DivPrune also at K = 0, its own "
          f"layer. Random: the mean of draws with seeds {seeds['random_pruner']} (their range in brackets). "
          f"Differences are paired (same questions, same frames) with 95% intervals from {summary['resamples']} "
          f"bootstrap resamples of whole scenes (seed {seeds['bootstrap']}); * marks an interval that excludes 0. "
          "Cones seen: cones with at least one kept token, counted from the scored answers' kept tokens (mean over "
          "a scene's questions for question-dependent methods). Lenient rules.", "",
          table(summary["test"]), ""]
    if "patch_centre_f1" in summary:
        grid = summary["patch_grid"]
        md += [f"Nearest-cone ceiling of localising to the token: naming the centre of the patch that holds each "
               f"nearest cone's centre scores {summary['patch_centre_f1']:.1f}% match F1 on these scenes (a tag must "
               f"fall within 16 px, L1, of the box centre; one of {grid} x {grid} patches covers "
               f"{IMAGE_WIDTH / grid:.0f} x {IMAGE_HEIGHT / grid:.1f} px of the {IMAGE_WIDTH} x {IMAGE_HEIGHT} view).", ""]
    if "ood" in summary:
        md += [f"Out of distribution ({summary['ood_scenes']} scenes, seed {seeds['ood']}: cones nearer and farther "
               "than in training, more look-alikes and bins, dusk light, wet road, other buildings):", "",
               relative_table(summary["ood"]), ""]
    if "compare" in summary:
        md += [f"Ablation, same test scenes: `{summary['model']}` vs `{summary['compare_model']}`:", "",
               side_by_side(summary["test"], summary["compare"], ("main", "compared")), ""]
    if "adaptive" in summary:
        d = summary["adaptive"]["tfps-adaptive"]["mc_vs_uniform"]
        md += [f"View-adaptive T-FPS (ratios {', '.join(f'{r:.2f}' for r in summary['view_ratios'])}, searched on "
               f"seed {seeds['search']}) vs uniform {summary['uniform_ratio']:.3f} at equal FLOPs: MC accuracy "
               f"{_diff(d)} points.", ""]
    return "\n".join(md)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from prune2drive_ros.training import shipped_testbed

    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--model", default=None, help="test-bed checkpoint (default: the shipped models/testbed)")
    parser.add_argument("--compare-model", default=None,
                        help="a second checkpoint scored on the same test scenes, side by side (the ablation)")
    parser.add_argument("--scenes", type=int, default=40, help=f"test scenes, seed {TEST_SEED} (default 40)")
    parser.add_argument("--ood-scenes", type=int, default=40,
                        help=f"out-of-distribution scenes, seed {OOD_SEED} (default 40; 0: none)")
    parser.add_argument("--retains", default="0.1,0.25", help="retain ratios compared (default 0.1,0.25)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"methods compared (default {','.join(METHODS)})")
    parser.add_argument("--random-seeds", type=int, default=5, help="draws of the random pruner (default 5)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--trials", type=int, default=0, help="TPE trials of the per-camera budget search (default 0: "
                        "no search)")
    parser.add_argument("--search-scenes", type=int, default=12, help=f"scenes of the search set, seed {SEARCH_SEED}")
    parser.add_argument("--limit", type=int, default=80, help="questions per search trial (default 80)")
    parser.add_argument("--test-seed", type=int, default=TEST_SEED,
                        help="seed of the test scenes; another seed only to try the study out (default: the test seed)")
    parser.add_argument("--ood-seed", type=int, default=OOD_SEED, help="seed of the out-of-distribution scenes")
    settings.add_arguments(parser, ("weights",), weights={
        "nargs": "+", "help": "instead of the pruning study: these language-model precisions (e.g. int8 int4) vs the "
                              "model's own dtype at T-FPS and the first --retains ratio, paired (training/precision.py)"})
    parser.add_argument("--no-progress", action="store_true")
    settings.add_arguments(parser, STUDY_SETTINGS)
    parser.set_defaults(default_model=shipped_testbed)


def run(args: argparse.Namespace) -> int:
    model = args.model or args.default_model()
    if model is None:
        print("prune2drive study: no --model and no shipped models/testbed; run `prune2drive train-testbed` first",
              file=sys.stderr)
        return 2
    if isinstance(args.weights, list):
        return precision(args, str(model))
    study(args.out, str(model), scenes=args.scenes, ood_scenes=args.ood_scenes,
          retains=[float(r) for r in args.retains.split(",")], methods=args.methods.split(","),
          random_seeds=args.random_seeds, resamples=args.resamples, compare_model=args.compare_model,
          trials=args.trials, search_scenes=args.search_scenes, limit=args.limit,
          runner=settings.from_args(args, STUDY_SETTINGS), progress=not args.no_progress, test_seed=args.test_seed,
          ood_seed=args.ood_seed)
    return 0


def precision(args: argparse.Namespace, model: str) -> int:
    """``--weights``: quantized language-model weights against the model's own dtype on the test scenes."""
    from prune2drive_ros.data.testbed_scenes import write_drivelm_set
    from prune2drive_ros.training.precision import precision_study

    test_set = args.out / "test"
    if not (test_set / "drivelm.json").is_file():
        write_drivelm_set(test_set, args.scenes, args.test_seed, progress=not args.no_progress)
    precision_study(args.out, model, args.weights, test_set, float(args.retains.split(",")[0]), args.resamples,
                    settings.from_args(args, STUDY_SETTINGS), progress=not args.no_progress)
    return 0
