"""DriveLM metric functions: accuracy, BLEU / ROUGE-L / CIDEr, object match, language and final score.

Scales follow the DriveLM challenge: accuracy in [0, 1], BLEU and ROUGE-L in [0, 1], CIDEr in
[0, 10], match and GPT in [0, 100], language score L and the final score in [0, 1].

BLEU, ROUGE-L and CIDEr come from pycocoevalcap's scorers (pure Python). Its PTB tokenizer needs
Java, so :func:`tokenize` replaces it: lowercase, words and numbers kept (``1088.3`` stays one
token), punctuation dropped, which is what the PTB tokenizer plus pycocoevalcap's punctuation filter
do to DriveLM's plain sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

OPTION_LETTERS = "ABCD"
MATCH_THRESHOLD_PX = 16.0
"""A predicted object point matches a ground-truth point closer than this (L1 pixels, as the challenge)."""

_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W_]+")
_POINT = re.compile(r"<\s*([^,<>]*?)\s*,\s*(CAM_[A-Z_]+)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*>")
# A leading option letter: "B", "B.", "(B)", "B)", "B: text". Not "A car ...", where A is a word.
_LEADING_LETTER = re.compile(r"^\s*[\(\[]?([A-D])(?:[\)\]]|[.:,](?!\d)|\s*$)")
_STATED_LETTER = re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)\s*)?:?\s*[\(\[]?([A-D])\b")
_QUESTION_OPTION = re.compile(r"(?:^|\s)([A-D])\.\s+(.+?)(?=\s+[A-D]\.\s|$)", re.S)


def tokenize(text: str) -> list[str]:
    """Lowercase word/number tokens; the Java-free stand-in for the PTB tokenizer."""
    return _TOKEN.findall(text.lower())


# ---------------------------------------------------------------- accuracy


def ground_truth_letter(answer: str | None) -> str | None:
    """The option letter if the ground truth is exactly one ("B", "B.", "(B)"), else None."""
    if answer is None:
        return None
    s = answer.strip().rstrip(".").strip()
    if len(s) == 3 and s[0] in "([" and s[2] in ")]":
        s = s[1]
    return s if len(s) == 1 and s in OPTION_LETTERS else None


def question_options(question: str) -> dict[str, str]:
    """``{"A": text, ...}`` parsed from "... A. text B. text ..." in a multiple-choice question."""
    return {letter: text.strip() for letter, text in _QUESTION_OPTION.findall(question)}


def parse_option_letter(prediction: str, question: str | None = None) -> str | None:
    """The option a free-form prediction picks, or None.

    In order: a leading letter ("B", "(B) ...", "B. The ego ..."), a stated one ("The answer is B"),
    and, given the question, a prediction that repeats exactly one option's text.
    """
    m = _LEADING_LETTER.match(prediction) or _STATED_LETTER.search(prediction)
    if m:
        return m.group(1)
    if question:
        said = tokenize(prediction)
        hits = [letter for letter, text in question_options(question).items() if said and tokenize(text) == said]
        if len(hits) == 1:
            return hits[0]
    return None


def accuracy(pairs: Sequence[tuple[str, str]], questions: Sequence[str] | None = None) -> float | None:
    """Exact-match accuracy over (prediction, ground-truth letter) pairs; None when there are none."""
    if not pairs:
        return None
    hits = 0
    for i, (pred, gt) in enumerate(pairs):
        letter = parse_option_letter(pred, questions[i] if questions else None)
        hits += int(letter is not None and letter == ground_truth_letter(gt))
    return hits / len(pairs)


# ---------------------------------------------------------------- language


def language_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float] | None:
    """Corpus BLEU-1..4, mean ROUGE-L and CIDEr-D (pycocoevalcap) over aligned lists; None if empty.

    CIDEr weights n-grams by their document frequency over the references, so it depends on the
    whole corpus: a corpus of one question always scores 0 (every n-gram is in every document).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return None
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    # The scorers split on single spaces; joined tokens give them exactly our tokenization.
    res = {i: [" ".join(tokenize(p))] for i, p in enumerate(predictions)}
    gts = {i: [" ".join(tokenize(r))] for i, r in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(rouge)
    out["cider"] = float(cider)
    return out


def language_score(m: dict[str, float | None]) -> float | None:
    """L = (B1 + B2 + B3 + B4)/12 + ROUGE-L/3 + CIDEr/30 (DESIGN.md §3); 1.0 at best."""
    keys = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider")
    if any(m.get(k) is None for k in keys):
        return None
    return (m["bleu_1"] + m["bleu_2"] + m["bleu_3"] + m["bleu_4"]) / 12 + m["rouge_l"] / 3 + m["cider"] / 30


# ---------------------------------------------------------------- object match


@dataclass(frozen=True)
class Point:
    object_id: str
    camera: str
    x: float
    y: float


def parse_points(text: str) -> list[Point]:
    """All ``<c1,CAM_BACK,1088.3,497.5>`` object references in a text, in order."""
    return [Point(o, cam, float(x), float(y)) for o, cam, x, y in _POINT.findall(text)]


def match_f1(prediction: str, ground_truth: str, threshold: float = MATCH_THRESHOLD_PX) -> float:
    """F1 in [0, 1] between the object points of a prediction and of the ground truth.

    Greedy and one-to-one, as the challenge's evaluator: each predicted point, in order, takes the
    nearest still-unmatched ground-truth point of the same camera and counts as a true positive
    when their L1 pixel distance is below ``threshold``. Object ids are ignored (models renumber).
    Edge cases: no points on either side is 1.0 (nothing to find, nothing claimed); points on only
    one side is 0.0.
    """
    preds, gts = parse_points(prediction), parse_points(ground_truth)
    if not preds and not gts:
        return 1.0
    if not preds or not gts:
        return 0.0
    free = list(gts)
    tp = 0
    for p in preds:
        best, best_d = None, float("inf")
        for g in free:
            if g.camera == p.camera:
                d = abs(p.x - g.x) + abs(p.y - g.y)
                if d < best_d:
                    best, best_d = g, d
        if best is not None and best_d < threshold:
            free.remove(best)
            tp += 1
    if tp == 0:
        return 0.0
    precision, recall = tp / len(preds), tp / len(gts)
    return 2 * precision * recall / (precision + recall)


def match_score(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Mean object-match F1 x 100 over (prediction, ground truth) pairs; None when there are none."""
    if not pairs:
        return None
    return 100.0 * sum(match_f1(p, g) for p, g in pairs) / len(pairs)


# ---------------------------------------------------------------- final score

FINAL_WEIGHTS = (
    ("gpt", 0.4, "GPT/100"),
    ("language_score", 0.2, "L"),
    ("match", 0.2, "Match/100"),
    ("accuracy", 0.2, "Acc"),
)


def final_score(metrics: dict[str, float | None]) -> tuple[float | None, bool, str]:
    """(score, partial, formula): 0.4*GPT/100 + 0.2*L + 0.2*Match/100 + 0.2*Acc.

    A part that is None (no judge, or no question of that kind) is left out, the score is marked
    partial and the formula names only the parts it sums; nothing is rescaled, so a partial score
    is a lower bound of the full one.
    """
    total, terms = 0.0, []
    for key, weight, label in FINAL_WEIGHTS:
        value = metrics.get(key)
        if value is None:
            continue
        total += weight * (value / 100.0 if key in ("gpt", "match") else value)
        terms.append(f"{weight}*{label}")
    partial = len(terms) < len(FINAL_WEIGHTS)
    return (total if terms else None), partial, " + ".join(terms)
