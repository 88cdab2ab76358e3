"""The MLflow side of every visplay process: a client that survives its tracking server dying at any moment,
the store a home uses, visplay's experiment, and what links a run to the outside (its Prefect flow run, its
code, its page in the MLflow UI).
"""

from __future__ import annotations

import fcntl
import functools
import http.client
import logging
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from requests.exceptions import ChunkedEncodingError, ConnectionError as RequestsConnectionError
from urllib3.exceptions import ProtocolError

EXPERIMENT = "visplay"
# The kind MLflow 3 records of an experiment (the tag its UI's experiment type selector sets): model training,
# not GenAI. MLflow 3.17's UI opens an experiment in the view its URL names, though (see ``mlflow_run_url``).
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
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
