"""Answer DriveLM with the VLM runtime: one batched call per keyframe, resumable, sharded under torchrun.

Files in the output folder:

- ``run.json``: the settings that decide the answers; a rerun with other settings into the same
  folder is refused, so resumed answers never mix two configurations;
- ``answers.jsonl``: one record per answered question, appended one keyframe at a time. A rerun
  skips keyframes whose questions all have a record; a keyframe cut short is answered again whole
  (its questions share one visual prefix, so they are answered together). Records carry a
  timestamp and the newest record of a question wins;
- ``answers.rank<N>.jsonl``: each rank's log under torchrun; rank 0 folds them into answers.jsonl
  at the end, after gathering every rank's answers through torch.distributed (so the folder need
  not be on a shared file system);
- ``submission.json`` and ``metrics.json``, written by rank 0 from the merged answers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from prune2drive_ros.cameras import NUM_CAMERAS
from prune2drive_ros.data.drivelm import DriveLMSet, KeyFrame, load_drivelm
from prune2drive_ros.eval.bootstrap import DEFAULT_RESAMPLES
from prune2drive_ros.eval.distributed import Ranks
from prune2drive_ros.eval.files import AnswerLog, read_jsonl, write_json
from prune2drive_ros.eval.options import runner_settings
from prune2drive_ros.eval.scoring import metrics_document, score
from prune2drive_ros.eval.submission import write_submission
from prune2drive_ros.eval.weights import weights_info

ANSWER_SETTINGS = ("model", "pruning", "retain", "view_ratios", "prune_layer", "max_new_tokens")
"""Settings that change the answers; a folder's answers are only resumed under the same ones."""

STAGES = ("preprocess", "vision", "prune", "prefill", "decode", "total")


# ---------------------------------------------------------------- answering


def load_views(kf: KeyFrame) -> list[np.ndarray]:
    """The six camera images of a keyframe as RGB uint8 arrays, in camera order."""
    import cv2

    views = []
    for path in kf.image_paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {path} (keyframe {kf.id})")
        views.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return views


def _prefetched(keyframes: Sequence[KeyFrame], depth: int = 2) -> Iterator[tuple[KeyFrame, list[np.ndarray]]]:
    """Decode the next keyframes' JPEGs on threads while the model works on the current one."""
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending: deque = deque()
        it = iter(keyframes)
        for kf in it:
            pending.append((kf, pool.submit(load_views, kf)))
            if len(pending) >= depth:
                break
        while pending:
            kf, future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_views, nxt)))
            yield kf, future.result()


def _record(kf: KeyFrame, question_id: str, question: str, answer: Any) -> dict[str, Any]:
    return {
        "id": question_id,
        "keyframe": kf.id,
        "question": question,
        "answer": answer.text,
        "timings_ms": {k: float(v) for k, v in dict(answer.timings_ms).items()},
        "kept_per_view": [int(k) for k in answer.kept_per_view] if answer.kept_per_view is not None else None,
        "visual_tokens": _num(answer.visual_tokens),
        "flops": _num(answer.flops),
        "flops_dense": _num(answer.flops_dense),
        "prefix_reused": bool(answer.prefix_reused),
        "t": time.time(),
    }


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def answer_keyframes(
    runner: Any,
    keyframes: Sequence[KeyFrame],
    on_answers: Callable[[KeyFrame, list[dict[str, Any]]], None],
    progress: bool = True,
    desc: str = "eval",
) -> None:
    """Answer each keyframe's questions in one ``runner.answer`` call (they share the visual prefix)."""
    from tqdm import tqdm

    # "keyframe", not "kf": tqdm prints "1.10kf/s", which reads as kilo-somethings per second.
    bar = tqdm(total=len(keyframes), unit="keyframe", desc=desc, disable=not progress, dynamic_ncols=True)
    start, answered = time.perf_counter(), 0
    try:
        for kf, views in _prefetched(keyframes):
            answers = runner.answer(views, [q.question for q in kf.questions])
            if len(answers) != len(kf.questions):
                raise RuntimeError(f"runner gave {len(answers)} answers for {len(kf.questions)} questions ({kf.id})")
            on_answers(kf, [_record(kf, q.id, q.question, a) for q, a in zip(kf.questions, answers, strict=True)])
            answered += len(answers)
            bar.update(1)
            bar.set_postfix(questions=f"{answered / (time.perf_counter() - start):.2f}/s", refresh=False)
    finally:
        bar.close()


def answer_in_memory(runner: Any, dataset: DriveLMSet, progress: bool = False) -> list[dict[str, Any]]:
    """All answers of a (small) set without files; what the budget search scores each trial on."""
    records: list[dict[str, Any]] = []
    answer_keyframes(runner, dataset.keyframes, lambda _, recs: records.extend(recs), progress, desc="trial")
    return records


# ---------------------------------------------------------------- statistics


def run_stats(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """flops_ratio (mean flops / dense flops), latency p50/p90 per stage, mean kept tokens per view.

    Latency is per keyframe: one ``runner.answer`` call that encodes the six views and answers all
    of the keyframe's questions (every answer of a call carries the call's timings, so one record
    per keyframe is counted). FLOPs and kept tokens are per question.
    """
    records = list(records)
    calls: dict[str, Any] = {}
    for r in records:
        calls.setdefault(r.get("keyframe", r["id"]), r.get("timings_ms"))
    ratios = [r["flops"] / r["flops_dense"] for r in records if r.get("flops") is not None and r.get("flops_dense")]
    kept = [r["kept_per_view"] for r in records if r.get("kept_per_view") and len(r["kept_per_view"]) == NUM_CAMERAS]
    tokens = [r["visual_tokens"] for r in records if r.get("visual_tokens") is not None]
    return {
        "flops_ratio": float(np.mean(ratios)) if ratios else None,
        "latency_ms": _percentiles([t for t in calls.values() if t]),
        "kept_per_view": [round(float(v), 2) for v in np.mean(np.array(kept, dtype=float), axis=0)] if kept else None,
        "visual_tokens": float(np.mean(tokens)) if tokens else None,
    }


def _percentiles(timings: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]] | None:
    by_stage: dict[str, list[float]] = {}
    for t in timings:
        for stage, ms in t.items():
            by_stage.setdefault(stage, []).append(float(ms))
    if not by_stage:
        return None
    order = [s for s in STAGES if s in by_stage] + sorted(set(by_stage) - set(STAGES))
    return {
        s: {"p50": round(float(np.percentile(by_stage[s], 50)), 3), "p90": round(float(np.percentile(by_stage[s], 90)), 3)}
        for s in order
    }


# ---------------------------------------------------------------- resumable, sharded evaluation


def _check_settings(path: Path, settings: Mapping[str, Any]) -> None:
    wanted = {k: settings.get(k) for k in ANSWER_SETTINGS}
    if path.exists():
        have = {k: json.loads(path.read_text()).get(k) for k in ANSWER_SETTINGS}
        diff = [f"{k}: {have[k]!r} there, {wanted[k]!r} now" for k in ANSWER_SETTINGS if have[k] != wanted[k]]
        if diff:
            raise ValueError(
                f"{path.parent} holds answers of a run with other settings ({'; '.join(diff)}); use another --out"
            )
    write_json(path, dict(settings))


def _newest(paths: Iterable[Path], repair: Iterable[Path] = ()) -> dict[str, dict[str, Any]]:
    """Newest record per question id over some answer logs; logs in ``repair`` lose a partial last line."""
    repair = {p.resolve() for p in repair}
    latest: dict[str, dict[str, Any]] = {}
    for path in paths:
        for r in read_jsonl(path, repair=path.resolve() in repair):
            old = latest.get(r["id"])
            if old is None or r.get("t", 0) >= old.get("t", 0):
                latest[r["id"]] = r
    return latest


def _logs(out_dir: Path) -> list[Path]:
    return [out_dir / "answers.jsonl", *sorted(out_dir.glob("answers.rank*.jsonl"))]


def _complete_sets(latest: Mapping[str, dict[str, Any]], keyframes: Iterable[KeyFrame]) -> dict[str, list[dict[str, Any]]]:
    """Records of each keyframe whose questions all have one."""
    out = {}
    for kf in keyframes:
        recs = [latest.get(q.id) for q in kf.questions]
        if all(r is not None for r in recs):
            out[kf.id] = recs
    return out


def evaluate(
    dataset: DriveLMSet,
    make_runner: Callable[[], Any],
    out_dir: Path,
    *,
    settings: Mapping[str, Any],
    ranks: Ranks | None = None,
    judge: Any = None,
    progress: bool = True,
    rules: str = "official",
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, Any] | None:
    """Answer what is not done yet, merge, score; the metrics document on rank 0, None elsewhere.

    ``make_runner`` is called only when this rank has keyframes left, so a finished run rescored
    (with other ``rules``, say) never loads the model.
    """
    ranks = ranks or Ranks()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every rank checks: on machines without a shared file system each has its own folder and logs.
    _check_settings(out_dir / "run.json", settings)
    own = out_dir / ("answers.jsonl" if ranks.world_size == 1 else f"answers.rank{ranks.rank}.jsonl")
    repair = [own, out_dir / "answers.jsonl"] if ranks.is_main else [own]
    latest = _newest(_logs(out_dir), repair)

    done_here = set(_complete_sets(latest, dataset.keyframes))
    done = set().union(*ranks.all_gather(done_here))
    todo = [kf for i, kf in enumerate(dataset.keyframes) if i % ranks.world_size == ranks.rank and kf.id not in done]
    if todo:
        log = AnswerLog(own)

        def save(_: KeyFrame, recs: list[dict[str, Any]]) -> None:
            log.append(recs)
            latest.update((r["id"], r) for r in recs)

        runner = make_runner()
        desc = "eval" if ranks.world_size == 1 else f"eval rank {ranks.rank}/{ranks.world_size}"
        answer_keyframes(runner, todo, save, progress=progress and ranks.is_main, desc=desc)

    gathered = ranks.gather(_complete_sets(latest, dataset.keyframes))
    doc = _finish(dataset, gathered, out_dir, settings, judge, rules, resamples) if ranks.is_main else None
    ranks.barrier()
    if not ranks.is_main:
        # Rank 0's answers.jsonl holds every answer now; a log on a machine of its own is done with.
        own.unlink(missing_ok=True)
    return doc


def _finish(
    dataset: DriveLMSet,
    gathered: list[dict[str, list[dict[str, Any]]]],
    out_dir: Path,
    settings: Mapping[str, Any],
    judge: Any,
    rules: str = "official",
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    for kf in dataset.keyframes:
        candidates = [sets[kf.id] for sets in gathered if kf.id in sets]
        if not candidates:
            raise RuntimeError(f"no rank returned answers for keyframe {kf.id}")
        # Ranks that share a file system all read the old logs; the newest answers of a keyframe win.
        records.extend(max(candidates, key=lambda recs: min((r.get("t", 0) for r in recs), default=0)))

    # Fold the ranks' answers into answers.jsonl (what it lacks), then drop the rank logs it now holds.
    in_main = _newest([out_dir / "answers.jsonl"])
    AnswerLog(out_dir / "answers.jsonl").append(r for r in records if in_main.get(r["id"]) != r)
    for shard in out_dir.glob("answers.rank*.jsonl"):
        shard.unlink()

    entries = ({"id": r["id"], "question": r["question"], "answer": r["answer"]} for r in records)
    write_submission(out_dir / "submission.json", entries)
    quality = score(dataset.questions(), {r["id"]: r["answer"] for r in records}, judge, rules=rules, resamples=resamples)
    stats = run_stats(records)
    run = {**settings, "questions": len(records), "keyframes": len(dataset)}
    if "model" in settings:
        run["model_weights"] = weights_info(settings["model"])
    doc = metrics_document(quality, stats, run)
    doc["visual_tokens"] = stats["visual_tokens"]
    write_json(out_dir / "metrics.json", doc)
    return doc


# ---------------------------------------------------------------- command line


def runner_factory(model: str, kwargs: Mapping[str, Any]) -> Callable[[], Any]:
    def make() -> Any:
        from prune2drive_ros.vlm import VLMRunner

        return VLMRunner.from_pretrained(model, **kwargs)

    return make


def _evaluate_args(args: argparse.Namespace, judge: Any, ranks: Ranks, dataset: DriveLMSet) -> dict[str, Any] | None:
    kwargs = runner_settings(args)
    if kwargs["device"] == "auto":
        kwargs["device"] = ranks.default_device() or "auto"
    settings = {
        "model": args.model,
        **kwargs,
        "drivelm": str(args.drivelm),
        "limit": args.limit,
        "world_size": ranks.world_size,
    }
    doc = evaluate(
        dataset,
        runner_factory(args.model, kwargs),
        args.out,
        settings=settings,
        ranks=ranks,
        judge=judge,
        progress=not args.no_progress,
        rules=args.rules,
        resamples=args.bootstrap,
    )
    if doc is not None:
        from prune2drive_ros.eval.run import print_summary

        print_summary(doc, args.out / "metrics.json")
    return doc


def _dataset(args: argparse.Namespace) -> DriveLMSet:
    dataset = load_drivelm(args.drivelm, args.dataroot).limit(args.limit)
    dataset.check_images()  # before the model loads: a wrong --dataroot fails in seconds, not mid-run
    return dataset


def evaluate_cli(args: argparse.Namespace, judge: Any = None) -> int:
    ranks = Ranks.from_env(args.dist_timeout_min)
    try:
        _evaluate_args(args, judge, ranks, _dataset(args))
    finally:
        ranks.close()
    return 0


def compare_runs(args: argparse.Namespace) -> list[tuple[str, argparse.Namespace]]:
    """(folder name, settings) of every method x retain ratio that ``--compare`` asks for.

    ``none`` runs once (all tokens). With ``--view-ratios`` each pruning method runs once with those
    per-camera ratios instead of the ``--compare-retain`` list. Each method runs at the layer that
    ``eval --pruning METHOD`` uses (``settings.prune_layer_for`` unless ``--prune-layer`` is given),
    so a method's name means one setting in both.
    """
    methods = [m.strip() for m in args.compare.split(",") if m.strip()]
    retains = [float(r) for r in str(args.compare_retain).split(",") if r.strip()]
    runs = []
    for method in methods:
        if method == "none":
            settings = [("none", 1.0, None)]
        elif args.view_ratios:
            settings = [(f"{method}-adaptive", args.retain, args.view_ratios)]
        else:
            settings = [(f"{method}-r{r:g}", r, None) for r in retains]
        for name, retain, ratios in settings:
            sub = argparse.Namespace(**vars(args))
            sub.pruning, sub.retain, sub.view_ratios, sub.out, sub.compare = method, retain, ratios, args.out / name, None
            runs.append((name, sub))
    return runs


def compare_cli(args: argparse.Namespace, judge: Any = None) -> int:
    """Evaluate every method into DIR/<name>/ (each resumable), then write the comparison into DIR."""
    runs = compare_runs(args)
    ranks = Ranks.from_env(args.dist_timeout_min)
    try:
        dataset = _dataset(args)
        for name, sub in runs:
            if ranks.is_main:
                print(f"== {name}")
            _evaluate_args(sub, judge, ranks, dataset)
        if ranks.is_main:
            from prune2drive_ros.eval.report import write_report

            table, plot = write_report([sub.out for _, sub in runs], args.out)
            print(table.read_text(encoding="utf-8"))
            print(f"wrote {table} and {plot}")
    finally:
        ranks.close()
    return 0
