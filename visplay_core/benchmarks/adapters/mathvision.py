"""MATH-Vision: competition problems, by letter when the item has options (options "A".."E" are drawn in
the image), else open; numbers are compared rounded to 2 decimals, as its ``utils.is_equal`` does."""

from ..core import Adapter, choice_item, images, open_item, parse_options


def to_item(row, i):
    pictures = images(row.get("decoded_image"), row.get("image"))[:1]
    group = {"category": row.get("subject")}
    options = parse_options(row["options"])
    if options:
        return choice_item(row["id"], row["question"], options, row["answer"], pictures, group)
    return open_item(row["id"], row["question"], row["answer"], pictures, group)


ADAPTER = Adapter("math-vision", "MathLLMs/MathVision", "test",
                  ("id", "question", "options", "answer", "decoded_image"), to_item, decimals=2)
