"""MMMU: college-level questions with up to seven images; multiple-choice (options as a list literal) or
open. Open numbers are compared rounded to 2 decimals, as MMMU's ``eval_utils.normalize_str`` does."""

from ..core import Adapter, choice_item, images, open_item, parse_options


def to_item(row, i):
    pictures = images(*(row.get(f"image_{k}") for k in range(1, 8)))
    group = {"category": row["question_type"]}
    if row["question_type"] == "multiple-choice":
        return choice_item(row["id"], row["question"], parse_options(row["options"]), row["answer"], pictures, group)
    return open_item(row["id"], row["question"], row["answer"], pictures, group)


ADAPTER = Adapter("mmmu", "lmms-lab/MMMU", "validation",
                  ("id", "question", "options", "answer", "question_type", "image_1"), to_item,
                  also="MMMU/MMMU (one config per subject)", decimals=2)
