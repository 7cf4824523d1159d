"""Metric functions against hand-computed values."""

from __future__ import annotations

import pytest

from prune2drive_ros.eval import metrics as M


def test_tokenizer_keeps_numbers_and_drops_punctuation():
    assert M.tokenize("The car, at <c1,CAM_BACK,1088.3,497.5>!") == [
        "the",
        "car",
        "at",
        "c1",
        "cam",
        "back",
        "1088.3",
        "497.5",
    ]


def test_bleu_rouge_of_identical_strings():
    s = "the ego vehicle should keep its lane and slow down"
    m = M.language_metrics([s], [s])
    for n in range(1, 5):
        assert m[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert m["rouge_l"] == pytest.approx(1.0)


def test_bleu_brevity_and_clipping():
    # "the the the the" vs "the cat is here": clipped unigram precision 1/4, no higher n-gram matches.
    m = M.language_metrics(["the the the the"], ["the cat is here"])
    assert m["bleu_1"] == pytest.approx(0.25, abs=1e-6)
    assert m["bleu_2"] < 1e-3


def test_rouge_l_known_pairs():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides: P = R = F = 5/6.
    assert M.language_metrics(["the cat sat on the mat"], ["the cat is on the mat"])["rouge_l"] == pytest.approx(5 / 6)
    # LCS "a c": P = 2/4, R = 2/3, F_beta with beta = 1.2.
    p, r, b2 = 0.5, 2 / 3, 1.2**2
    assert M.language_metrics(["a b c d"], ["a c e"])["rouge_l"] == pytest.approx((1 + b2) * p * r / (r + b2 * p))
    assert M.language_metrics(["x y"], ["a b"])["rouge_l"] == 0.0


def test_cider_edge_cases():
    refs = ["a red car stops at the light", "the blue truck turns left slowly"]
    # Every n-gram unique to its sentence: a perfect corpus scores CIDEr-D's maximum, 10.
    assert M.language_metrics(refs, refs)["cider"] == pytest.approx(10.0)
    # One empty prediction scores 0 for its question; the corpus mean halves.
    assert M.language_metrics(["", refs[1]], refs)["cider"] == pytest.approx(5.0)
    # A corpus of one: every n-gram is in every reference, so idf is 0 and CIDEr is 0 even when exact.
    assert M.language_metrics([refs[0]], [refs[0]])["cider"] == 0.0
    # n-grams shared by all references carry no weight: identical shared words do not count.
    assert M.language_metrics(["the", "the"], ["the car", "the bus"])["cider"] == 0.0
    assert M.language_metrics([], []) is None


def test_language_score_formula():
    best = {"bleu_1": 1, "bleu_2": 1, "bleu_3": 1, "bleu_4": 1, "rouge_l": 1, "cider": 10}
    assert M.language_score(best) == pytest.approx(1.0)
    m = {"bleu_1": 0.6, "bleu_2": 0.5, "bleu_3": 0.4, "bleu_4": 0.3, "rouge_l": 0.45, "cider": 3.0}
    assert M.language_score(m) == pytest.approx(1.8 / 12 + 0.45 / 3 + 3.0 / 30)
    assert M.language_score({**m, "cider": None}) is None


GT = "There is <c1,CAM_FRONT,1000.0,500.0> and <c2,CAM_BACK,200.0,300.0>."


@pytest.mark.parametrize(
    "prediction, f1",
    [
        (GT, 1.0),
        ("<c7,CAM_FRONT,1005.0,505.0> and <c9,CAM_BACK,195.0,296.0>", 1.0),  # L1 10 and 9: inside, ids ignored
        ("<c1,CAM_FRONT,1007.95,508.0> and <c2,CAM_BACK,200.0,300.0>", 1.0),  # L1 15.95 < 16: inside
        ("<c1,CAM_FRONT,1008.0,508.0> and <c2,CAM_BACK,200.0,300.0>", 0.5),  # L1 16: outside; P = R = 1/2
        ("<c1,CAM_FRONT,1000.0,500.0>", 2 / 3),  # P = 1, R = 1/2
        ("<c1,CAM_BACK,1000.0,500.0> <c2,CAM_FRONT,200.0,300.0>", 0.0),  # right points, wrong cameras
        ("<c1,CAM_FRONT,1000.0,500.0> <c1,CAM_FRONT,1001.0,500.0> <c2,CAM_BACK,200.0,300.0>", 0.8),  # one-to-one: P 2/3, R 1
        ("no objects", 0.0),
    ],
)
def test_match_f1_lenient(prediction, f1):
    assert M.match_f1_lenient(prediction, GT) == pytest.approx(f1)


def test_match_lenient_edge_cases():
    assert M.match_f1_lenient("nothing", "nothing either") == 1.0
    assert M.match_f1_lenient("<c1,CAM_FRONT,1.0,2.0>", "nothing") == 0.0
    assert M.match_score([(GT, GT), ("none", GT)], M.match_f1_lenient) == pytest.approx(50.0)
    assert M.match_score([]) is None
    assert M.parse_points(GT)[1] == M.Point("c2", "CAM_BACK", 200.0, 300.0)


EPS = 1e-8


def official_f1(tp: int, fp: int, fn: int) -> float:
    """The challenge's F1, written out by hand from its counts (epsilon in every denominator)."""
    p = tp / (tp + fp + EPS)
    r = tp / (tp + fn + EPS)
    return 2 * p * r / (p + r + EPS)


@pytest.mark.parametrize(
    "prediction, counts, matched",
    [
        (GT, (2, 0, 0), [(1000.0, 500.0), (200.0, 300.0)]),  # perfect: just under 1, not 1
        # cameras ignored
        ("<c1,CAM_BACK,1000.0,500.0> <c2,CAM_FRONT,200.0,300.0>", (2, 0, 0), [(1000.0, 500.0), (200.0, 300.0)]),
        ("<c1,CAM_FRONT,1008.0,508.0> <c2,CAM_BACK,195.0,296.0>", (1, 1, 1), [(200.0, 300.0)]),  # L1 16 is outside
        ("<c1,CAM_FRONT,1000,500> and <c2,CAM_BACK,200,300>", (0, 0, 2), []),  # integers are not points
        ("at 1000.0 500.0 and 7.5", (1, 0, 1), [(1000.0, 500.0)]),  # any decimals, the odd last one dropped
        ("at 3.5 m/s, <c1,CAM_FRONT,1000.0,500.0>", (0, 1, 2), []),  # 3.5 pairs with 1000.0: one far point
        # one-to-one and greedy in prediction order: the first takes the only near point, the second misses
        ("<c1,CAM_FRONT,1001.0,500.0> <c1,CAM_FRONT,1000.0,500.0>", (1, 1, 1), [(1000.0, 500.0)]),
        ("no objects", (0, 0, 2), []),
    ],
)
def test_match_official_against_hand_counts(prediction, counts, matched):
    got_matched, f1 = M.match_official(prediction, GT)
    assert f1 == official_f1(*counts)
    assert got_matched == matched


def test_match_official_edge_cases():
    assert M.match_f1_official(GT, GT) < 1.0 and M.match_f1_official(GT, GT) == pytest.approx(1.0)
    assert M.match_f1_official("nothing", "nothing either") == 0.0  # the lenient rule says 1.0
    assert M.decimal_pairs("<c1,CAM_BACK,1088.3,497.5> -2.5 4.0 1") == [(1088.3, 497.5), (2.5, 4.0)]
    # The nearest of any camera, first on a tie: (10.0, 0.0) is 5 from both ground-truth points.
    assert M.match_official("5.0 0.0", "<a,CAM_BACK,0.0,0.0> <b,CAM_FRONT,10.0,0.0>")[0] == [(0.0, 0.0)]
    assert M.match_score([(GT, GT), ("none", GT)]) == pytest.approx(100 * official_f1(2, 0, 0) / 2)


QUESTION = (
    "Predict the behavior of the ego vehicle. Please select the correct answer from the following options: "
    "A. The ego vehicle is going straight. B. The ego vehicle is turning left. C. The ego vehicle is stopped."
)


@pytest.mark.parametrize(
    "prediction, letter",
    [
        ("B", "B"),
        ("B.", "B"),
        (" (C) stopped", "C"),
        ("A. The ego vehicle is going straight.", "A"),
        ("C: stopped", "C"),
        ("The answer is D.", "D"),
        ("Answer: (b)", None),  # lowercase letters are words, not options
        ("The ego vehicle is turning left.", "B"),  # repeats the text of option B
        ("A car is ahead.", None),  # "A" the article
        ("", None),
    ],
)
def test_parse_option_letter(prediction, letter):
    assert M.parse_option_letter(prediction, QUESTION) == letter


def test_accuracy():
    assert (
        M.ground_truth_letter("B.") == "B" and M.ground_truth_letter("(C)") == "C" and M.ground_truth_letter("Both") is None
    )
    assert M.accuracy_lenient([("B", "B"), ("The answer is C", "C"), ("A", "D"), ("no idea", "A")]) == 0.5
    assert M.accuracy_lenient([]) is None


def test_accuracy_exact_is_string_equality():
    pairs = [("B", "B"), ("B.", "B"), (" B", "B"), ("b", "B"), ("A. Going ahead.", "A")]
    pairs.append(("A. Going ahead.", "A. Going ahead."))
    assert M.accuracy_exact(pairs) == 2 / 6
    assert M.accuracy_lenient(pairs[:5]) == 4 / 5  # the lenient reading accepts all but "b"
    assert M.accuracy_exact([]) is None


def test_final_score_full_and_partial():
    m = {"gpt": 70.0, "language_score": 0.5, "match": 40.0, "match_f1": 30.0, "accuracy": 0.8}
    for rules in ("official", "lenient"):
        score, partial, formula = M.final_score(m, rules)
        assert score == pytest.approx(0.4 * 0.7 + 0.2 * 0.5 + 0.2 * 0.4 + 0.2 * 0.8) and not partial
        assert formula == "0.4*GPT/100 + 0.2*L + 0.2*Match/100 + 0.2*Acc"
    # Official, no judge: Match (the mean of F1 and the judge) is missing; its F1 half stays.
    score, partial, formula = M.final_score({**m, "gpt": None, "match": None})
    assert score == pytest.approx(0.2 * 0.5 + 0.1 * 0.3 + 0.2 * 0.8) and partial
    assert formula == "0.2*L + 0.1*MatchF1/100 + 0.2*Acc"
    assert M.final_terms({**m, "gpt": None, "match": None})[1] == ["0.4*GPT/100", "0.1*MatchGPT/100"]
    score, partial, formula = M.final_score({**m, "gpt": None}, "lenient")
    assert score == pytest.approx(0.2 * 0.5 + 0.2 * 0.4 + 0.2 * 0.8) and partial
    assert formula == "0.2*L + 0.2*Match/100 + 0.2*Acc"
    assert M.final_score({}) == (None, True, "")
    with pytest.raises(ValueError, match="rules"):
        M.final_score(m, "strict")


def test_bleu_from_counts_equals_pycocoevalcap():
    import numpy as np

    preds = ["the car stops", "a red truck turns left at the light", "", "slow down now", "the car the car"]
    refs = ["the car stops at the light", "the red truck turns left", "keep lane", "slow down", "a car"]
    detail = M.language_details(preds, refs)
    counts = np.asarray(detail.bleu_counts, dtype=float)
    assert np.allclose(M.bleu_from_counts(counts.sum(0)), [detail.corpus[f"bleu_{n}"] for n in range(1, 5)], atol=1e-12)
    # A resample with repeats is a corpus with repeated questions: same numbers as scoring it outright.
    draw = [1, 1, 3, 0, 4, 4, 4]
    again = M.language_metrics([preds[i] for i in draw], [refs[i] for i in draw])
    assert np.allclose(M.bleu_from_counts(counts[draw].sum(0)), [again[f"bleu_{n}"] for n in range(1, 5)], atol=1e-12)
    assert detail.corpus["rouge_l"] == pytest.approx(np.mean(detail.rouge_l))
    assert detail.corpus["cider"] == pytest.approx(np.mean(detail.cider))
