"""MathVerse (testmini): the question lists its choices ("A:40°"); "Vision Only" items show the whole
question in the image. The image-less ``testmini_text_only`` config is another split, not read here."""

from ..core import IN_IMAGE, Adapter, choice_item, images, open_item, options_in_text


def to_item(row, i):
    group = {"category": row.get("problem_version")}
    pictures = images(row["image"])
    question = row["question"].strip() or IN_IMAGE
    if row["question_type"] == "multi-choice":
        return choice_item(row["sample_index"], question, options_in_text(question), row["answer"], pictures, group,
                           listed=False)
    return open_item(row["sample_index"], question, row["answer"], pictures, group)


ADAPTER = Adapter("mathverse", "AI4Math/MathVerse", "testmini",
                  ("sample_index", "question", "answer", "question_type", "image"), to_item, config="testmini")
