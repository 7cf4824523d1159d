"""Bootstrap 95% intervals over questions: resample the scored questions with replacement, score again.

Each resample is a vector of per-question weights (how often each question was drawn), so every
metric is a weighted sum over per-question statistics: accuracy hits, point F1, judge ratings,
ROUGE-L and CIDEr-D per question, and BLEU's n-gram counts (corpus BLEU is recomputed from the
resample's summed counts, not averaged). CIDEr keeps the document frequencies of the whole set, the
usual way to bootstrap it. Seeded and vectorized: the same inputs give the same interval, and a
thousand resamples of a few thousand questions take well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prune2drive_ros.eval import metrics as M

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
_CHUNK = 100  # resamples per array expression: bounds memory at 100 x questions weights


@dataclass
class PerQuestion:
    """Per-question statistics of the scored questions; index ``i`` of each list is question ``idx[i]``."""

    questions: int = 0
    accuracy: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    match_f1: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    gpt: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    match_gpt: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    language: tuple[list[int], M.LanguageDetail | None] = field(default_factory=lambda: ([], None))


def _weighted_mean(w: np.ndarray, idx: Sequence[int], values: Sequence[float]) -> np.ndarray | None:
    if not idx:
        return None
    sub = w[:, np.asarray(idx)]
    n = sub.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sub @ np.asarray(values, dtype=float) / np.maximum(n, 1), np.nan)


def _resampled(w: np.ndarray, stats: PerQuestion, rules: str, final_uses: Mapping[str, bool]) -> dict[str, np.ndarray]:
    out: dict[str, Any] = {
        "accuracy": _weighted_mean(w, *stats.accuracy),
        "match_f1": _weighted_mean(w, *stats.match_f1),
        "gpt": _weighted_mean(w, *stats.gpt),
        "match_gpt": _weighted_mean(w, *stats.match_gpt),
        "language_score": None,
    }
    idx, detail = stats.language
    if idx and detail is not None:
        sub = w[:, np.asarray(idx)]
        n = np.maximum(sub.sum(axis=1), 1)
        bleu = M.bleu_from_counts(sub @ np.asarray(detail.bleu_counts, dtype=float))
        rouge = sub @ np.asarray(detail.rouge_l) / n
        cider = sub @ np.asarray(detail.cider) / n
        out["language_score"] = bleu.sum(axis=1) / 12 + rouge / 3 + cider / 30
    # Parts the point estimate could not use (an incomplete judge) stay out of match and the final score.
    usable = {**out}
    for key in ("gpt", "match_gpt"):
        if not final_uses.get(key):
            usable[key] = None
    if rules == "lenient":
        usable["match"] = out["match_f1"]
    elif usable["match_gpt"] is not None and out["match_f1"] is not None:
        usable["match"] = (out["match_f1"] + usable["match_gpt"]) / 2
    else:
        usable["match"] = None
    out["match"] = usable["match"]
    terms, _ = M.final_terms({k: (None if v is None else 0.0) for k, v in usable.items()}, rules)
    if not terms:
        out["final_score"] = None
        return out
    key_of = {"GPT/100": "gpt", "L": "language_score", "Match/100": "match", "MatchF1/100": "match_f1", "Acc": "accuracy"}
    final = np.zeros(w.shape[0])
    for weight, label, _ in terms:
        value = usable[key_of[label]]
        final = final + weight * (value / 100.0 if label.endswith("/100") else value)
    out["final_score"] = final
    return out


def confidence_intervals(
    stats: PerQuestion,
    rules: str,
    final_uses: Mapping[str, bool],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile intervals of accuracy, match_f1, match, gpt, language_score and final_score.

    ``final_uses`` says which judge parts the point estimate's final score used (``gpt``,
    ``match_gpt``), so the resampled final score sums the same terms. A metric without questions
    gets None; resamples that drew no question of a metric's kind are left out of its interval.
    """
    keys = ("accuracy", "match_f1", "match", "gpt", "language_score", "final_score")
    if resamples <= 0 or stats.questions == 0:
        return dict.fromkeys(keys)
    rng = np.random.default_rng(seed)
    n = stats.questions
    collected: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        draws = rng.integers(0, n, size=(rows, n))
        # How often each question was drawn, per resample: one bincount over row-offset indices.
        w = np.bincount((draws + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n).astype(float)
        for key, values in _resampled(w, stats, rules, final_uses).items():
            if key in collected and values is not None:
                collected[key].append(values)
    tail = 100 * (1 - level) / 2
    out: dict[str, list[float] | None] = {}
    for key in keys:
        if not collected[key]:
            out[key] = None
            continue
        values = np.concatenate(collected[key])
        values = values[np.isfinite(values)]
        out[key] = [float(v) for v in np.percentile(values, [tail, 100 - tail])] if values.size else None
    return out
