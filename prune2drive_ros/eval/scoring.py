"""Score answers to DriveLM questions: which metric sees which question, and the metrics.json dict.

A question's metrics come from the challenge's tags when the file has them (0 accuracy, 1 GPT,
2 language, 3 match). Release files have no tags, so they are derived from the ground truth:
a single option letter is a multiple-choice question (accuracy); any other answer counts for the
language metrics and the GPT judge, and for match too when it refers to objects ``<c,CAM,x,y>``.
Questions without a ground-truth answer are not scored. A question with no submitted answer is
scored as an empty answer and counted in ``counts.missing_answers``.

Two rule sets (``rules``):

- ``official`` (default), DriveLM's ``challenge/evaluation.py``: accuracy is exact string equality;
  points are every decimal number pair of the text and match across cameras; Match is the mean of
  point F1 x 100 and the judge's score on the match questions; and in each key frame, a question
  that names coordinates (pairs of decimal numbers in its text) is scored only when every named point is
  one the frame's first answer matched. Scores are comparable with the leaderboard's.
- ``lenient``, this project's earlier reading: a free-form answer that picks the right option
  counts (``A. Going ahead.``), points match within their own camera, Match is point F1 alone, and
  every question is scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prune2drive_ros.data.drivelm import Question
from prune2drive_ros.eval import metrics as M
from prune2drive_ros.eval.bootstrap import DEFAULT_SEED, PerQuestion, confidence_intervals
from prune2drive_ros.eval.judge import Judge

TAG_KINDS = {0: "accuracy", 1: "gpt", 2: "language", 3: "match"}
RULES = M.RULES

QUALITY_KEYS = (
    "accuracy",
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "rouge_l",
    "cider",
    "match",
    "match_f1",
    "match_gpt",
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


def _frame_of(question_id: str) -> str:
    """``<scene>_<sample>`` of ``<scene>_<sample>_<n>``; ids of another form are frames of their own."""
    head, sep, tail = question_id.rpartition("_")
    return head if sep and tail.isdigit() else question_id


def select_official(questions: list[Question], answers: Mapping[str, str]) -> tuple[list[Question], int]:
    """The questions the challenge scores, and how many it skips.

    Per key frame, in question order: the first question is always scored, and the ground-truth
    points its answer matched (:func:`metrics.match_official`) are the frame's graph. A later
    question whose text names coordinates is scored only when every named point is in the graph;
    one that names none is always scored.
    """
    graphs: dict[str, list[tuple[float, float]]] = {}
    kept, skipped = [], 0
    for q in questions:
        frame = _frame_of(q.id)
        if frame not in graphs:
            graphs[frame] = M.match_official(answers.get(q.id) or "", q.answer or "")[0]
            kept.append(q)
        elif all(point in graphs[frame] for point in M.decimal_pairs(q.question)):
            kept.append(q)
        else:
            skipped += int(bool(question_kinds(q)))
    return kept, skipped


def score(
    questions: Iterable[Question],
    answers: Mapping[str, str],
    judge: Judge | None = None,
    *,
    rules: str = "official",
    resamples: int = 0,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """The quality part of metrics.json: QUALITY_KEYS, the final-score labels, ``ci95``, counts, warnings.

    ``resamples`` bootstrap resamples of the scored questions give ``ci95``: opt in (``eval`` asks for
    ``--bootstrap``, 1000 by default); callers that resample questions themselves leave it at 0. A judge
    that fails on any question is reported in ``warnings`` and leaves the GPT terms out of the
    final score, which is then partial: a final score is never averaged over the survivors.
    """
    if rules not in RULES:
        raise ValueError(f"rules must be one of {', '.join(RULES)}, got {rules!r}")
    questions = list(questions)
    if rules == "official":
        chosen, skipped = select_official(questions, answers)
    else:
        chosen, skipped = questions, 0
    f1 = M.match_f1_official if rules == "official" else M.match_f1_lenient

    stats = PerQuestion()
    lang, rated = [], []
    gpt_idx, match_gpt_idx = [], []
    missing = 0
    for q in chosen:
        kinds = question_kinds(q)
        if not kinds:
            continue
        i = stats.questions
        stats.questions += 1
        pred = answers.get(q.id)
        if pred is None:
            missing += 1
            pred = ""
        if "accuracy" in kinds:
            hit = pred == q.answer if rules == "official" else M.accuracy_lenient([(pred, q.answer)], [q.question])
            stats.accuracy[0].append(i)
            stats.accuracy[1].append(float(hit))
        if "language" in kinds:
            lang.append((pred, q.answer))
            stats.language[0].append(i)
        if "match" in kinds:
            stats.match_f1[0].append(i)
            stats.match_f1[1].append(100.0 * f1(pred, q.answer))
        judged = "gpt" in kinds or (rules == "official" and "match" in kinds)
        if judged:
            rated.append((q.question, pred, q.answer))
            if "gpt" in kinds:
                gpt_idx.append((i, len(rated) - 1))
            if rules == "official" and "match" in kinds:
                match_gpt_idx.append((i, len(rated) - 1))

    out: dict[str, Any] = dict.fromkeys(QUALITY_KEYS)
    out["rules"] = rules
    out["accuracy"] = _mean(stats.accuracy[1])
    detail = M.language_details([p for p, _ in lang], [g for _, g in lang])
    if detail is not None:
        out.update(detail.corpus)
        stats.language = (stats.language[0], detail)
    out["language_score"] = M.language_score(out)
    out["match_f1"] = _mean(stats.match_f1[1])

    ratings = judge.rate_all(rated) if judge is not None and rated else []
    failed = sum(r is None for r in ratings)
    for idx, target in ((gpt_idx, stats.gpt), (match_gpt_idx, stats.match_gpt)):
        for i, j in idx:
            if ratings and ratings[j] is not None:
                target[0].append(i)
                target[1].append(ratings[j])
    out["gpt"] = _mean(stats.gpt[1])
    out["match_gpt"] = _mean(stats.match_gpt[1])
    # A part of the judge's score counts only when every question of it was rated.
    uses = {
        "gpt": judge is not None and bool(gpt_idx) and len(stats.gpt[1]) == len(gpt_idx),
        "match_gpt": judge is not None and bool(match_gpt_idx) and len(stats.match_gpt[1]) == len(match_gpt_idx),
    }
    if rules == "lenient":
        out["match"] = out["match_f1"]
    elif uses["match_gpt"] and out["match_f1"] is not None:
        out["match"] = (out["match_f1"] + out["match_gpt"]) / 2
    final_input = {**out, "gpt": out["gpt"] if uses["gpt"] else None}
    out["final_score"], out["final_score_partial"], out["final_score_formula"] = M.final_score(final_input, rules)
    _, missing_terms = M.final_terms(final_input, rules)
    out["final_score_missing"] = missing_terms
    out["ci95"] = confidence_intervals(stats, rules, uses, resamples, seed)
    out["bootstrap"] = {"resamples": resamples, "seed": seed, "unit": "question", "level": 0.95}

    warnings = []
    if judge is not None and failed:
        warnings.append(
            f"GPT judge failed on {failed} of {len(rated)} questions: the final score leaves the GPT terms out "
            "and is partial (rerun with a working --judge to complete it)"
        )
    out["warnings"] = warnings
    known = {q.id for q in questions}
    out["counts"] = {
        "questions": len(questions),
        "scored": stats.questions,
        "skipped_unmatched": skipped,
        "missing_answers": missing,
        "unknown_answer_ids": sum(1 for k in answers if k not in known),
        "accuracy": len(stats.accuracy[1]),
        "language": len(lang),
        "match": len(stats.match_f1[1]),
        "gpt": len(rated) if judge is not None else 0,
        "gpt_failed": failed,
    }
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def metrics_document(quality: Mapping[str, Any], run_stats: Mapping[str, Any] | None = None, run: Any = None) -> dict:
    """metrics.json: quality keys first, then run statistics (null without a model run), then the run's settings."""
    doc = dict(quality)
    for key in RUN_KEYS:
        doc[key] = (run_stats or {}).get(key)
    if run is not None:
        doc["run"] = run
    return doc
