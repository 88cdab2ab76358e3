"""VisNumBench: number-sense questions with options marked "(a) .. (b) ..". Its synthetic and real
parts reuse ids (``77_Scale`` is in both), so an item's id is ``<class>/<id>``."""

from ..core import Adapter, choice_item, images, parse_options


def to_item(row, i):
    return choice_item(f"{row['class']}/{row['id']}", row["question"], parse_options(row["option"]), row["answer"],
                       images(row["image"]), {"category": row.get("Attributes")})


ADAPTER = Adapter("visnumbench", "GML-FMGroup/VisNumBench", "train",
                  ("class", "id", "question", "option", "answer", "image"), to_item)
