"""A line of evolution: one run whose iteration count grows a few iterations at a time, as the nightly
deployment advances it (``advance_line``).

The line's record lives in the MLflow store its advances log to, so that every home pointed at the same
servers (every worker machine of a pool) continues the same line: an MLflow run ``line <name>``, tagged
``visplay.level`` = ``line`` and ``visplay.line`` = its name, whose tags hold the configuration it grows from
(``visplay.line.settings`` in full, ``visplay.line.config`` its digest, iterations aside, and
``visplay.line.preset``), the iterations it finished (``visplay.line.finished``) and those its last advance set
out to reach (``visplay.line.target``), and whose artifact ``summary.json`` holds the summary row of every
finished iteration. ``HOME/lines/<name>.json`` is a copy of the record as this home last wrote it.

One advance of a line runs at a time: this home's file lock, and a slot of the Prefect server's global
concurrency limit ``visplay-line-<name>``, which every machine pointed at that server shares.
"""

from __future__ import annotations

import json
import re
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from prefect import get_run_logger

from flows.self_evolution import evolve
from tasks.locks import RunInProgressError, run_lock
from tasks.mlflow_client import EXPERIMENT, experiment_id, tracking_client, tracking_uri
from visplay_core.config import VisPlayConfig
from visplay_core.io import write_json

TAG = "visplay.line"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
LEASE_SECONDS = 60  # a slot of a killed advance goes back to the line this long after its last renewal


class LineError(ValueError):
    """A line of evolution that cannot go on as asked: another configuration than the one it grew from, none
    known, or a name that cannot be one."""


def check_line_name(line: str) -> None:
    """Refuse a name that cannot be a line's (``LineError``): it names files, MLflow runs and filters, a Prefect
    concurrency limit and a deployment."""
    if not NAME.fullmatch(line):
        raise LineError(f"line {line!r}: a line's name is letters, digits, '.', '_' and '-', starting with a letter "
                        "or digit")


def read_line(home: Path, line: str) -> dict | None:
    """The record of ``line`` in the MLflow store of ``home`` (None for a line not started): ``preset``,
    ``config`` (digest), ``settings``, ``finished``, ``target`` and ``run_id``, its MLflow run."""
    check_line_name(line)
    home.mkdir(parents=True, exist_ok=True)
    client = tracking_client(tracking_uri(home))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = experiment and client.search_runs(
        [experiment.experiment_id], f"tags.`visplay.level` = 'line' and tags.`{TAG}` = '{line}'", max_results=1,
        order_by=["attributes.start_time ASC"])
    if not found:
        return None
    tags = found[0].data.tags
    return {"line": line, "preset": tags[f"{TAG}.preset"], "config": tags[f"{TAG}.config"],
            "settings": json.loads(tags[f"{TAG}.settings"]), "finished": int(tags[f"{TAG}.finished"]),
            "target": int(tags[f"{TAG}.target"]), "run_id": found[0].info.run_id}


def line_config(state: dict | None, line: str, config: VisPlayConfig | None, store: str) -> VisPlayConfig:
    """The configuration the line (its record ``state``, in the MLflow store ``store``) grows from: ``config``
    when given (refused if the line grew from another), else the line's own (a line not started needs one)."""
    if config is not None:
        digest = config.model_copy(update={"iterations": 1}).digest()
        if state and state["config"] != digest:
            raise LineError(f"line {line} grows from another configuration ({state['preset']}, {state['config']}, "
                            f"not {config.preset}, {digest}): give this configuration a line of its own")
        return config
    if state is None:
        raise LineError(f"line {line} has not started in the MLflow store {store}: give the configuration it starts "
                        "from (a preset or a YAML file)")
    return VisPlayConfig.model_validate(state["settings"])


def line_span(state: dict | None, iterations: int) -> tuple[int, int]:
    """(iterations the line finished, the iteration an advance by ``iterations`` reaches): a failed advance's
    iterations are run first."""
    return (state["finished"], state["target"] + iterations) if state else (0, iterations)


def line_run_name(line: str, finished: int, target: int) -> str:
    """The name of the advance of ``line`` from iteration ``finished`` to ``target``."""
    return f"{line}-iteration-{target}" if target == finished + 1 else f"{line}-iterations-{finished + 1}-{target}"


def limit_name(line: str) -> str:
    """The Prefect global concurrency limit that lets one advance of ``line`` run at a time."""
    return f"visplay-line-{line}"


@contextmanager
def line_lock(home: Path, line: str):
    """Hold ``line`` for one advance: this home's run lock (``run_lock``) and the one slot of the Prefect global
    concurrency limit ``visplay-line-<line>`` (created on first use), shared by every machine pointed at the same
    Prefect server. Either one taken fails at once (``RunInProgressError``). The slot is a lease its holder
    renews: the slot of an advance killed outright frees itself within ``LEASE_SECONDS`` (and Prefect's check of
    expired leases)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.runtime import flow_run

    name = limit_name(line)
    with run_lock(home, line), ExitStack() as held:
        with get_client(sync_client=True) as client:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass
        holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id) if flow_run.id else None
        try:
            held.enter_context(concurrency(name, max_retries=0, strict=True, holder=holder,
                                           lease_duration=LEASE_SECONDS, raise_on_lease_renewal_failure=False))
        except ConcurrencySlotAcquisitionError as e:
            taken = e.__cause__
            if not (isinstance(taken, httpx.HTTPStatusError) and taken.response.status_code == 423):
                raise
            raise RunInProgressError(
                f"line {line} is already advancing: the slot of the Prefect concurrency limit {name} is taken (by an "
                f"advance on another machine, or one killed less than {LEASE_SECONDS} s ago); wait for it to finish "
                f"(with none running, `prefect gcl update {name} --active-slots 0` frees it)") from None
        yield


def advance_line(config: VisPlayConfig | None, home: Path, line: str, iterations: int, entry_point: str) -> dict:
    """Run the next ``iterations`` iterations of the line of evolution ``line`` (in the calling flow); returns
    the line's summary, every iteration so far.

    ``config`` None: the line's own. An advance goes on from the last finished iteration's Questioner and Reasoner
    (restored from their stages, here or from MLflow) on each new iteration's own draw of images, exactly as one
    run of all the iterations would, whichever home ran the earlier ones; a failed advance is completed by the
    next one before it goes further.
    """
    check_line_name(line)
    with line_lock(home, line):
        store = tracking_uri(home)
        client = tracking_client(store)
        state = read_line(home, line)
        config = line_config(state, line, config, store)
        once = config.model_copy(update={"iterations": 1})
        finished, target = line_span(state, iterations)
        record = _write_line(client, home, {
            "line": line, "preset": config.preset, "config": once.digest(), "settings": once.model_dump(mode="json"),
            "finished": finished, "target": target, "run_id": state["run_id"] if state else None})
        get_run_logger().info("line %s: iterations %d to %d (%d finished), configuration %s %s", line, finished + 1,
                              target, finished, config.preset, record["config"])
        summary = evolve(config.model_copy(update={"iterations": target}), home, line,
                         line_run_name(line, finished, target), entry_point,
                         _finished_iterations(client, record["run_id"], finished))
        client.log_artifact(record["run_id"], str(home / "runs" / line / "summary.json"))
        _write_line(client, home, {**record, "finished": target})
        return summary


def _write_line(client: MlflowClient, home: Path, record: dict) -> dict:
    """``record`` into the line's MLflow run (a new one when its ``run_id`` is None) and its copy into
    HOME/lines/<line>.json; returns it with its ``run_id``."""
    tags = {f"{TAG}.preset": record["preset"], f"{TAG}.config": record["config"],
            f"{TAG}.settings": json.dumps(record["settings"], sort_keys=True),
            f"{TAG}.finished": str(record["finished"]), f"{TAG}.target": str(record["target"])}
    if record["run_id"] is None:
        run = client.create_run(experiment_id(client, home), run_name=f"line {record['line']}",
                                tags={"visplay.level": "line", TAG: record["line"], **tags})
        client.set_terminated(run.info.run_id, "FINISHED")
        record = {**record, "run_id": run.info.run_id}
    else:
        client.log_batch(record["run_id"], tags=[RunTag(k, v) for k, v in tags.items()])  # all at once
    write_json(home / "lines" / f"{record['line']}.json", record)
    return record


def _finished_iterations(client: MlflowClient, run_id: str, finished: int) -> list[dict]:
    """The summary rows of the line's first ``finished`` iterations, from the summary its MLflow run holds (none
    when it holds fewer: the line then goes on from iteration 1, restoring every stage it finished)."""
    if not finished or "summary.json" not in {a.path for a in client.list_artifacts(run_id)}:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        rows = json.loads(Path(client.download_artifacts(run_id, "summary.json", tmp)).read_text())["iterations"]
    rows = rows[:finished]
    return rows if [r["iteration"] for r in rows] == list(range(1, finished + 1)) else []
