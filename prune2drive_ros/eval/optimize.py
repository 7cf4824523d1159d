"""``prune2drive optimize``: search the per-camera token budgets with Optuna's TPE sampler.

    prune2drive optimize --model M --drivelm FILE --dataroot D [--trials 1000] [--limit 500]
        [--storage sqlite:///study.db | postgresql://...] [--study-name NAME] [--lambda 0.03] [--out DIR]
        [--workers N] [--threads T]

Each trial picks r in [0.1, 1.0]^6 (one ratio per camera), answers the first ``--limit`` questions
with those budgets and scores ``0.5 * L + 0.5 * Acc - lambda * sum(r)`` (docs/pruning.md). Workers
started on several machines with the same ``--storage`` and ``--study-name`` share one study
(``load_if_exists``); together they stop at about ``--trials`` trials. Every worker writes, from the
whole study, ``view_ratios.yaml`` (a ROS parameter file for the node's ``--params-file``),
``search.png`` (quality against FLOPs with the Pareto front), ``view_ratios.png`` and
``study.json`` into ``--out``. ``view_ratios.yaml`` holds ratios that the budget rule maps back to
exactly the best trial's kept tokens per view (listed beside them).

Threads: each worker runs torch with ``--threads`` threads (default: the machine's cores divided by
``--workers``, or ``OMP_NUM_THREADS`` when set). ``--workers N`` starts N workers on this machine
that share the study; two workers that each used every core ran 5x slower than with one thread each.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prune2drive_ros.cameras import CAMERA_NAMES
from prune2drive_ros.eval.options import add_model_arguments, runner_settings

OBJECTIVE = "0.5*L + 0.5*Acc - {lam}*sum(r)"
LAMBDA = 0.03
"""Prune2Drive's FLOPs penalty per unit of sum(r)."""
RATIO_RANGE = (0.1, 1.0)
"""Each camera's kept fraction is searched in this range (Prune2Drive's)."""
STUDY_NAME = "prune2drive-view-ratios"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or hub id")
    parser.add_argument("--drivelm", required=True, type=Path, help="DriveLM file (training split)")
    parser.add_argument("--dataroot", type=Path, help="nuScenes root (holds samples/)")
    parser.add_argument("--trials", type=int, default=1000, help="trials in the whole study, all workers together")
    parser.add_argument("--limit", type=int, default=500, help="questions each trial answers (default 500)")
    parser.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite:///OUT/study.db)")
    parser.add_argument("--study-name", default=STUDY_NAME)
    parser.add_argument("--lambda", dest="lam", type=float, default=LAMBDA, help="FLOPs penalty per unit of sum(r)")
    parser.add_argument("--min-ratio", type=float, default=RATIO_RANGE[0])
    parser.add_argument("--max-ratio", type=float, default=RATIO_RANGE[1])
    parser.add_argument("--seed", type=int, help="sampler seed (give each worker its own)")
    parser.add_argument("--out", type=Path, default=Path("optimize-out"), help="output folder (default optimize-out)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes to start on this machine, sharing the study (default 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads per worker (default: OMP_NUM_THREADS if set, else the cores divided by --workers)",
    )
    parser.add_argument(
        "--rules",
        choices=("official", "lenient"),
        default="official",
        help="how Acc and L are scored (eval's --rules; default official: exact-match accuracy)",
    )
    add_model_arguments(parser, with_ratios=False)


# ---------------------------------------------------------------- study


def open_study(storage_url: str, name: str, seed: int | None = None, attempts: int = 5) -> Any:
    """Create or join the study; retried, since workers starting together race to create the tables."""
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine_kwargs = {"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else None
    for attempt in range(attempts):
        try:
            # Heartbeats mark a crashed worker's trial as failed, so it does not count as running forever.
            storage = optuna.storages.RDBStorage(
                storage_url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=180
            )
            return optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=optuna.samplers.TPESampler(seed=seed),
                direction="maximize",
                load_if_exists=True,
            )
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _counted(study: Any) -> int:
    """Trials that count towards --trials: finished ones and those other workers are running."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


class BudgetSearch:
    """The objective: answer the subset with a trial's ratios and score it."""

    def __init__(
        self,
        dataset: Any,
        runner_for: Callable[[list[float]], Any],
        lam: float,
        lo: float,
        hi: float,
        rules: str = "official",
    ) -> None:
        self.dataset, self.runner_for, self.lam, self.lo, self.hi = dataset, runner_for, lam, lo, hi
        self.rules = rules
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: Any) -> float:
        import torch

        from prune2drive_ros.eval.engine import answer_in_memory, run_stats
        from prune2drive_ros.eval.scoring import score

        ratios = [trial.suggest_float(cam, self.lo, self.hi) for cam in CAMERA_NAMES]
        runner = self.runner_for(ratios)
        records = answer_in_memory(runner, self.dataset)
        quality = score(self.dataset.questions(), {r["id"]: r["answer"] for r in records}, rules=self.rules, resamples=0)
        lang, acc = quality["language_score"], quality["accuracy"]
        # A subset without multiple-choice (or free-text) questions scores that part as 0.
        q = 0.5 * (lang or 0.0) + 0.5 * (acc or 0.0)
        stats = run_stats(records)
        for key, value in {
            "language_score": lang,
            "accuracy": acc,
            "quality": q,
            "flops_ratio": stats["flops_ratio"],
            "kept_per_view": stats["kept_per_view"],
            # What view_ratios.yaml must reproduce exactly: the budgets the runner kept.
            "budgets": [int(b) for b in getattr(runner, "budgets", None) or []] or None,
            "tokens_per_view": getattr(runner, "tokens_per_view", None),
            "worker": self.worker,
            "torch_threads": torch.get_num_threads(),
        }.items():
            trial.set_user_attr(key, value)
        return q - self.lam * sum(ratios)


def make_runner_for(model: str, settings: dict[str, Any]) -> Callable[[list[float]], Any]:
    """Runner per trial: retargeted in place when the runtime can, else built again."""
    state: dict[str, Any] = {}

    def runner_for(ratios: list[float]) -> Any:
        runner = state.get("runner")
        if runner is not None and hasattr(runner, "set_budgets"):
            runner.set_budgets(view_ratios=ratios)  # same weights, new budgets: no reload per trial
            return runner
        from prune2drive_ros.vlm import VLMRunner

        state["runner"] = VLMRunner.from_pretrained(model, **{**settings, "view_ratios": ratios})
        return state["runner"]

    return runner_for


def search(study: Any, objective: Callable[[Any], float], trials: int, progress: bool = True) -> int:
    """Run trials until the shared study holds ``trials``; returns how many this worker ran."""
    from optuna.study import MaxTrialsCallback
    from tqdm import tqdm

    if _counted(study) >= trials:
        return 0
    ran = 0
    bar = tqdm(
        total=trials, initial=_counted(study), unit="trial", desc="optimize", disable=not progress, dynamic_ncols=True
    )

    def tick(study: Any, trial: Any) -> None:
        nonlocal ran
        ran += 1
        bar.n = min(trials, _counted(study))
        try:
            bar.set_postfix(best=f"{study.best_value:.4f}", refresh=False)
        except ValueError:  # no completed trial yet
            pass
        bar.refresh()

    try:
        study.optimize(objective, callbacks=[tick, MaxTrialsCallback(trials, states=None)])
    finally:
        bar.close()
    return ran


# ---------------------------------------------------------------- outputs


def ratios_for_budgets(budgets: Sequence[int], tokens_per_view: int) -> list[float]:
    """Per view, the shortest decimal ratio that the budget rule (``pruning.view_budgets``) maps back
    to exactly that view's budget, so a node loading the ratios keeps the trial's tokens."""
    from prune2drive_ros.pruning.budgets import view_budgets

    out = []
    for b in budgets:
        for digits in range(2, 17):
            r = min(1.0, round(b / tokens_per_view, digits))
            if r > 0 and view_budgets(tokens_per_view, view_ratios=[r], num_views=1) == [b]:
                out.append(r)
                break
        else:
            raise ValueError(f"no ratio gives a budget of {b} of {tokens_per_view} tokens")
    return out


def view_ratios_yaml(
    ratios: Sequence[float],
    pruning: str,
    prune_layer: int,
    comment: Sequence[str] = (),
    budgets: Sequence[int] | None = None,
    tokens_per_view: int | None = None,
) -> str:
    """A ROS 2 parameter file for drive_vqa_node (``--ros-args --params-file view_ratios.yaml``).

    Ratios are written with ``repr``, which YAML reads back as the same double; with the trial's
    ``budgets`` they are the shortest ratios that round back to exactly those budgets.
    """
    if budgets is not None and tokens_per_view:
        ratios = ratios_for_budgets(budgets, tokens_per_view)
    values = ", ".join(repr(float(r)) for r in ratios)
    head = "".join(f"# {line}\n" for line in comment)
    kept = ""
    if budgets is not None and tokens_per_view:
        n = tokens_per_view
        kept = f"    # kept tokens per view: {list(budgets)} of {n} (round half up of {n} * ratio)\n"
    return (
        f"{head}/**:\n  ros__parameters:\n"
        f'    pruning_method: "{pruning}"\n'
        f"    prune_layer: {prune_layer}\n"
        f"{kept}"
        f"    view_ratios: [{values}]  # {', '.join(CAMERA_NAMES)}\n"
    )


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def write_outputs(
    study: Any, out: Path, pruning: str, prune_layer: int, lam: float, banner: str | None = None
) -> dict[str, Any]:
    from optuna.trial import TrialState

    from prune2drive_ros.eval.files import write_json
    from prune2drive_ros.eval.plots import plot_search, plot_view_ratios

    out.mkdir(parents=True, exist_ok=True)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise RuntimeError(f"study {study.study_name!r} has no completed trial yet")
    best = study.best_trial
    ratios = [best.params[cam] for cam in CAMERA_NAMES]
    attrs = best.user_attrs
    flops = attrs.get("flops_ratio")
    comment = [
        f"Per-camera budgets from `prune2drive optimize`: study {study.study_name!r}, trial {best.number} of {len(done)}.",
        f"objective {OBJECTIVE.format(lam=lam)} = {best.value:.4f}; L = {_fmt(attrs.get('language_score'))}, "
        f"Acc = {_fmt(attrs.get('accuracy'))}, FLOPs = {'n/a' if flops is None else f'{100 * flops:.1f}% of dense'}.",
        "Load with: ros2 run prune2drive_ros drive_vqa_node --ros-args --params-file view_ratios.yaml",
    ]
    if banner:
        comment.insert(0, banner)
    budgets, per_view = attrs.get("budgets"), attrs.get("tokens_per_view")
    text = view_ratios_yaml(ratios, pruning, prune_layer, comment, budgets, per_view)
    (out / "view_ratios.yaml").write_text(text, encoding="utf-8")
    points = [
        (t.user_attrs["flops_ratio"], t.user_attrs["quality"]) for t in done if t.user_attrs.get("flops_ratio") is not None
    ]
    best_point = (flops, attrs["quality"]) if flops is not None else None
    title = f"{study.study_name}: {len(done)} trials"
    plot_search(points, best_point, out / "search.png", title=title, banner=banner)
    plot_view_ratios(ratios, out / "view_ratios.png", title=f"best trial {best.number}: objective {best.value:.4f}")
    summary = {
        "study": study.study_name,
        "objective": OBJECTIVE.format(lam=lam),
        "completed_trials": len(done),
        "best_trial": best.number,
        "best_value": best.value,
        "view_ratios": dict(zip(CAMERA_NAMES, ratios, strict=True)),
        "budgets": budgets,
        "tokens_per_view": per_view,
        "model_weights_warning": banner,
        "best_user_attrs": dict(attrs),
    }
    write_json(out / "study.json", summary)
    return summary


# ---------------------------------------------------------------- command


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """``threads`` if given, else OMP_NUM_THREADS if set, else this process's cores shared among the workers."""
    if threads is not None:
        return max(1, threads)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def run_trials(dataset: Any, model: str, runner: dict[str, Any], storage: str, study_name: str, seed: int | None,
               trials: int, *, lam: float, lo: float, hi: float, rules: str = "official", progress: bool = True) -> int:
    """Join the study and run trials until it holds ``trials``; returns how many ran here. ``runner``: the
    runner settings besides ``view_ratios`` (each trial sets its own)."""
    study = open_study(storage, study_name, seed)
    objective = BudgetSearch(dataset, make_runner_for(model, runner), lam, lo, hi, rules)
    return search(study, objective, trials, progress=progress)


def _worker(args: argparse.Namespace, dataset: Any, storage: str, threads: int) -> int:
    """One worker of ``prune2drive optimize``."""
    import torch

    torch.set_num_threads(threads)
    runner = runner_settings(args)
    runner.pop("view_ratios")
    return run_trials(dataset, args.model, runner, storage, args.study_name, args.seed, args.trials, lam=args.lam,
                      lo=args.min_ratio, hi=args.max_ratio, rules=args.rules, progress=not args.no_progress)


def _child(args: argparse.Namespace, dataset: Any, storage: str, threads: int) -> None:
    try:
        sys.exit(0 if _worker(args, dataset, storage, threads) >= 0 else 1)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it, once
        sys.exit(130)


def _spawn_workers(args: argparse.Namespace, dataset: Any, storage: str, threads: int) -> int:
    """Run ``--workers`` worker processes here, each with its own seed and ``threads`` threads."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    procs = []
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        # Children read these before torch starts its pools; set_num_threads alone leaves OpenMP's default.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        for i in range(args.workers):
            sub = argparse.Namespace(**vars(args))
            sub.seed = (args.seed if args.seed is not None else 0) + i
            sub.no_progress = args.no_progress or i > 0  # one bar: the study's count covers every worker
            proc = ctx.Process(target=_child, args=(sub, dataset, storage, threads), name=f"optimize-worker-{i}")
            proc.start()
            procs.append(proc)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=1.0)  # after Ctrl-C the workers have two seconds between them
    return max((proc.exitcode or 0 for proc in procs), default=0)


def run(args: argparse.Namespace) -> int:
    from prune2drive_ros.data.drivelm import load_drivelm

    try:
        if not 0.0 < args.min_ratio <= args.max_ratio <= 1.0:
            raise ValueError("need 0 < --min-ratio <= --max-ratio <= 1")
        if args.workers < 1:
            raise ValueError("--workers must be >= 1")
        dataset = load_drivelm(args.drivelm, args.dataroot).limit(args.limit)
        dataset.check_images()
    except (ValueError, FileNotFoundError) as exc:
        print(f"prune2drive optimize: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(args.out / 'study.db').resolve()}"
    threads = threads_per_worker(args.workers, args.threads)
    from prune2drive_ros.eval.weights import random_banner, weights_info

    banner = random_banner(weights_info(args.model), args.model)
    if banner:
        print(f"!! {banner}", file=sys.stderr)
    if args.workers > 1:
        before = _counted(open_study(storage, args.study_name, args.seed))  # created once, before the workers race
        code = _spawn_workers(args, dataset, storage, threads)
        if code != 0:
            print(f"prune2drive optimize: a worker failed (exit code {code})", file=sys.stderr)
            return 1
        ran = _counted(open_study(storage, args.study_name, args.seed)) - before
    else:
        ran = _worker(args, dataset, storage, threads)
    study = open_study(storage, args.study_name, args.seed)
    prune_layer = runner_settings(args, view_ratios=[1.0] * len(CAMERA_NAMES))["prune_layer"]
    summary = write_outputs(study, args.out, args.pruning, prune_layer, args.lam, banner)
    ratios = ", ".join(f"{r:.3f}" for r in summary["view_ratios"].values())
    print(
        f"{'this worker' if args.workers == 1 else f'these {args.workers} workers'} ran {ran} trials "
        f"({args.workers} worker(s), {threads} torch threads each); "
        f"study has {summary['completed_trials']} completed\n"
        f"best trial {summary['best_trial']}: objective {summary['best_value']:.4f}, view_ratios [{ratios}]\n"
        f"wrote {args.out / 'view_ratios.yaml'}, search.png, view_ratios.png, study.json"
    )
    return 0
