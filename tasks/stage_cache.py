"""Stages as MLflow runs, cached by content: the resume machinery of a self-evolution run.

A stage's identity is its cache key: a hash of its name, its slice of the configuration and the keys of
its inputs. Its outputs are written to ``HOME/stages/<stage>-<key>/`` atomically, logged to MLflow as
artifacts under ``outputs/``, and only then is its MLflow run tagged ``visplay.complete``. A rerun finds
finished stages by key and restores them: from the local folder when it is there, else by downloading
the artifacts from MLflow. Anything less than complete (an exception, Ctrl-C, SIGKILL) is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from pydantic import BaseModel

from visplay_core.config import VisPlayConfig
from visplay_core.io import atomic_dir, write_json

from .mlflow_client import tracking_client

DONE = "_COMPLETE"


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
        say(f"iteration {iteration} · {stage}: restored ({key})")
        return StageResult(stage=stage, iteration=iteration, key=key, folder=str(folder), run_id=finished,
                           cached=True, metrics=json.loads((folder / "metrics.json").read_text()), seconds=time.time() - start)
    say(f"iteration {iteration} · {stage}: {'recording' if cached else 'computing'} ({key})")
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
    say(f"iteration {iteration} · {stage}: done in {time.time() - start:.1f} s")
    return StageResult(stage=stage, iteration=iteration, key=key, folder=str(folder), run_id=run_id, cached=cached,
                       metrics=metrics, seconds=time.time() - start, compute_seconds=compute_seconds)


def _clear_leftovers(ctx: RunContext, key: str, folder: Path) -> None:
    """Remove what a killed attempt of this stage left: temporary folders, MLflow runs still 'RUNNING'."""
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for run in ctx.client.search_runs([ctx.experiment_id], f"tags.`visplay.cache_key` = '{key}' and "
                                      "attributes.status = 'RUNNING'"):
        ctx.client.set_terminated(run.info.run_id, "KILLED")


def say(message: str) -> None:
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
