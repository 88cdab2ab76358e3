"""The two roles' prompts and output formats, in one place.

Both roles are played by the same VLM; only the prompt differs. The Questioner writes one question
wrapped in ``<question>...</question>``; the Reasoner writes its reasoning and puts its final answer in
``\\boxed{...}``. Everything that builds a prompt or reads a completion goes through this module.
"""

from __future__ import annotations

QUESTIONER_INSTRUCTION = (
    "Ask one question about this image that can be answered from the image alone. "
    "Write it as <question>...</question>."
)
REASONER_INSTRUCTION = "{question}\nDescribe what you see, then put the final answer in \\boxed{{}}."

QUESTION_OPEN, QUESTION_CLOSE = "<question>", "</question>"


def questioner_messages() -> list[dict]:
    """Chat messages asking the Questioner for one question about the attached image."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONER_INSTRUCTION}]}]


def reasoner_messages(question: str) -> list[dict]:
    """Chat messages asking the Reasoner to answer ``question`` about the attached image."""
    text = REASONER_INSTRUCTION.format(question=question)
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def format_question(question: str) -> str:
    """The Questioner's completion for ``question`` (what bootstrap teaches it to write)."""
    return f"{QUESTION_OPEN}{question}{QUESTION_CLOSE}"


def format_answer(reasoning: str, answer: str) -> str:
    """The Reasoner's completion: its reasoning, then the boxed final answer."""
    return f"{reasoning} \\boxed{{{answer}}}"
