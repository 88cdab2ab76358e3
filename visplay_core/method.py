"""The method's knobs, and the two settings we can run: the paper's and the official code's.

The defaults are the paper's (arXiv 2511.15661). The official VisPlay code differs from the paper in
the uncertainty form, ReLU, the reward of invalid questions and whether they join the clustering, the
BLEU used to compare questions, the clustering scope, the curation window, the number of Reasoner
samples used to curate and the Reasoner's format bonus.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

UncertaintyForm = Literal["1-|2c-1|", "min(c,1-c)"]
"""How the Questioner's uncertainty reward is computed from the Reasoner's confidence c."""

BleuForm = Literal["sacrebleu", "nltk"]
"""How two questions' BLEU is scored: sacrebleu's (13a tokens, effective order, the mean of both
directions), or NLTK's ``sentence_bleu`` with smoothing method 1 on whitespace tokens, the earlier
question as hypothesis (the official code's)."""


UNANSWERABLE_VOTE_SHARE = 0.5
"""The default share of a question's m answers saying "none" that makes it invalid: their majority."""


class MethodConfig(BaseModel):
    """Everything that defines the reward and curation rules of one VisPlay variant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uncertainty: UncertaintyForm = Field("1-|2c-1|", description="uncertainty reward form")
    relu: bool = Field(True, description="clip the Questioner's reward at 0 from below")
    invalid_reward: float = Field(0.0, description="Questioner reward for an unreadable question")
    cluster_invalid: bool = Field(
        False, description="unreadable questions join the clustering as empty questions and pay their penalty"
    )
    bleu: BleuForm = Field("sacrebleu", description="the BLEU that compares two questions")
    diversity_scope: Literal["group", "batch"] = Field(
        "group", description="cluster questions within each image's group, or over the whole batch"
    )
    diversity_weight: float = Field(1.0, ge=0, description="lambda, weight of the diversity penalty")
    bleu_distance_threshold: float = Field(
        0.5, ge=0, le=1, description="clusters merge while their mean 1 - BLEU distance is strictly below this"
    )
    tau_low: float = Field(0.25, description="lowest confidence a curated question may have")
    tau_high: float = Field(0.75, description="highest confidence a curated question may have")
    unanswerable_vote_share: float = Field(
        UNANSWERABLE_VOTE_SHARE, gt=0, le=1, description="a question is invalid when at least this share of the "
        "Reasoner's m answers say it does not apply ('none'); 0.5: when they are the majority")
    max_label_share: float | None = Field(
        None, gt=0, le=1, description="curation keeps at most this share of one pseudo-label among the curated "
        "questions of a kind (label-free: reads only pseudo-labels); unset: no cap")
    m_questioner: int = Field(10, ge=1, description="Reasoner samples per question to reward the Questioner")
    m_curation: int = Field(10, ge=1, description="Reasoner samples per question to curate")
    reasoner_format_weight: float = Field(
        0.0, ge=0, le=1, description="Reasoner reward = (1 - w) * accuracy + w * format"
    )

    def questioner_slice(self) -> dict:
        """The fields that define the Questioner's reward: what its stages are cached on (a sweep over
        the curation window or the Reasoner's reward reuses the first iteration's Questioner stages)."""
        return self.model_dump(exclude={"tau_low", "tau_high", "m_curation", "reasoner_format_weight", "max_label_share"})

    @model_validator(mode="after")
    def _check_window(self) -> MethodConfig:
        if not 0 <= self.tau_low <= self.tau_high <= 1:
            raise ValueError(
                f"the curation window needs 0 <= tau_low <= tau_high <= 1, "
                f"got tau_low={self.tau_low}, tau_high={self.tau_high}"
            )
        return self


METHOD_PRESETS: dict[str, MethodConfig] = {
    "paper": MethodConfig(),
    "official-code": MethodConfig(
        uncertainty="min(c,1-c)",
        relu=False,
        invalid_reward=-1.0,
        cluster_invalid=True,
        bleu="nltk",
        diversity_scope="batch",
        tau_low=0.3,
        tau_high=0.8,
        m_questioner=10,
        m_curation=9,
        reasoner_format_weight=0.1,
    ),
}


def method_preset(name: str) -> MethodConfig:
    """The preset called ``name``; a ``ValueError`` naming the known presets if there is none."""
    try:
        return METHOD_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown method preset {name!r}; known presets: {', '.join(METHOD_PRESETS)}") from None
