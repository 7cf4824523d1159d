"""DriveMM's six-view prompt and its split into a shared prefix and a per-question suffix.

The visual prefix (system text, the six views, the fixed description of the views) does not depend
on the question, so the runtime encodes and prunes it once per frame set. The split is made at a
pre-token boundary (just before the space that starts the question) so that tokenizing the two
parts separately gives the same ids as tokenizing the whole prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from prune2drive_ros.cameras import CAMERAS

IMAGE_PLACEHOLDER = "<image>"

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_QUESTION_SENTINEL = "\u2063QUESTION\u2063"


def views_sentence() -> str:
    """'These six images are the front view, ... and back right view of the ego vehicle.'"""
    labels = [c.label for c in CAMERAS]
    return f"These six images are the {', '.join(labels[:-1])} and {labels[-1]} of the ego vehicle."


def user_message(question: str) -> str:
    images = " ".join(f"{i}: {IMAGE_PLACEHOLDER}" for i in range(1, len(CAMERAS) + 1))
    return f"{images}. {views_sentence()} {question}"


@dataclass(frozen=True)
class PromptParts:
    prefix: str
    """Chat-formatted text up to (not including) the space before the question; holds the six placeholders."""
    suffix_template: str
    """Text after the question (end of turn, assistant header)."""

    def suffix(self, question: str) -> str:
        return f" {question}{self.suffix_template}"


def split_prompt(tokenizer) -> PromptParts:
    """Render the chat template once with a sentinel question and cut it around the sentinel."""
    messages = [{"role": "user", "content": user_message(_QUESTION_SENTINEL)}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if text.count(_QUESTION_SENTINEL) != 1:
        raise ValueError("the checkpoint's chat template does not place the user message verbatim")
    before, after = text.split(_QUESTION_SENTINEL)
    if not before.endswith(" "):
        raise ValueError("the chat template changed the whitespace before the question")
    return PromptParts(prefix=before[:-1], suffix_template=after)
