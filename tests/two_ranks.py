"""One rank of tests/test_two_processes.py's reward check, run under `accelerate launch` with two processes:
each rank scores its contiguous half of the completions (as TRL hands them out) with the Questioner's
reward function of each method preset (the official code's clusters the batch, the paper's each image's
group), and writes its rewards and the metric the function logged to OUT/rank-<i>.json.

Usage: two_ranks.py OUT
"""

import json
import sys
from pathlib import Path

from accelerate import PartialState

from visplay_core.method import method_preset
from visplay_core.rewards import make_questioner_reward_func

# Six completions of three images (G = 2), three per rank: image B's group is split over the two ranks;
# near-copies of one question sit on both ranks; one completion holds no question.
COMPLETIONS = ["<question>What color is the car?</question>", "<question>How many dogs are there?</question>",
               "<question>What color is the car ?</question>", "<question>Is there a tree on the left?</question>",
               "no question here", "<question>What colour is the car?</question>"]
IMAGE_IDS = ["A", "A", "B", "B", "C", "C"]
CONFIDENCE = {"What color is the car?": 0.5, "How many dogs are there?": 0.75, "What color is the car ?": 0.5,
              "Is there a tree on the left?": 0.5, "What colour is the car?": 0.25}


DRAWS = []  # the draw numbers the reward function seeded this rank's votes with


def confidences(questions: list, images: list, step: int) -> list:
    DRAWS.append(step)
    return [None if q is None else CONFIDENCE[q] for q in questions]


if __name__ == "__main__":
    state = PartialState(cpu=True)
    half = len(COMPLETIONS) // state.num_processes
    mine = slice(state.process_index * half, (state.process_index + 1) * half)
    record = {"world_size": state.num_processes}
    for preset in ("official-code", "paper"):
        logged = {}
        reward = make_questioner_reward_func(confidences, method_preset(preset))
        rewards = reward(prompts=[None] * half, completions=COMPLETIONS[mine], image_id=IMAGE_IDS[mine],
                         log_metric=logged.__setitem__)
        record[preset] = {"rewards": rewards, "logged": logged}
    record["draws"] = DRAWS
    (Path(sys.argv[1]) / f"rank-{state.process_index}.json").write_text(json.dumps(record))
