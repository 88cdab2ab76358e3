"""RealWorldQA: questions that list their options ("A. ...") are scored by letter, the others
(counts, short words) by the exact/numeric rule. Rows have no id: the id is the row's place."""

import re

from ..core import Adapter, choice_item, images, open_item, options_in_text

_ANSWER_DIRECTLY = re.compile(r"\n?Please answer directly[^\n]*", re.I)


def to_item(row, i):
    question = _ANSWER_DIRECTLY.sub("", row["question"]).strip()  # our prompt asks for a boxed answer
    options = options_in_text(question)
    answer = str(row["answer"]).strip()
    if options and re.fullmatch(r"[A-J]", answer):
        return choice_item(f"realworldqa-{i}", question, options, answer, images(row["image"]), {}, listed=False)
    return open_item(f"realworldqa-{i}", question, answer, images(row["image"]), {})


ADAPTER = Adapter("realworldqa", "lmms-lab/RealWorldQA", "test", ("question", "answer", "image"), to_item,
                  also="xai-org/RealworldQA")
