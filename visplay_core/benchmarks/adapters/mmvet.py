"""MM-Vet: open questions graded by an LLM judge with MM-Vet's own prompt (``judge.py``); without a judge,
by the exact/numeric rule, a stricter lower bound."""

from ..core import Adapter, images, open_item


def to_item(row, i):
    return open_item(row["question_id"], row["question"], row["answer"], images(row["image"]),
                     {"category": row.get("capability")}, kind="judged")


ADAPTER = Adapter("mm-vet", "lmms-lab/MMVet", "test", ("question_id", "question", "answer", "image"), to_item,
                  also="whyu/mm-vet")
