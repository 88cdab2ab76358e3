"""The Model Registry's aliases of a line, and the kind of visplay's MLflow experiment, on a real SQLite store."""

import pytest
from mlflow.tracking import MlflowClient

from tasks.mlflow_client import EXPERIMENT, experiment_id
from tasks.registry import beats, better_on_shapes, line_alias, register_model

NAME = "visplay-reasoner"


@pytest.mark.parametrize("accuracy, best, moves", [
    (0.6, 0.5, True), (0.5, 0.5, False), (0.4, 0.5, False),  # only a higher accuracy beats the best
    (0.1, None, True),  # any measured accuracy beats none (no best yet, or one never measured)
    (None, 0.5, False), (None, None, False),  # an unmeasured version beats nothing
])
def test_beats(accuracy, best, moves):
    assert beats(accuracy, best) is moves


def test_line_alias_keeps_to_the_characters_an_alias_may_hold():
    assert line_alias("nightly", "best") == "nightly-best"
    assert line_alias("Exp.v2 a/b", "best") == "exp-v2-a-b-best"
    assert line_alias("sweep-lr_3-s1", "best") == "sweep-lr-3-s1-best"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("registry")
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return client, experiment_id(client, home), home


def test_the_experiment_is_model_training_even_one_made_before(store):
    client, exp, home = store
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    client.delete_experiment_tag(exp, "mlflow.experimentKind")  # as visplay made it before it marked the kind
    assert experiment_id(client, home) == exp
    assert client.get_experiment_by_name(EXPERIMENT).tags["mlflow.experimentKind"] == "custom_model_development"


def test_best_moves_only_to_a_version_that_beats_it(store):
    client, exp, _ = store
    best = line_alias("nightly", "best")

    def night(accuracy: str | None, model_id: str | None = None, line: str = "nightly") -> str:
        model_id = model_id or client.create_logged_model(exp, name="reasoner").model_id
        tags = {"shapes_accuracy": accuracy} if accuracy is not None else {}
        register_model(client, NAME, model_id, tags, aliases={line_alias(line, "best"): better_on_shapes})
        return model_id

    def holder(alias: str = best) -> int:
        return int(client.get_model_version_by_alias(NAME, alias).version)

    first = night("0.500")
    assert holder() == 1
    night("0.400")  # worse
    night(None)  # not measured
    night("0.500")  # as good, not better
    assert holder() == 1
    night("0.600")
    assert holder() == 5
    night("0.700", line="other")  # another line's best is its own
    assert holder() == 5 and holder(line_alias("other", "best")) == 6
    night("0.500", model_id=first)  # a rerun that restored the first night's Reasoner: no new version
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 6 and holder() == 5
