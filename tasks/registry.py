"""A run's models and data in MLflow: each GRPO checkpoint as a logged model, the final Reasoner as a version of
a registered model whose aliases (``<line>-best``) move by their rules, and the datasets a run trains on.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModel, LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from .stage_cache import RunContext, StageResult, say


def checkpoint_uri(stage: StageResult) -> str:
    """Where a GRPO stage's checkpoint lies in MLflow: its stage run's ``outputs/model``."""
    return f"runs:/{stage.run_id}/outputs/model"


def log_model(ctx: RunContext, run_id: str, stage: StageResult, role: str) -> LoggedModel:
    """A GRPO stage's checkpoint as an MLflow logged model ``<role>-iteration-<k>``, listed as an output of
    ``run_id``. One logged model per checkpoint (found again by the stage's cache key): it names the stage run
    that holds the weights (tag ``visplay.checkpoint``, and the ``checkpoint`` of its only artifact, an
    ``MLmodel`` file) rather than holding a second copy."""
    client = ctx.client
    found = client.search_logged_models([ctx.experiment_id], f"tags.`visplay.cache_key` = '{stage.key}'", max_results=1)
    if found:
        model = found[0]
    else:
        model = client.create_logged_model(
            ctx.experiment_id, name=f"{role}-iteration-{stage.iteration}", source_run_id=stage.run_id, model_type=role,
            tags={"visplay.cache_key": stage.key, "visplay.checkpoint": checkpoint_uri(stage)})
        with tempfile.TemporaryDirectory() as tmp:
            Model(run_id=stage.run_id, model_id=model.model_id, metadata={"checkpoint": checkpoint_uri(stage)}).save(
                Path(tmp) / MLMODEL_FILE_NAME)
            client.log_model_artifacts(model.model_id, tmp)
        client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, stage.iteration)])
    return model


AliasRule = Callable[[ModelVersion, ModelVersion | None], bool]  # (new version, the alias's version) -> move it?


def slug(text: str) -> str:
    """``text`` in lowercase letters, digits and dashes: a name that a Prefect artifact key, an MLflow alias and a
    file name can all hold (``Sweep lr=1e-4`` → ``sweep-lr-1e-4``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def line_alias(line: str, kind: str) -> str:
    """The registered model's alias ``<line>-<kind>`` (``nightly-best``), the line's name as a ``slug``."""
    return f"{slug(line)}-{kind}"


def beats(accuracy: float | None, best: float | None) -> bool:
    """Whether a version of ShapesBench accuracy ``accuracy`` beats the best one so far (``best``; None when
    there is none, or it was not measured). An unmeasured version beats nothing."""
    return accuracy is not None and (best is None or accuracy > best)


def shapes_accuracy(version: ModelVersion | None) -> float | None:
    """The ShapesBench accuracy a registered version is tagged with (None: none, or no version)."""
    value = version.tags.get("shapes_accuracy") if version is not None else None
    return None if value is None else float(value)


def better_on_shapes(new: ModelVersion, held: ModelVersion | None) -> bool:
    """The rule of ``<line>-best``: it moves to the new version only when its ShapesBench accuracy beats that of
    the version it points at."""
    return beats(shapes_accuracy(new), shapes_accuracy(held))


def register_model(client: MlflowClient, name: str, model_id: str, tags: dict[str, str],
                   aliases: dict[str, AliasRule] | None = None) -> None:
    """The logged model ``model_id`` as a version of the registered model ``name`` (created if missing), tagged
    ``tags``. Its source is ``models:/<model_id>``, so the version and the logged model link to each other (tag
    ``mlflow.modelVersions`` on the model). A logged model is registered once: a run whose last Reasoner is a
    version already (a rerun that restored it) adds none. ``aliases``: each alias moves to the version when
    its rule says so, given the version it points at (None when it points at none)."""
    source = f"models:/{model_id}"
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    found = client.search_model_versions(f"name = '{name}' and source_path = '{source}'")
    if found:
        version = found[0]
    else:
        with _process_tracking_uri(client.tracking_uri):
            version = client.create_model_version(name, source, tags=tags, model_id=model_id, await_creation_for=0)
    listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    entry = {"name": name, "version": int(version.version)}
    if entry not in listed:  # a server lists it itself, a local store does not
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*listed, entry])})
    held = client.get_registered_model(name).aliases
    for alias, moves in (aliases or {}).items():
        if moves(version, client.get_model_version(name, held[alias]) if alias in held else None):
            client.set_registered_model_alias(name, alias, version.version)
            say(f"{name}@{alias} is now version {version.version}")


@contextmanager
def _process_tracking_uri(uri: str):
    """Point the process's MLflow tracking URI at ``uri`` meanwhile: a local store's model registry looks a
    ``models:/<id>`` source up there, not in its client's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def log_dataset(client: MlflowClient, run_id: str, name: str, path: str | Path, digest: str) -> None:
    """A dataset the run trains on, as an MLflow dataset input (metadata: name, content digest, location)."""
    source = get_dataset_source_from_json(json.dumps({"uri": Path(path).resolve().as_uri()}), "local")
    dataset = MetaDataset(source, name=name, digest=digest)
    client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])])
