import pytest
from pydantic import ValidationError

from visplay_core.method import METHOD_PRESETS, MethodConfig, method_preset


def test_paper_preset():
    paper = method_preset("paper")
    assert paper == MethodConfig()
    assert paper.uncertainty == "1-|2c-1|"
    assert paper.relu is True
    assert paper.invalid_reward == 0.0
    assert paper.cluster_invalid is False
    assert paper.bleu == "sacrebleu"
    assert paper.diversity_scope == "group"
    assert paper.diversity_weight == 1.0
    assert paper.bleu_distance_threshold == 0.5
    assert (paper.tau_low, paper.tau_high) == (0.25, 0.75)
    assert (paper.m_questioner, paper.m_curation) == (10, 10)
    assert paper.reasoner_format_weight == 0.0


def test_official_code_preset():
    official = method_preset("official-code")
    assert official.uncertainty == "min(c,1-c)"
    assert official.relu is False
    assert official.invalid_reward == -1.0
    assert official.cluster_invalid is True
    assert official.bleu == "nltk"
    assert official.diversity_scope == "batch"
    assert official.diversity_weight == 1.0
    assert official.bleu_distance_threshold == 0.5
    assert (official.tau_low, official.tau_high) == (0.3, 0.8)
    assert (official.m_questioner, official.m_curation) == (10, 9)
    assert official.reasoner_format_weight == 0.1


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="paper, official-code"):
        method_preset("nope")


def test_presets_are_frozen():
    with pytest.raises(ValidationError):
        METHOD_PRESETS["paper"].relu = False


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError, match="extra"):
        MethodConfig(lambda_=2.0)


def test_unknown_uncertainty_form_is_rejected():
    with pytest.raises(ValidationError):
        MethodConfig(uncertainty="paper")


@pytest.mark.parametrize(("low", "high"), [(0.8, 0.3), (-0.1, 0.5), (0.5, 1.1)])
def test_bad_window_is_rejected(low, high):
    with pytest.raises(ValidationError, match="tau_low <= tau_high"):
        MethodConfig(tau_low=low, tau_high=high)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (0.5, 0.5)])
def test_edge_windows_are_accepted(low, high):
    assert MethodConfig(tau_low=low, tau_high=high).tau_low == low


def test_round_trips_through_json():
    official = method_preset("official-code")
    assert MethodConfig.model_validate_json(official.model_dump_json()) == official
