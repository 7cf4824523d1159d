"""Scoring a submission: perfect scores, the submission format, the judge, and ``eval --score-only``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import run_cli
from test_eval_support import make_drivelm

from prune2drive_ros.data.drivelm import Question, load_drivelm
from prune2drive_ros.eval.judge import Judge, chat_completions_url
from prune2drive_ros.eval.scoring import QUALITY_KEYS, RUN_KEYS, question_kinds, score
from prune2drive_ros.eval.submission import answers_by_id, read_submission, write_submission


@pytest.fixture
def dataset(tmp_path):
    path, dataroot = make_drivelm(tmp_path, keyframes=3, with_images=False)
    return load_drivelm(path, dataroot)


def perfect(ds) -> list[dict]:
    return [{"id": q.id, "question": q.question, "answer": q.answer} for q in ds.questions()]


def test_question_kinds():
    assert question_kinds(Question("s_t_0", "q", "B")) == {"accuracy"}
    assert question_kinds(Question("s_t_0", "q", "a car <c1,CAM_FRONT,1.0,2.0>")) == {"language", "gpt", "match"}
    assert question_kinds(Question("s_t_0", "q", "slow down")) == {"language", "gpt"}
    assert question_kinds(Question("s_t_0", "q", "slow down", tags=(0, 2))) == {"accuracy", "language"}
    assert question_kinds(Question("s_t_0", "q", None)) == frozenset()


EPS = 1e-8


def official_f1(tp: int, fp: int, fn: int) -> float:
    p, r = tp / (tp + fp + EPS), tp / (tp + fn + EPS)
    return 2 * p * r / (p + r + EPS)


def test_perfect_submission_scores_top(dataset):
    m = score(dataset.questions(), answers_by_id(perfect(dataset)))
    assert m["rules"] == "official" and m["accuracy"] == 1.0
    for n in range(1, 5):
        assert m[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert m["rouge_l"] == pytest.approx(1.0)
    assert m["cider"] > 9.0  # every answer differs from the others by a number; shared words carry no idf
    assert m["match_f1"] == 100 * official_f1(2, 0, 0)
    assert m["match"] is None and m["gpt"] is None and m["final_score_partial"]  # no judge: Match needs its GPT half
    assert m["final_score_formula"] == "0.2*L + 0.1*MatchF1/100 + 0.2*Acc"
    assert m["final_score_missing"] == ["0.4*GPT/100", "0.1*MatchGPT/100"]
    assert m["final_score"] == pytest.approx(0.2 * m["language_score"] + 0.1 * official_f1(2, 0, 0) + 0.2)
    assert m["counts"] == {
        "questions": 12, "scored": 12, "skipped_unmatched": 0, "missing_answers": 0, "unknown_answer_ids": 0,
        "accuracy": 3, "language": 9, "match": 3, "gpt": 0, "gpt_failed": 0,
    }  # fmt: skip
    assert m["warnings"] == []
    lenient = score(dataset.questions(), answers_by_id(perfect(dataset)), rules="lenient")
    assert lenient["match"] == lenient["match_f1"] == 100.0
    assert lenient["final_score"] == pytest.approx(0.2 * m["language_score"] + 0.2 + 0.2)


def _frames() -> tuple[list[Question], dict[str, str]]:
    """Two key frames worked through by hand below: (questions, predictions)."""
    q = [
        # Frame 1. The first answer finds c1 (5 px off) but not c2: the graph is {(1000.0, 500.0)}.
        Question("s_f1_0", "Important objects?", "<c1,CAM_FRONT,1000.0,500.0>, <c2,CAM_BACK,200.0,300.0>", tags=(3,)),
        Question("s_f1_1", "Is <c1,CAM_FRONT,1000.0,500.0> moving? A. yes B. no", "A", tags=(0,)),
        Question("s_f1_2", "Is <c2,CAM_BACK,200.0,300.0> moving? A. yes B. no", "B", tags=(0,)),  # c2 unmatched: skipped
        Question("s_f1_3", "Turn left? A. yes B. no", "A", tags=(0,)),  # names no object: always scored
        # Frame 2. The first answer names the right point in the wrong camera: the official matcher takes it.
        Question("s_f2_0", "What are the important objects?", "<c3,CAM_FRONT_LEFT,50.5,60.5>", tags=(3,)),
        Question("s_f2_1", "Will <c3,CAM_FRONT_LEFT,50.5,60.5> cross? A. yes B. no", "B", tags=(0,)),
    ]
    answers = {
        "s_f1_0": "<c1,CAM_FRONT,1005.0,500.0>",
        "s_f1_1": "A",
        "s_f1_2": "A",
        "s_f1_3": "A.",
        "s_f2_0": "<c7,CAM_BACK,52.5,60.5>",
        "s_f2_1": "B",
    }  # fmt: skip
    return q, answers


def test_official_rules_by_hand():
    questions, answers = _frames()
    m = score(questions, answers)
    # Scored: f1_0, f1_1, f1_3, f2_0, f2_1; f1_2 skipped. Accuracy: f1_1 yes, f1_3 "A." != "A", f2_1 yes.
    assert m["counts"]["scored"] == 5 and m["counts"]["skipped_unmatched"] == 1
    assert m["accuracy"] == 2 / 3
    # Point F1: frame 1 tp 1, fp 0, fn 1; frame 2 tp 1 (camera ignored), fp 0, fn 0.
    f1 = 100 * (official_f1(1, 0, 1) + official_f1(1, 0, 0)) / 2
    assert m["match_f1"] == f1
    assert m["language_score"] is None and m["match"] is None
    assert m["final_score"] == pytest.approx(0.1 * f1 / 100 + 0.2 * 2 / 3) and m["final_score_partial"]
    assert m["final_score_missing"] == ["0.4*GPT/100", "0.2*L", "0.1*MatchGPT/100"]


def test_lenient_rules_by_hand():
    questions, answers = _frames()
    m = score(questions, answers, rules="lenient")
    # Every question scored. Accuracy: f1_1 yes, f1_2 no, f1_3 "A." reads as A: yes, f2_1 yes.
    assert m["counts"]["scored"] == 6 and m["counts"]["skipped_unmatched"] == 0
    assert m["accuracy"] == 3 / 4
    # Same-camera F1: frame 1 P 1, R 1/2 -> 2/3; frame 2 the camera differs -> 0.
    assert m["match"] == m["match_f1"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert m["final_score"] == pytest.approx(0.2 * m["match"] / 100 + 0.2 * 3 / 4)


def test_skipping_follows_the_first_answer():
    questions, answers = _frames()
    # The first answer of frame 1 now finds both objects: f1_2 is scored, and wrong.
    both = {**answers, "s_f1_0": "<c1,CAM_FRONT,1000.0,500.0> <c2,CAM_BACK,201.0,300.0>"}
    m = score(questions, both)
    assert m["counts"]["skipped_unmatched"] == 0 and m["accuracy"] == 2 / 4
    # It finds nothing: both questions about objects of frame 1 are skipped (f1_3 "A." and f2_1 remain).
    none = {**answers, "s_f1_0": "I see nothing."}
    m = score(questions, none)
    assert m["counts"]["skipped_unmatched"] == 2 and m["accuracy"] == 1 / 2
    # A missing first answer is an empty one: nothing matched.
    m = score(questions, {k: v for k, v in answers.items() if k != "s_f1_0"})
    assert m["counts"]["skipped_unmatched"] == 2 and m["counts"]["missing_answers"] == 1


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate(dataset):
    import numpy as np

    answers = answers_by_id(perfect(dataset))
    behavior = [q.id for q in dataset.questions() if q.group == "behavior"]
    answers[behavior[0]] = "wrong"
    first = [kf.questions[0].id for kf in dataset.keyframes]
    answers[first[1]] = "There is a white sedan <c1,CAM_FRONT,810.5,500.0>."  # misses the truck
    a = score(dataset.questions(), answers, resamples=300, seed=3)
    b = score(dataset.questions(), answers, resamples=300, seed=3)
    assert a["ci95"] == b["ci95"] and a["bootstrap"] == {"resamples": 300, "seed": 3, "unit": "question", "level": 0.95}
    for key in ("accuracy", "match_f1", "language_score", "final_score"):
        lo, hi = a["ci95"][key]
        assert lo - 1e-9 <= a[key] <= hi + 1e-9 and lo < hi, key
    assert a["ci95"]["match"] is None and a["ci95"]["gpt"] is None  # no judge
    # Brute force with the same draws: accuracy is the mean hit rate of the drawn accuracy questions.
    rng = np.random.default_rng(3)
    draws = rng.integers(0, 12, size=(100, 12))  # the first chunk of resamples
    hits = {i: float(answers[q.id] == q.answer) for i, q in enumerate(dataset.questions()) if q.group == "behavior"}
    means = [np.mean([hits[i] for i in d if i in hits]) for d in draws if any(i in hits for i in d)]
    c = score(dataset.questions(), answers, resamples=100, seed=3)
    assert c["ci95"]["accuracy"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    assert score(dataset.questions(), answers)["ci95"]["final_score"] is None  # opt-in for library callers


def test_missing_and_wrong_answers(dataset):
    answers = answers_by_id(perfect(dataset))
    behavior = [q.id for q in dataset.questions() if q.group == "behavior"]
    answers[behavior[0]] = "D" if answers[behavior[0]] != "D" else "A"
    del answers[behavior[1]]
    answers["unknown_x_0"] = "?"
    m = score(dataset.questions(), answers)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["counts"]["missing_answers"] == 1 and m["counts"]["unknown_answer_ids"] == 1


def test_submission_round_trip(dataset, tmp_path):
    entries = perfect(dataset)
    entries[0]["answer"] = 'Quotes " and ünïcode <c1,CAM_FRONT,1.5,2.5>\nnew line'
    path = write_submission(tmp_path / "out" / "submission.json", entries)
    assert read_submission(path) == entries
    assert isinstance(json.loads(path.read_text()), list)
    # The leaderboard wrapper written by the challenge's prepare_submission.py reads too.
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"method": "m", "team": "t", "results": entries}))
    assert read_submission(wrapped) == entries


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "x"}', "a JSON list"),
        ('[{"id": "x"}]', "entry 0 needs a string 'id' and a string 'answer'"),
        ('[{"id": "x", "answer": "a"}, {"id": "x", "answer": "b"}]', "duplicate id x"),
        ("[", "not valid JSON"),
    ],
)
def test_submission_errors(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_submission(path)


class _StubJudge(BaseHTTPRequestHandler):
    def rate(self, prompt: str) -> str:
        return "85" if "Correct answer" in prompt else "??"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = self.rate(body["messages"][0]["content"])
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_judge_against_local_stub(dataset):
    server = HTTPServer(("127.0.0.1", 0), _StubJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = Judge(f"http://127.0.0.1:{server.server_port}/v1", timeout_s=5.0, retries=0)
        m = score(dataset.questions(), answers_by_id(perfect(dataset)), judge, resamples=200)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert m["gpt"] == 85.0 and m["match_gpt"] == 85.0 and m["counts"]["gpt"] == 9 and m["counts"]["gpt_failed"] == 0
    # The official Match: the mean of point F1 x 100 and the judge's score on the match questions.
    assert m["match"] == (100 * official_f1(2, 0, 0) + 85.0) / 2
    assert not m["final_score_partial"] and m["warnings"] == []
    assert m["final_score_formula"] == "0.4*GPT/100 + 0.2*L + 0.2*Match/100 + 0.2*Acc"
    assert m["final_score"] == pytest.approx(0.4 * 0.85 + 0.2 * m["language_score"] + 0.2 * m["match"] / 100 + 0.2)
    lo, hi = m["ci95"]["final_score"]
    assert lo <= m["final_score"] <= hi


def test_judge_unreachable_is_counted_not_fatal(dataset):
    judge = Judge("http://127.0.0.1:9", timeout_s=1.0, retries=0)  # the discard port: refused at once
    m = score(list(dataset.questions())[:2], answers_by_id(perfect(dataset)), judge)
    assert m["gpt"] is None and m["counts"]["gpt_failed"] == 2 and m["final_score_partial"]
    assert "GPT judge failed on 2 of 2 questions" in m["warnings"][0]


class _FlakyJudge(_StubJudge):
    """Rates every question 85 except those about the sedan's status, which get no number."""

    def rate(self, prompt: str) -> str:
        return "??" if "status of the sedan" in prompt else "85"


@pytest.fixture
def flaky_judge_url():
    server = HTTPServer(("127.0.0.1", 0), _FlakyJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_partly_failed_judge_gives_no_complete_final_score(dataset, flaky_judge_url):
    judge = Judge(flaky_judge_url, timeout_s=5.0, retries=0)
    m = score(dataset.questions(), answers_by_id(perfect(dataset)), judge)
    assert m["counts"]["gpt"] == 9 and m["counts"]["gpt_failed"] == 3  # one status question per key frame
    assert m["gpt"] == 85.0  # the survivors' mean is reported, but it does not enter the final score
    assert m["final_score_partial"] and "0.4*GPT/100" in m["final_score_missing"]
    assert m["final_score_formula"] == "0.2*L + 0.2*Match/100 + 0.2*Acc"  # the match questions were all rated
    assert "GPT judge failed on 3 of 9 questions" in m["warnings"][0]


def test_partly_failed_judge_is_loud_on_the_console(tmp_path, flaky_judge_url):
    drivelm, _ = make_drivelm(tmp_path, keyframes=2, with_images=False)
    sub = write_submission(tmp_path / "submission.json", perfect(load_drivelm(drivelm)))
    result = run_cli("eval", "--score-only", str(sub), "--drivelm", str(drivelm), "--out", str(tmp_path / "r"),
                     "--judge", flaky_judge_url, "--bootstrap", "50", timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "WARNING: GPT judge failed on 2 of 6 questions" in result.stderr
    assert "PARTIAL" in result.stdout and "missing 0.4*GPT/100" in result.stdout


def test_judge_url_forms():
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("https://api.x/v1/chat/completions") == "https://api.x/v1/chat/completions"


def test_eval_score_only_cli(tmp_path):
    drivelm, _ = make_drivelm(tmp_path, keyframes=2, with_images=False)
    ds = load_drivelm(drivelm)
    sub = write_submission(tmp_path / "submission.json", perfect(ds))
    result = run_cli(
        "eval", "--score-only", str(sub), "--drivelm", str(drivelm), "--out", str(tmp_path / "report"), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "PARTIAL" in result.stdout and "12 of 12 questions scored" not in result.stdout
    assert "8 of 8 questions scored" in result.stdout and "[official rules]" in result.stdout
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(QUALITY_KEYS) | set(RUN_KEYS) | {"final_score_partial", "final_score_formula"} <= set(m)
    assert m["accuracy"] == 1.0 and m["gpt"] is None and m["final_score_partial"] is True
    assert all(m[k] is None for k in RUN_KEYS)
    bad = run_cli(
        "eval", "--score-only", str(tmp_path / "nope.json"), "--drivelm", str(drivelm), "--out", str(tmp_path), timeout=60
    )
    assert bad.returncode == 2 and "nope.json" in bad.stderr
