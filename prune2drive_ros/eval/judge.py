"""The GPT part of the DriveLM score: an OpenAI-compatible chat endpoint rates answers 0-100.

Any server that speaks ``POST /v1/chat/completions`` works (OpenAI, vLLM, llama.cpp, Ollama). Only
the standard library is used, every request has a timeout, and a question whose rating fails after
the retries is counted as failed rather than stopping the evaluation.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

PROMPT = (
    "Rate my answer against the correct answer on a scale from 0 to 100, where higher means closer "
    "to the correct answer. Be precise to single digits (for example 62, 78, 41). Output the number only.\n"
    "Question: {question}\nCorrect answer: {reference}\nMy answer: {answer}"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def chat_completions_url(url: str) -> str:
    """``http://h:8000`` and ``http://h:8000/v1`` both mean ``http://h:8000/v1/chat/completions``."""
    path = urlparse(url).path.rstrip("/")
    if path.endswith("/chat/completions"):
        return url
    if path.endswith("/v1"):
        return url.rstrip("/") + "/chat/completions"
    return url.rstrip("/") + "/v1/chat/completions"


class Judge:
    """Rates (question, answer, reference) triples with a chat model."""

    def __init__(
        self,
        url: str,
        model: str = "gpt-4o-mini",
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        workers: int = 4,
    ) -> None:
        self.url = chat_completions_url(url)
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.retries = retries
        self.workers = workers

    def rate(self, question: str, answer: str, reference: str) -> float | None:
        """0-100, or None when the endpoint fails or answers no number after the retries."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": PROMPT.format(question=question, reference=reference, answer=answer)}],
            "temperature": 0,
            "max_tokens": 8,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    content = json.loads(response.read())["choices"][0]["message"]["content"]
                m = _NUMBER.search(content or "")
                if m:
                    return min(100.0, max(0.0, float(m.group())))
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError):
                pass
            if attempt < self.retries:
                time.sleep(0.5 * (attempt + 1))
        return None

    def rate_all(self, triples: Sequence[tuple[str, str, str]]) -> list[float | None]:
        """Ratings in input order; requests run a few at a time since each waits on the network."""
        if not triples:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(pool.map(lambda t: self.rate(*t), triples))
