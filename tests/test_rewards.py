import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visplay_core.method import MethodConfig, method_preset
from visplay_core.rewards import (
    Candidate,
    Vote,
    bleu_distances,
    completion_text,
    curate,
    diversity_penalties,
    format_reward,
    in_window,
    majority_vote,
    make_questioner_reward_func,
    questioner_rewards,
    reasoner_accuracy_reward,
    reasoner_reward_funcs,
    uncertainty_reward,
)

PAPER = method_preset("paper")
OFFICIAL = method_preset("official-code")

# Three near-copies (BLEU distance <= 0.5 to each other) and five questions unlike everything else.
NEAR_COPIES = ["What color is the car?", "What color is the car ?", "What colour is the car?"]
DISTINCT = [
    "How many dogs are in the picture?",
    "Is there a tree on the left?",
    "Where is the sun located in this image?",
    "What is the man holding in his left hand?",
    "Which animal is the largest?",
]
GROUP_OF_8 = NEAR_COPIES + DISTINCT

questions_or_none = st.lists(st.one_of(st.none(), st.sampled_from(GROUP_OF_8), st.text(min_size=1)), max_size=8)


# --- majority vote -------------------------------------------------------------------------------


def test_majority_vote_normalizes_and_counts_unanswered_in_m():
    assert majority_vote(["2", "two", "3", None]) == Vote(label="2", confidence=0.5, votes={"2": 2, "3": 1}, m=4)


def test_majority_vote_unanswered_never_wins():
    vote = majority_vote([None, None, None, "cat"])
    assert (vote.label, vote.confidence) == ("cat", 0.25)
    vote = majority_vote(["?", "?", "dog"])  # "?" normalizes to nothing: no answer
    assert (vote.label, vote.confidence, vote.votes) == ("dog", pytest.approx(1 / 3), {"dog": 1})


@pytest.mark.parametrize(
    ("answers", "label"),
    [
        (["cat", "dog"], "cat"),
        (["dog", "cat"], "dog"),
        (["dog", "cat", "cat", "dog"], "dog"),
        ([None, "b", "a", "a", "b"], "b"),
    ],
)
def test_majority_vote_ties_go_to_the_first_answer(answers, label):
    assert majority_vote(answers).label == label


@pytest.mark.parametrize(("answers", "m"), [([], 0), ([None, None], 2), (["", "  "], 2)])
def test_majority_vote_without_answers(answers, m):
    assert majority_vote(answers) == Vote(label=None, confidence=0.0, votes={}, m=m)


def test_majority_vote_unicode():
    vote = majority_vote(["Ünï", "ünï.", "猫"])
    assert (vote.label, vote.confidence) == ("ünï", pytest.approx(2 / 3))


@given(st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=12))
def test_majority_vote_confidence_is_the_label_share(answers):
    vote = majority_vote(answers)
    assert vote.m == len(answers)
    assert sum(vote.votes.values()) <= vote.m
    if vote.label is None:
        assert vote.confidence == 0.0
    else:
        assert vote.confidence == vote.votes[vote.label] / vote.m == max(vote.votes.values()) / vote.m


# --- uncertainty reward --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("c", "paper", "official"),
    [(0.7, 0.6, 0.3), (0.3, 0.6, 0.3), (0.5, 1.0, 0.5), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.9, 0.2, 0.1)],
)
def test_uncertainty_reward(c, paper, official):
    assert uncertainty_reward(c, "1-|2c-1|") == pytest.approx(paper)
    assert uncertainty_reward(c, "min(c,1-c)") == pytest.approx(official)


def test_uncertainty_reward_default_is_the_paper_form():
    assert uncertainty_reward(0.7) == pytest.approx(0.6)


@pytest.mark.parametrize("c", [-0.1, 1.1])
def test_uncertainty_reward_rejects_confidences_outside_0_1(c):
    with pytest.raises(ValueError, match="confidence"):
        uncertainty_reward(c)


@given(st.floats(0, 1))
def test_uncertainty_reward_is_symmetric_around_one_half(c):
    paper = uncertainty_reward(c, "1-|2c-1|")
    assert 0 <= paper <= 1
    assert paper == pytest.approx(uncertainty_reward(1 - c, "1-|2c-1|"))
    assert uncertainty_reward(c, "min(c,1-c)") == pytest.approx(paper / 2)


# --- diversity penalties -------------------------------------------------------------------------


def test_diversity_penalties_group_of_8():
    assert diversity_penalties(GROUP_OF_8) == pytest.approx([3 / 8] * 3 + [1 / 8] * 5)


def test_diversity_penalties_edge_cases():
    assert diversity_penalties([]) == []
    assert diversity_penalties(["Why?"]) == [1.0]
    assert diversity_penalties(["Why?"] * 4) == [1.0] * 4  # identical copies, BLEU a hair above 100
    assert diversity_penalties(DISTINCT[:2]) == [0.5, 0.5]
    assert diversity_penalties(["", ""]) == [0.5, 0.5]  # empty strings share no n-gram
    assert diversity_penalties(["猫は何匹いますか?", "猫は何匹いますか?", "Is it raining?"]) == pytest.approx(
        [2 / 3, 2 / 3, 1 / 3]
    )


def test_diversity_penalties_threshold():
    # "colour" vs "color" is at distance ~0.46: one cluster at 0.5, two at 0.4.
    assert diversity_penalties(NEAR_COPIES[::2], distance_threshold=0.5) == [1.0, 1.0]
    assert diversity_penalties(NEAR_COPIES[::2], distance_threshold=0.4) == [0.5, 0.5]


def test_distinct_one_word_questions_do_not_merge_at_the_threshold():
    # sacrebleu: "Cat?" vs "Dog?" share only "?": BLEU exactly 50, distance exactly 0.5. Clusters merge
    # strictly below the threshold (sklearn's rule, as in the official code), so each stays alone.
    questions = ["Cat?", "Dog?", "Car?"]
    assert bleu_distances(questions).tolist() == [0.5, 0.5, 0.5]
    assert diversity_penalties(questions) == [1 / 3] * 3
    assert diversity_penalties(questions, distance_threshold=0.5000001) == [1.0] * 3
    assert questioner_rewards([0.5] * 3, questions, PAPER) == [1 - 1 / 3] * 3


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(GROUP_OF_8), st.text()), max_size=8))
def test_diversity_penalties_are_cluster_shares(questions):
    penalties = diversity_penalties(questions)
    n = len(questions)
    assert len(penalties) == n
    for p in set(penalties):
        assert 0 < p <= 1
        assert penalties.count(p) % round(p * n) == 0  # whole clusters of size p * n


# --- questioner rewards --------------------------------------------------------------------------


def test_questioner_rewards_group_of_8():
    assert questioner_rewards([0.7] * 8, GROUP_OF_8, PAPER) == pytest.approx([0.6 - 3 / 8] * 3 + [0.6 - 1 / 8] * 5)
    # NLTK BLEU on whitespace tokens: "colour" leaves the cluster (distance 0.71), " ?" stays (0.45).
    assert questioner_rewards([0.7] * 8, GROUP_OF_8, OFFICIAL) == pytest.approx(
        [0.3 - 2 / 8] * 2 + [0.3 - 1 / 8] * 6
    )


def test_questioner_rewards_relu_only_in_the_paper():
    assert questioner_rewards([1.0, 0.5], DISTINCT[:2], PAPER) == [0.0, 0.5]
    assert questioner_rewards([1.0, 0.5], DISTINCT[:2], OFFICIAL) == [-0.5, 0.0]


def test_questioner_rewards_diversity_weight():
    no_penalty = MethodConfig(diversity_weight=0.0)
    assert questioner_rewards([0.7] * 8, GROUP_OF_8, no_penalty) == pytest.approx([0.6] * 8)


def test_invalid_questions_get_the_invalid_reward():
    confidences = [0.5, None, 0.5]
    questions = [DISTINCT[0], None, DISTINCT[1]]
    # paper: left out of the clustering, so the two valid questions are a group of 2
    assert questioner_rewards(confidences, questions, PAPER) == [0.5, 0.0, 0.5]
    # official code: clustered as "", a singleton that counts in the group's size: -1 - 1/3
    assert questioner_rewards(confidences, questions, OFFICIAL) == pytest.approx([0.5 - 1 / 3, -1 - 1 / 3, 0.5 - 1 / 3])


def test_questioner_rewards_edge_cases():
    assert questioner_rewards([], [], PAPER) == []
    assert questioner_rewards([None, 0.5], [None, None], PAPER) == [0.0, 0.0]
    assert questioner_rewards([None, 0.5], [None, None], OFFICIAL) == [-1.5, -1.5]  # two "" never match
    assert questioner_rewards([0.5], ["Why?"], PAPER) == [0.0]  # alone: penalty 1
    with pytest.raises(ValueError, match="confidences"):
        questioner_rewards([0.5], ["Why?", "How?"], PAPER)


def test_clustering_scope():
    a, b, c = DISTINCT[:3]
    questions = [a, b, a, c]
    images = ["img1", "img1", "img2", "img2"]
    per_group = MethodConfig(relu=False, diversity_scope="group")
    per_batch = MethodConfig(relu=False, diversity_scope="batch")
    # Per image, each image's two questions differ: penalty 1/2 each.
    assert questioner_rewards([0.5] * 4, questions, per_group, group_ids=images) == [0.5] * 4
    # Over the batch, the two copies of `a` share a cluster: 2/4, the others 1/4.
    assert questioner_rewards([0.5] * 4, questions, per_batch, group_ids=images) == [0.5, 0.75, 0.5, 0.75]
    # Without group ids the input is one group.
    assert questioner_rewards([0.5] * 4, questions, per_group) == [0.5, 0.75, 0.5, 0.75]


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_paper_rewards_lie_in_0_1(data):
    questions = data.draw(questions_or_none)
    confidences = data.draw(st.lists(st.floats(0, 1), min_size=len(questions), max_size=len(questions)))
    rewards = questioner_rewards(confidences, questions, PAPER)
    assert len(rewards) == len(questions)
    assert all(0 <= r <= 1 for r in rewards)


# --- curation ------------------------------------------------------------------------------------


def candidate(c: float, question: str = "What is it?", image_id: str = "img", label: str | None = "x") -> Candidate:
    return Candidate(image_id=image_id, question=question, vote=Vote(label=label, confidence=c, votes={}, m=4))


@pytest.mark.parametrize(
    ("c", "paper", "official"),
    [
        (0.2, False, False),
        (0.25, True, False),
        (0.3, True, True),
        (0.75, True, True),
        (0.8, False, True),
        (0.9, False, False),
    ],
)
def test_in_window_ends_are_inclusive(c, paper, official):
    assert in_window(c, (PAPER.tau_low, PAPER.tau_high)) is paper
    assert in_window(c, (OFFICIAL.tau_low, OFFICIAL.tau_high)) is official


def test_curate_keeps_the_window():
    kept = curate([candidate(c, f"Q{i}?") for i, c in enumerate([0.0, 0.24, 0.25, 0.5, 0.75, 0.76, 1.0])], PAPER)
    assert [k.vote.confidence for k in kept] == [0.25, 0.5, 0.75]


def test_curate_drops_unlabeled_and_duplicates():
    first = candidate(0.5, "What is it?")
    candidates = [
        candidate(0.5, "Unlabeled?", label=None),
        candidate(0.1, "what  IS it?"),  # out of the window: does not block the later copy
        first,
        candidate(0.6, " what is  IT? "),
        candidate(0.5, "What is it?", image_id="other"),
        candidate(0.5, "What is that?"),
    ]
    assert curate(candidates, PAPER) == [first, candidates[4], candidates[5]]


def test_curate_empty():
    assert curate([], PAPER) == []
    assert curate(iter([candidate(0.5)]), PAPER) == [candidate(0.5)]


# --- reasoner reward -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "paper", "official"),
    [
        ("Two dogs. \\boxed{two}", 1.0, 1.0),
        ("\\boxed{3}", 0.0, 0.1),
        ("It is 2.", 0.0, 0.0),
        ("\\boxed{2", 0.0, 0.0),
    ],
)
def test_reasoner_reward(completion, paper, official):
    for method, expected in ((PAPER, paper), (OFFICIAL, official)):
        funcs, weights = reasoner_reward_funcs(method)  # as GRPO weighs them
        rewards = [f(prompts=["q"], completions=[as_messages(completion)], pseudo_label=["2"])[0] for f in funcs]
        assert sum(w * r for w, r in zip(weights, rewards)) == pytest.approx(expected)


# --- TRL adapters --------------------------------------------------------------------------------


def as_messages(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_completion_text():
    assert completion_text("abc") == "abc"
    assert completion_text(as_messages("abc")) == "abc"


@pytest.mark.parametrize("wrap", [str, as_messages])
def test_reasoner_trl_rewards(wrap):
    completions = [wrap("\\boxed{2}"), wrap("\\boxed{3}"), wrap("no box")]
    kwargs = {"completion_ids": [[1]] * 3, "trainer_state": None}
    labels = ["two", "2", "2"]
    assert reasoner_accuracy_reward([None] * 3, completions, pseudo_label=labels, **kwargs) == [1.0, 0.0, 0.0]
    assert format_reward([None] * 3, completions, **kwargs) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("wrap", [str, as_messages])
def test_questioner_reward_func(wrap):
    calls = []

    def score_confidence(questions, images, step):
        calls.append((questions, images, step))
        return [None if q is None else 0.5 for q in questions]

    reward_func = make_questioner_reward_func(score_confidence, PAPER)
    assert reward_func.__name__ == "questioner_reward"
    completions = [wrap(f"<question>{q}</question>") for q in DISTINCT[:3]] + [wrap("no question")]
    image_ids = ["img1", "img1", "img2", "img2"]
    rewards = reward_func([None] * 4, completions, image_id=image_ids, trainer_state=None)
    # img1: two unlike questions, 1 - 1/2 each; img2: one question alone (penalty 1) and an invalid one.
    assert rewards == [0.5, 0.5, 0.0, 0.0]
    assert calls == [(DISTINCT[:3] + [None], image_ids, 0)]

    reward_func([None] * 4, completions, image_id=image_ids, image=["I1", "I1", "I2", "I2"])
    assert calls[-1][1] == ["I1", "I1", "I2", "I2"]
