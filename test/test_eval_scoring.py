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


def test_perfect_submission_scores_top(dataset):
    m = score(dataset.questions(), answers_by_id(perfect(dataset)))
    assert m["accuracy"] == 1.0
    for n in range(1, 5):
        assert m[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert m["rouge_l"] == pytest.approx(1.0)
    assert m["cider"] > 9.0  # every answer differs from the others by a number; shared words carry no idf
    assert m["match"] == 100.0
    assert m["gpt"] is None and m["final_score_partial"]
    assert m["final_score"] == pytest.approx(0.2 * m["language_score"] + 0.2 + 0.2)
    assert m["counts"] == {
        "questions": 12, "scored": 12, "missing_answers": 0, "unknown_answer_ids": 0,
        "accuracy": 3, "language": 9, "match": 3, "gpt": 0, "gpt_failed": 0,
    }  # fmt: skip


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
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = "85" if "Correct answer" in body["messages"][0]["content"] else "??"
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
        m = score(dataset.questions(), answers_by_id(perfect(dataset)), judge)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert m["gpt"] == 85.0 and m["counts"]["gpt"] == 9 and m["counts"]["gpt_failed"] == 0
    assert not m["final_score_partial"]
    assert m["final_score"] == pytest.approx(0.4 * 0.85 + 0.2 * m["language_score"] + 0.2 + 0.2)


def test_judge_unreachable_is_counted_not_fatal(dataset):
    judge = Judge("http://127.0.0.1:9", timeout_s=1.0, retries=0)  # the discard port: refused at once
    m = score(list(dataset.questions())[:2], answers_by_id(perfect(dataset)), judge)
    assert m["gpt"] is None and m["counts"]["gpt_failed"] == 2 and m["final_score_partial"]


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
    assert "partial" in result.stdout
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(QUALITY_KEYS) | set(RUN_KEYS) | {"final_score_partial", "final_score_formula"} <= set(m)
    assert m["accuracy"] == 1.0 and m["gpt"] is None and m["final_score_partial"] is True
    assert all(m[k] is None for k in RUN_KEYS)
    bad = run_cli(
        "eval", "--score-only", str(tmp_path / "nope.json"), "--drivelm", str(drivelm), "--out", str(tmp_path), timeout=60
    )
    assert bad.returncode == 2 and "nope.json" in bad.stderr
