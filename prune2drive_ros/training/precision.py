"""``prune2drive study OUT --weights int8,int4``: what quantized weights cost in quality, paired.

Every precision answers the same held-out test-bed questions with the same pruning (T-FPS at the
first ``--retains`` ratio); each is compared with the model's own dtype question by question: the
difference in multiple-choice accuracy (and in match F1) and its 95% interval from a paired
bootstrap that resamples whole keyframes (the same draws for both runs), so the spread the questions
share cancels and a keyframe's correlated questions stay together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prune2drive_ros.eval.bootstrap import DEFAULT_SEED

BASELINE = "auto"


def per_question(questions: Sequence, answers: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per-question scores under the test bed's lenient rules: {"accuracy": {id: 0/1}, "match": {id: F1}}."""
    from prune2drive_ros.eval import metrics as M
    from prune2drive_ros.eval.scoring import question_kinds

    out: dict[str, dict[str, float]] = {"accuracy": {}, "match": {}}
    for q in questions:
        kinds = question_kinds(q)
        pred = answers.get(q.id, "")
        if "accuracy" in kinds:
            out["accuracy"][q.id] = float(M.accuracy_lenient([(pred, q.answer)], [q.question]))
        if "match" in kinds:
            out["match"][q.id] = 100.0 * M.match_f1_lenient(pred, q.answer)
    return out


def keyframe_of(question_id: str) -> str:
    """``<scene>_<sample>_<n>`` -> ``<scene>_<sample>``: the questions that share one set of views."""
    return question_id.rsplit("_", 1)[0]


def paired_difference(base: dict[str, float], other: dict[str, float], resamples: int,
                      seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Mean of ``other - base`` over the questions both scored, with a paired bootstrap interval that resamples
    whole keyframes (a keyframe's questions share its views, so they are not independent)."""
    from prune2drive_ros.training.study import resample_counts

    ids = sorted(set(base) & set(other))
    if not ids:
        return {"questions": 0, "difference": None, "ci95": None}
    diff = np.array([other[i] - base[i] for i in ids])
    frames = {key: n for n, key in enumerate(sorted({keyframe_of(i) for i in ids}))}
    frame = np.array([frames[keyframe_of(i)] for i in ids])
    sums, counts = np.bincount(frame, weights=diff, minlength=len(frames)), np.bincount(frame, minlength=len(frames))
    low = high = None
    if resamples:
        draws = resample_counts(len(frames), resamples, seed)
        low, high = np.percentile((draws @ sums) / np.maximum(draws @ counts, 1), [2.5, 97.5]).tolist()
    return {"questions": len(ids), "keyframes": len(frames), "difference": float(diff.mean()), "ci95": [low, high],
            "changed": int((diff != 0).sum())}


def precision_study(out: Path, model: str, weights: Sequence[str], heldout: Path, retain: float, resamples: int,
                    runner: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
    """Each precision in ``weights`` and the baseline evaluated with the engine on ``heldout``; the table."""
    from prune2drive_ros.data.drivelm import load_drivelm
    from prune2drive_ros.eval.engine import evaluate_model
    from prune2drive_ros.eval.submission import answers_by_id, read_submission

    drivelm = heldout / "drivelm.json"
    dataset = load_drivelm(drivelm)
    questions = list(dataset.questions())
    scores = {}
    for w in [BASELINE, *[w for w in weights if w != BASELINE]]:
        run_dir = out / "precision" / f"{w}-tfps-r{retain:g}"
        settings = {**runner, "pruning": "tfps", "retain": retain, "weights": w}
        evaluate_model(dataset, model, settings, run_dir, drivelm=str(drivelm), rules="lenient", resamples=0,
                       progress=progress)
        scores[w] = per_question(questions, answers_by_id(read_submission(run_dir / "submission.json")))
    rows = {}
    for w in weights:
        if w == BASELINE:
            continue
        rows[w] = {k: paired_difference(scores[BASELINE][k], scores[w][k], resamples) for k in ("accuracy", "match")}
        rows[w]["accuracy_points"] = 100.0 * np.mean(list(scores[w]["accuracy"].values()))
    base_acc = 100.0 * np.mean(list(scores[BASELINE]["accuracy"].values()))
    summary = {"model": model, "retain": retain, "pruning": "tfps", "resamples": resamples,
               "baseline_accuracy": base_acc, "precisions": rows}
    (out / "precision.json").write_text(json.dumps(summary, indent=1))
    lines = [f"Quantized weights vs the model's own dtype, T-FPS at retain {retain:g}, {len(questions)} held-out "
             f"test-bed questions; paired bootstrap ({resamples} resamples of whole keyframes) over the questions both "
             "runs scored.", "",
             "| weights | MC accuracy | accuracy diff (points) [95% CI] | match F1 diff [95% CI] | MC flips |",
             "|---|---|---|---|---|", f"| {BASELINE} | {base_acc:.1f} | - | - | - |"]
    for w, row in rows.items():
        acc, match = row["accuracy"], row["match"]
        lines.append(f"| {w} | {row['accuracy_points']:.1f} | {100 * acc['difference']:+.2f} "
                     f"[{100 * acc['ci95'][0]:+.2f}, {100 * acc['ci95'][1]:+.2f}] | "
                     f"{_fmt(match)} | {acc['changed']}/{acc['questions']} |")
    (out / "precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def _fmt(diff: dict[str, Any]) -> str:
    if diff["difference"] is None:
        return "-"
    return f"{diff['difference']:+.2f} [{diff['ci95'][0]:+.2f}, {diff['ci95'][1]:+.2f}]"
