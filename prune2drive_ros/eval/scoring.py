"""Score answers to DriveLM questions: which metric sees which question, and the metrics.json dict.

A question's metrics come from the challenge's tags when the file has them (0 accuracy, 1 GPT,
2 language, 3 match). Release files have no tags, so they are derived from the ground truth:
a single option letter is a multiple-choice question (accuracy); any other answer counts for the
language metrics and the GPT judge, and for match too when it refers to objects ``<c,CAM,x,y>``.
Questions without a ground-truth answer are not scored. A question with no submitted answer is
scored as an empty answer and counted in ``counts.missing_answers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prune2drive_ros.data.drivelm import Question
from prune2drive_ros.eval import metrics as M
from prune2drive_ros.eval.judge import Judge

TAG_KINDS = {0: "accuracy", 1: "gpt", 2: "language", 3: "match"}

QUALITY_KEYS = (
    "accuracy",
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "rouge_l",
    "cider",
    "match",
    "language_score",
    "gpt",
    "final_score",
)
RUN_KEYS = ("flops_ratio", "latency_ms", "kept_per_view")
"""Filled by a model run; null when only a submission is scored."""


def question_kinds(q: Question) -> frozenset[str]:
    if q.answer is None or not q.answer.strip():
        return frozenset()
    if q.tags is not None:
        return frozenset(TAG_KINDS[t] for t in q.tags if t in TAG_KINDS)
    if M.ground_truth_letter(q.answer):
        return frozenset({"accuracy"})
    kinds = {"language", "gpt"}
    if M.parse_points(q.answer):
        kinds.add("match")
    return frozenset(kinds)


def score(questions: Iterable[Question], answers: Mapping[str, str], judge: Judge | None = None) -> dict[str, Any]:
    """The quality part of metrics.json (QUALITY_KEYS, the final-score labels and counts)."""
    questions = list(questions)
    acc, lang, match, gpt = [], [], [], []
    missing = 0
    for q in questions:
        kinds = question_kinds(q)
        if not kinds:
            continue
        pred = answers.get(q.id)
        if pred is None:
            missing += 1
            pred = ""
        if "accuracy" in kinds:
            acc.append((pred, q.answer, q.question))
        if "language" in kinds:
            lang.append((pred, q.answer))
        if "match" in kinds:
            match.append((pred, q.answer))
        if "gpt" in kinds:
            gpt.append((q.question, pred, q.answer))

    out: dict[str, Any] = dict.fromkeys(QUALITY_KEYS)
    out["accuracy"] = M.accuracy([(p, g) for p, g, _ in acc], [qt for _, _, qt in acc])
    out.update(M.language_metrics([p for p, _ in lang], [g for _, g in lang]) or {})
    out["language_score"] = M.language_score(out)
    out["match"] = M.match_score(match)
    gpt_failed = 0
    if judge is not None and gpt:
        ratings = judge.rate_all(gpt)
        good = [r for r in ratings if r is not None]
        gpt_failed = len(ratings) - len(good)
        out["gpt"] = sum(good) / len(good) if good else None
    out["final_score"], out["final_score_partial"], out["final_score_formula"] = M.final_score(out)
    known = {q.id for q in questions}
    out["counts"] = {
        "questions": len(questions),
        "scored": sum(1 for q in questions if question_kinds(q)),
        "missing_answers": missing,
        "unknown_answer_ids": sum(1 for k in answers if k not in known),
        "accuracy": len(acc),
        "language": len(lang),
        "match": len(match),
        "gpt": len(gpt) if judge is not None else 0,
        "gpt_failed": gpt_failed,
    }
    return out


def metrics_document(quality: Mapping[str, Any], run_stats: Mapping[str, Any] | None = None, run: Any = None) -> dict:
    """metrics.json: quality keys first, then run statistics (null without a model run), then the run's settings."""
    doc = dict(quality)
    for key in RUN_KEYS:
        doc[key] = (run_stats or {}).get(key)
    if run is not None:
        doc["run"] = run
    return doc
