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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def accuracy_lenient(pairs: Sequence[tuple[str, str]], questions: Sequence[str] | None = None) -> float | None:
    """Lenient accuracy: the option a free-form prediction picks (:func:`parse_option_letter`) equals the
    ground-truth letter. Accepts ``A. Going ahead.`` for ``A``; None when there are no pairs."""
    if not pairs:
        return None
    hits = 0
    for i, (pred, gt) in enumerate(pairs):
        letter = parse_option_letter(pred, questions[i] if questions else None)
        hits += int(letter is not None and letter == ground_truth_letter(gt))
    return hits / len(pairs)


def accuracy_exact(pairs: Sequence[tuple[str, str]]) -> float | None:
    """The challenge's accuracy: the prediction string equals the ground truth exactly (no stripping,
    no case folding). None when there are no pairs."""
    if not pairs:
        return None
    return sum(1.0 for pred, gt in pairs if pred == gt) / len(pairs)


# ---------------------------------------------------------------- language


def language_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float] | None:
    """Corpus BLEU-1..4, mean ROUGE-L and CIDEr-D (pycocoevalcap) over aligned lists; None if empty.

    CIDEr weights n-grams by their document frequency over the references, so it depends on the
    whole corpus: a corpus of one question always scores 0 (every n-gram is in every document).
    """
    detail = language_details(predictions, references)
    return None if detail is None else detail.corpus


@dataclass(frozen=True)
class LanguageDetail:
    """Corpus scores plus what a resample of the questions needs to score again without pycocoevalcap."""

    corpus: dict[str, float]
    rouge_l: list[float]
    """Per question; the corpus ROUGE-L is their mean."""
    cider: list[float]
    """Per question CIDEr-D with document frequencies of the whole corpus; the corpus CIDEr is their mean."""
    bleu_counts: list[list[int]]
    """Per question [hypothesis length, reference length, guessed 1..4-grams, clipped matches 1..4]."""


def language_details(predictions: Sequence[str], references: Sequence[str]) -> LanguageDetail | None:
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
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    out = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(rouge)
    out["cider"] = float(cider)
    counts = [_bleu_counts(res[i][0].split(), gts[i][0].split()) for i in range(len(predictions))]
    return LanguageDetail(out, [float(v) for v in rouge_each], [float(v) for v in cider_each], counts)


def _bleu_counts(hyp: list[str], ref: list[str], n: int = 4) -> list[int]:
    guessed, correct = [], []
    for k in range(1, n + 1):
        h = Counter(tuple(hyp[i : i + k]) for i in range(len(hyp) - k + 1))
        r = Counter(tuple(ref[i : i + k]) for i in range(len(ref) - k + 1))
        guessed.append(max(0, len(hyp) - k + 1))
        correct.append(sum(min(c, r[g]) for g, c in h.items()))
    return [len(hyp), len(ref), *guessed, *correct]


def bleu_from_counts(totals: Any) -> Any:
    """Corpus BLEU-1..4 from summed :attr:`LanguageDetail.bleu_counts` (shape ``[..., 10]`` -> ``[..., 4]``).

    The arithmetic of pycocoevalcap's scorer for one reference per question (its 1e-15 and 1e-9
    guards included), vectorized so that thousands of resamples cost one array expression.
    """
    import numpy as np

    t = np.asarray(totals, dtype=float)
    tiny, small = 1e-15, 1e-9
    precision = (t[..., 6:10] + tiny) / (t[..., 2:6] + small)
    bleu = np.cumprod(precision, axis=-1) ** (1.0 / np.arange(1, 5))
    ratio = (t[..., 0] + tiny) / (t[..., 1] + small)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    return bleu * brevity[..., None]


def language_score(m: dict[str, float | None]) -> float | None:
    """L = (B1 + B2 + B3 + B4)/12 + ROUGE-L/3 + CIDEr/30 (docs/pruning.md); 1.0 at best."""
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


def match_f1_lenient(prediction: str, ground_truth: str, threshold: float = MATCH_THRESHOLD_PX) -> float:
    """Lenient F1 in [0, 1] between the ``<c,CAM,x,y>`` tags of a prediction and of the ground truth.

    Greedy and one-to-one: each predicted point, in order, takes the nearest still-unmatched
    ground-truth point *of the same camera* and counts as a true positive when their L1 pixel
    distance is below ``threshold``. Object ids are ignored (models renumber). No points on either
    side is 1.0 (nothing to find, nothing claimed); points on only one side is 0.0.
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


match_f1 = match_f1_lenient
"""The lenient F1 under its earlier name, for callers written before the official rules."""

_DECIMAL = re.compile(r"\d+\.\d+")
OFFICIAL_EPS = 1e-8
"""The challenge adds this to every denominator of precision, recall and F1; so do we, to agree digit for digit."""


def decimal_pairs(text: str) -> list[tuple[float, float]]:
    """Object coordinates as the challenge reads them: every unsigned decimal number (``\\d+\\.\\d+``)
    anywhere in the text, taken two at a time as (x, y); a trailing odd number is dropped.

    Cameras, object ids, signs and integers without a decimal point are not seen, so
    ``<c1,CAM_BACK,1088.3,497.5>`` and ``at 1088.3 497.5`` are the same point.
    """
    nums = [float(v) for v in _DECIMAL.findall(text)]
    return list(zip(nums[0::2], nums[1::2]))


def match_official(
    prediction: str, ground_truth: str, threshold: float = MATCH_THRESHOLD_PX
) -> tuple[list[tuple[float, float]], float]:
    """(matched ground-truth points, F1 in [0, 1]) under the challenge's rules.

    Each predicted point, in order, takes the nearest remaining ground-truth point of any camera
    (L1 distance; the first on a tie) and is a true positive when that distance is below
    ``threshold``, which removes the point; otherwise it is a false positive. Unmatched ground-truth
    points are false negatives. Precision, recall and F1 carry :data:`OFFICIAL_EPS` in their
    denominators, so a perfect answer scores just under 1 and no points on either side scores 0.
    """
    preds, free = decimal_pairs(prediction), decimal_pairs(ground_truth)
    total = len(free)
    matched: list[tuple[float, float]] = []
    for px, py in preds:
        best, best_d = None, float("inf")
        for i, (gx, gy) in enumerate(free):
            d = abs(px - gx) + abs(py - gy)
            if d < best_d:
                best, best_d = i, d
        if best is not None and best_d < threshold:
            matched.append(free.pop(best))
    tp, fp, fn = len(matched), len(preds) - len(matched), total - len(matched)
    precision = tp / (tp + fp + OFFICIAL_EPS)
    recall = tp / (tp + fn + OFFICIAL_EPS)
    return matched, 2 * precision * recall / (precision + recall + OFFICIAL_EPS)


def match_f1_official(prediction: str, ground_truth: str, threshold: float = MATCH_THRESHOLD_PX) -> float:
    """The challenge's point F1 in [0, 1] (:func:`match_official`)."""
    return match_official(prediction, ground_truth, threshold)[1]


def match_score(pairs: Sequence[tuple[str, str]], f1: Callable[[str, str], float] = match_f1_official) -> float | None:
    """Mean point F1 x 100 over (prediction, ground truth) pairs; None when there are none."""
    if not pairs:
        return None
    return 100.0 * sum(f1(p, g) for p, g in pairs) / len(pairs)


# ---------------------------------------------------------------- final score

RULES = ("official", "lenient")
"""``official``: DriveLM's ``challenge/evaluation.py``; ``lenient``: this project's earlier, forgiving reading."""


def final_terms(metrics: Mapping[str, Any], rules: str = "official") -> tuple[list[tuple[float, str, float]], list[str]]:
    """The final score's terms that can be computed, as (weight, label, value in [0, 1]), and the
    labels of those that cannot.

    Both rules weigh 0.4*GPT/100 + 0.2*L + 0.2*Match/100 + 0.2*Acc. Under the official rules Match
    is the mean of point F1 x 100 and the judge's score on the match questions, so without a
    complete judge its F1 half stands alone as 0.1*MatchF1/100 and 0.1*MatchGPT/100 is missing.
    Under the lenient rules Match is the (same-camera) point F1 alone.
    """
    if rules not in RULES:
        raise ValueError(f"rules must be one of {', '.join(RULES)}, got {rules!r}")
    terms: list[tuple[float, str, float]] = []
    missing: list[str] = []

    def add(weight: float, label: str, value: float | None, scale: float = 1.0) -> None:
        if value is None:
            missing.append(f"{weight:g}*{label}")
        else:
            terms.append((weight, label, value / scale))

    add(0.4, "GPT/100", metrics.get("gpt"), 100.0)
    add(0.2, "L", metrics.get("language_score"))
    if rules == "lenient" or metrics.get("match") is not None:
        add(0.2, "Match/100", metrics.get("match"), 100.0)
    else:
        add(0.1, "MatchF1/100", metrics.get("match_f1"), 100.0)
        missing.append("0.1*MatchGPT/100")
    add(0.2, "Acc", metrics.get("accuracy"))
    return terms, missing


def final_score(metrics: Mapping[str, Any], rules: str = "official") -> tuple[float | None, bool, str]:
    """(score, partial, formula) with the challenge's weights (:func:`final_terms`).

    A part that cannot be computed (no judge, a judge that failed on some question, no question of
    that kind) is left out, the score is marked partial and the formula names only the parts it
    sums; nothing is rescaled, so a partial score is a lower bound of the full one.
    """
    terms, missing = final_terms(metrics, rules)
    total = sum(weight * value for weight, _, value in terms)
    formula = " + ".join(f"{weight:g}*{label}" for weight, label, _ in terms)
    return (total if terms else None), bool(missing), formula
