"""Stages as MLflow runs, cached by content: the resume machinery of a self-evolution run.

A stage's identity is its cache key: a hash of its name, its slice of the configuration and the keys of
its inputs. Its outputs are written to ``HOME/stages/<stage>-<key>/`` atomically, logged to MLflow as
artifacts under ``outputs/``, and only then is its MLflow run tagged ``visplay.complete``. A rerun finds
finished stages by key and restores them: from the local folder when it is there, else by downloading
the artifacts from MLflow. Anything less than complete (an exception, Ctrl-C, SIGKILL) is recomputed.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import http.client
import logging
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import httpx
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModel, LoggedModelOutput, Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from pydantic import BaseModel
from requests.exceptions import ChunkedEncodingError, ConnectionError as RequestsConnectionError
from urllib3.exceptions import ProtocolError

from visplay_core.config import VisPlayConfig
from visplay_core.io import atomic_dir, write_json

EXPERIMENT = "visplay"
# The kind MLflow 3 records of an experiment (the tag its UI's experiment type selector sets): model training,
# not GenAI. MLflow 3.17's UI opens an experiment in the view its URL names, though (see ``mlflow_run_url``).
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
DONE = "_COMPLETE"
ROOT = Path(__file__).resolve().parent.parent
RETRY_SECONDS = 300  # how long an MLflow call waits for its server to answer again
REQUEST_TAG = "visplay.request"  # a token on what a create call makes, so that its repetition finds it


def interrupted(error: BaseException | None) -> bool:
    """Whether a call to a server (MLflow's through requests, Prefect's through httpx) failed for want of an
    answer (refused or reset connection, a response cut short mid-way), not because the server answered with
    an error; the error or any it was raised from."""
    while error is not None:
        if isinstance(error, (RequestsConnectionError, ChunkedEncodingError, ProtocolError, http.client.HTTPException,
                              httpx.TransportError, ConnectionError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _repeat(call: Callable, *args, made: Callable[[], Any] | None = None, **kwargs):
    """``call(*args, **kwargs)``, repeated while it is interrupted (for up to ``RETRY_SECONDS``). ``made()``: for a
    call that creates something, what an interrupted attempt may have created already (None if nothing)."""
    deadline, attempts = time.monotonic() + RETRY_SECONDS, 0
    while True:
        try:
            found = made() if made is not None and attempts else None
            return found if found is not None else call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only interruptions are repeated
            if not interrupted(e) or time.monotonic() > deadline:
                raise
            attempts += 1
            logging.getLogger("visplay").warning("MLflow call %s interrupted (%s); repeating it", call.__name__,
                                                 type(e).__name__)
            time.sleep(1.0)


class ResilientClient(MlflowClient):
    """An ``MlflowClient`` whose calls survive a tracking server that dies at any moment, a request's answer
    cut short included: an interrupted call is repeated until the server answers again. Repeating is safe:
    logging metrics, params and tags again changes nothing (MLflow drops exact duplicates), artifacts are
    overwritten, and what a create call makes carries a token (tag ``visplay.request``) that its repetition
    looks for before creating it again."""

    def __getattribute__(self, name: str):
        attr = super().__getattribute__(name)
        if name.startswith("_") or name in _CREATES or not callable(attr):
            return attr
        return functools.partial(_repeat, attr)

    def create_run(self, experiment_id, start_time=None, tags=None, run_name=None):
        token = uuid.uuid4().hex
        create = super().create_run

        def made():
            found = MlflowClient.search_runs(self, [experiment_id], f"tags.`{REQUEST_TAG}` = '{token}'", max_results=1)
            return found[0] if found else None

        return _repeat(create, experiment_id, start_time, {**(tags or {}), REQUEST_TAG: token}, run_name, made=made)

    def create_logged_model(self, experiment_id, name=None, source_run_id=None, tags=None, params=None, model_type=None):
        token = uuid.uuid4().hex
        create = super().create_logged_model

        def made():
            found = MlflowClient.search_logged_models(self, [experiment_id], f"tags.`{REQUEST_TAG}` = '{token}'",
                                                      max_results=1)
            return found[0] if found else None

        return _repeat(create, experiment_id, name, source_run_id, {**(tags or {}), REQUEST_TAG: token}, params,
                       model_type, made=made)


_CREATES = {"create_run", "create_logged_model"}


def tracking_client(uri: str) -> MlflowClient:
    """The MLflow client of every visplay process (see ``ResilientClient``). On an embedded SQLite store the
    first touch creates or migrates its tables; processes started side by side on one home take turns at it
    (``flock`` on ``<db>.lock``), where they would otherwise race (``duplicate column name``). The client
    opens its store when made, so the lock comes first."""
    if uri.startswith("sqlite:///"):
        _sqlite_store_ready(uri)
    return ResilientClient(uri)


@functools.cache
def _sqlite_store_ready(uri: str) -> None:
    with open(f"{uri.removeprefix('sqlite:///')}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ResilientClient(uri).search_experiments(max_results=1)


class RunContext(BaseModel):
    """What every stage needs to know about the run it belongs to."""

    home: str
    run: str
    config: VisPlayConfig
    tracking_uri: str
    experiment_id: str
    run_id: str  # the MLflow run of the whole self-evolution run
    tags: dict[str, str] = {}  # set on every MLflow run of the run: its Prefect flow run, its code
    finished: dict[str, str] = {}  # cache key -> MLflow run id of the stages it had recorded when it began

    @property
    def client(self) -> MlflowClient:
        return tracking_client(self.tracking_uri)


class StageResult(BaseModel):
    stage: str
    iteration: int
    key: str
    folder: str
    run_id: str  # the MLflow run that recorded the stage's outputs
    metrics: dict[str, Any]
    cached: bool
    seconds: float  # the whole stage: restore or compute, and recording
    compute_seconds: float = 0.0  # the stage's own work (models, data), without tracking


class RunInProgressError(RuntimeError):
    """The run's lock is held: the same run is already in flight."""


@contextmanager
def run_lock(home: Path, run: str):
    """Hold ``HOME/runs/<run>/lock`` (``flock``) for the whole run; a second run of the same name fails at once.

    The kernel drops the lock when its holder exits, however it exits: nothing stale is left to clean up.
    """
    path = home / "runs" / run / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunInProgressError(f"run {run} is already in progress ({holder} holds {path}); "
                                     "wait for it to finish or give this run another name") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def tracking_uri(home: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set (a server), else an embedded SQLite store under the run's home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(home / 'mlflow.db').resolve()}"


def experiment_id(client: MlflowClient, home: Path) -> str:
    """The id of the experiment of visplay's runs, created (of MLflow 3's kind model training) if missing; one
    created before visplay marked its kind is marked once."""
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        if EXPERIMENT_KIND not in found.tags:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return found.experiment_id
    local = not os.environ.get("MLFLOW_TRACKING_URI")
    try:
        return client.create_experiment(EXPERIMENT, tags={EXPERIMENT_KIND: MODEL_TRAINING},
                                        artifact_location=(home / "mlartifacts").resolve().as_uri() if local else None)
    except MlflowException as e:  # another run created it meanwhile (or this one, in an interrupted request)
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def link_tags(entry_point: str) -> dict[str, str]:
    """Where a run comes from, as MLflow tags: the Prefect flow run the caller runs in (id, deployment, its page
    in the Prefect UI when Prefect has one, also as a link in the run's description) and the code (git
    commit, entry point)."""
    from prefect.runtime import deployment, flow_run
    from prefect.settings import PREFECT_UI_URL

    tags = {"mlflow.source.type": "JOB", "mlflow.source.name": entry_point}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if commit.returncode == 0:
        tags["mlflow.source.git.commit"] = commit.stdout.strip()
    if flow_run.id:
        tags["prefect.flow_run_id"] = flow_run.id
        if PREFECT_UI_URL.value():
            tags["prefect.flow_run_url"] = flow_run.ui_url
            tags["mlflow.note.content"] = f"Prefect flow run: [{flow_run.ui_url}]({flow_run.ui_url})"  # the run's description
    if deployment.id:
        tags["prefect.deployment"] = f"{flow_run.flow_name}/{deployment.name}"
    return tags


def mlflow_run_url(uri: str, experiment: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, when the store is a server, in the UI's model training view: MLflow
    3.17's UI picks an experiment's view from its ``workflowType`` (the URL's, else the browser's last choice,
    else GenAI), not from the experiment's kind, and the run page's links to its experiment keep it."""
    return (f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"
            if uri.startswith(("http://", "https://")) else None)


def cache_key(stage: str, inputs: dict[str, Any]) -> str:
    payload = json.dumps({"stage": stage, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stage_key(stage: str, inputs: dict[str, Any], params: dict[str, Any]) -> str:
    """The cache key ``run_stage`` gives a stage with these inputs' keys and this configuration slice."""
    return cache_key(stage, {"params": params, **inputs})


def open_run(client: MlflowClient, experiment: str, name: str, tags: dict[str, str], parent: str | None = None) -> str:
    """The MLflow run tagged with ``tags`` (reopened), or a new one nested under ``parent``."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment], query, max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    all_tags = dict(tags, **({"mlflow.parentRunId": parent} if parent else {}))
    return client.create_run(experiment, tags=all_tags, run_name=name).info.run_id


def finished_stage(client: MlflowClient, experiment: str, key: str):
    """The complete MLflow run of the stage with this cache key, or None."""
    runs = client.search_runs([experiment], f"tags.`visplay.cache_key` = '{key}' and "
                              "tags.`visplay.complete` = 'true'", max_results=1)
    return runs[0] if runs else None


def finished_stages(client: MlflowClient, experiment: str, run: str) -> dict[str, str]:
    """Cache key -> MLflow run id of every complete stage the run ``run`` recorded: a rerun finds its stages
    here with one query, not one a stage (about 10 ms each). One recorded by another run with the same key,
    or since, is found by ``finished_stage``."""
    if "'" in run:  # not expressible in a filter string; every stage is then looked up on its own
        return {}
    runs = client.search_runs([experiment], f"tags.`visplay.run` = '{run}' and tags.`visplay.complete` = 'true'")
    return {r.data.tags["visplay.cache_key"]: r.info.run_id for r in runs}


def _flat(prefix: str, data: Any) -> dict[str, str]:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(data)[:500]}


def stage_folder(ctx: RunContext, stage: str, key: str):
    """The stage's folder, fetched from MLflow when a finished copy is recorded there and not here, and the id
    of that finished MLflow run (None when there is none). The folder holds the stage's outputs iff it has
    ``DONE``."""
    folder = Path(ctx.home) / "stages" / f"{stage}-{key}"
    finished = ctx.finished.get(key)
    if finished is None and (found := finished_stage(ctx.client, ctx.experiment_id, key)) is not None:
        finished = found.info.run_id
    if finished is not None and not (folder / DONE).exists():
        with atomic_dir(folder) as tmp:
            ctx.client.download_artifacts(finished, "outputs", str(tmp))
            for item in (tmp / "outputs").iterdir():
                item.rename(tmp / item.name)
            (tmp / "outputs").rmdir()
    return folder, finished


def run_stage(ctx: RunContext, iteration: int, iteration_run_id: str, stage: str, inputs: dict[str, Any],
              params: dict[str, Any], compute: Callable[[Path], dict]) -> StageResult:
    """Restore the stage if a finished copy exists, else compute it into a fresh folder and record it.

    ``compute(folder)`` writes the stage's outputs into ``folder`` and returns its metrics: scalars, and
    lists of ``{"step": s, name: value}`` rows for curves. ``params`` is the stage's configuration slice,
    part of its cache key.
    """
    start = time.time()
    key = stage_key(stage, inputs, params)
    client = ctx.client
    folder, finished = stage_folder(ctx, stage, key)
    cached = (folder / DONE).exists()
    tags = {"visplay.run": ctx.run, "visplay.iteration": str(iteration), "visplay.stage": stage,
            "visplay.cache_key": key}
    if cached and finished is not None:
        _say(f"iteration {iteration} · {stage}: restored ({key})")
        return StageResult(stage=stage, iteration=iteration, key=key, folder=str(folder), run_id=finished,
                           cached=True, metrics=json.loads((folder / "metrics.json").read_text()), seconds=time.time() - start)
    _say(f"iteration {iteration} · {stage}: {'recording' if cached else 'computing'} ({key})")
    _clear_leftovers(ctx, key, folder)
    compute_seconds = 0.0
    run_id = client.create_run(ctx.experiment_id, run_name=f"{iteration}-{stage}",
                               tags={**tags, **ctx.tags, "mlflow.parentRunId": iteration_run_id}).info.run_id
    try:
        if not cached:  # a folder finished locally but never recorded is logged, not recomputed
            with atomic_dir(folder) as tmp:
                began = time.time()
                metrics = compute(tmp)
                compute_seconds = time.time() - began
                write_json(tmp / "metrics.json", metrics)
                (tmp / DONE).write_text(key)
        metrics = json.loads((folder / "metrics.json").read_text())
        _log(client, run_id, params, metrics)
        client.log_artifacts(run_id, str(folder), "outputs")
        client.set_tag(run_id, "visplay.complete", "true")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    _say(f"iteration {iteration} · {stage}: done in {time.time() - start:.1f} s")
    return StageResult(stage=stage, iteration=iteration, key=key, folder=str(folder), run_id=run_id, cached=cached,
                       metrics=metrics, seconds=time.time() - start, compute_seconds=compute_seconds)


def _clear_leftovers(ctx: RunContext, key: str, folder: Path) -> None:
    """Remove what a killed attempt of this stage left: temporary folders, MLflow runs still 'RUNNING'."""
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for run in ctx.client.search_runs([ctx.experiment_id], f"tags.`visplay.cache_key` = '{key}' and "
                                      "attributes.status = 'RUNNING'"):
        ctx.client.set_terminated(run.info.run_id, "KILLED")


def _say(message: str) -> None:
    """A progress line in the Prefect task's log (shown on the console and in the UI)."""
    try:
        get_run_logger().info(message)
    except MissingContextError:
        logging.getLogger("visplay").info(message)


def _log(client: MlflowClient, run_id: str, params: dict, metrics: dict) -> None:
    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for name, series in metrics.items():
        if isinstance(series, list) and series and isinstance(series[0], dict) and "step" in series[0]:
            rows += [Metric(f"{name}.{k}", float(v), now, int(r["step"])) for r in series for k, v in r.items()
                     if k != "step" and isinstance(v, (int, float))]
    for i in range(0, len(rows), 900):
        client.log_batch(run_id, metrics=rows[i:i + 900])
    log_params(client, run_id, params)


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    """Nested ``params`` as MLflow params with dotted keys (``questioner.steps``), 100 per request."""
    rows = [Param(k, v) for k, v in _flat("", params).items()]
    for i in range(0, len(rows), 100):
        client.log_batch(run_id, params=rows[i:i + 100])


def log_iteration(client: MlflowClient, run_id: str, step: int, metrics: dict[str, float],
                  model_ids: list[str] | None = None) -> None:
    """``metrics`` on the run at ``step``, each also attached to the logged models ``model_ids`` (the run keeps
    one point per metric all the same: MLflow drops the exact duplicates)."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step, model_id=m) for k, v in metrics.items()
                                      if v is not None for m in (model_ids or [None])])


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
            _say(f"{name}@{alias} is now version {version.version}")


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
