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

CAPTION_INSTRUCTION = "Describe the image."  # bootstrap's auxiliary task only; self-play never uses it
QUESTION_OPEN, QUESTION_CLOSE = "<question>", "</question>"


def questioner_messages() -> list[dict]:
    """Chat messages asking the Questioner for one question about the attached image."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONER_INSTRUCTION}]}]


def reasoner_messages(question: str, n_images: int = 1) -> list[dict]:
    """Chat messages asking the Reasoner to answer ``question`` about the ``n_images`` attached images
    (in order, before the text; 0 for a text-only question)."""
    text = REASONER_INSTRUCTION.format(question=question)
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def caption_messages() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_INSTRUCTION}]}]


def format_question(question: str) -> str:
    """The Questioner's completion for ``question`` (what bootstrap teaches it to write)."""
    return f"{QUESTION_OPEN}{question}{QUESTION_CLOSE}"


def format_answer(reasoning: str, answer: str) -> str:
    """The Reasoner's completion: its reasoning, then the boxed final answer."""
    return f"{reasoning} \\boxed{{{answer}}}"
