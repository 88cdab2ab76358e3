"""HallusionBench: yes/no questions (``gt_answer`` "1"/"0"), with its own metrics beside per-question
accuracy (aAcc), as its official ``utils.py`` defines them: ``figure_accuracy`` (fAcc), the share of
figures (category, subcategory, set_id, figure_id) whose questions are all right, leaving out VS figure
0 (the no-image question); ``question_pair_accuracy`` (qAcc), the share of questions (category,
subcategory, set_id, question_id) answered right on every figure they are asked about."""

from collections import defaultdict

from ..core import YES_NO_HINT, Adapter, Item, images, mean


def to_item(row, i):
    key = {k: str(row[k]) for k in ("category", "subcategory", "set_id", "figure_id", "question_id")}
    gold = {"1": "yes", "0": "no"}.get(str(row["gt_answer"]).strip(), str(row["gt_answer"]).strip().lower())
    return Item("/".join(key.values()), f"{row['question'].strip()}\n{YES_NO_HINT}", images(row["image"]), gold,
                "yesno", group=key)


def metrics(items: list[Item], scores: list[float]) -> dict:
    figures, questions = defaultdict(list), defaultdict(list)
    for item, score in zip(items, scores):
        g = item.group
        if not (g["category"] == "VS" and g["figure_id"] == "0"):
            figures[(g["category"], g["subcategory"], g["set_id"], g["figure_id"])].append(score == 1)
        questions[(g["category"], g["subcategory"], g["set_id"], g["question_id"])].append(score == 1)
    return {"figure_accuracy": mean(all(v) for v in figures.values()), "figures": len(figures),
            "question_pair_accuracy": mean(all(v) for v in questions.values()), "question_pairs": len(questions)}


ADAPTER = Adapter("hallusionbench", "lmms-lab/HallusionBench", "image",
                  ("category", "subcategory", "set_id", "figure_id", "question_id", "question", "gt_answer", "image"),
                  to_item, metrics=metrics)
