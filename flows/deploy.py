"""The deployable flow: the next iterations of a line of evolution, from parameters a person fills in the
Prefect UI's run form (or `visplay advance` on the command line).

``visplay serve`` serves it from one process with a nightly schedule, as a deployment named after its line,
so every night moves the line one iteration further; ``deployments/prefect.yaml`` deploys it to a process work
pool, whose workers may run on several machines: each runs it in its own home (``$VISPLAY_HOME``).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from prefect import flow
from pydantic import Field

from flows.line import LineError, advance_line, line_config, line_run_name, line_span, read_line
from flows.servers import use_servers
from tasks import mlflow_client
from visplay_core.config import load_config, preset_names

HOME = "VISPLAY_HOME"  # a machine's run home, where the form leaves ``home`` empty (a work pool's worker)
NOTIFY_URL = "VISPLAY_NOTIFY_URL"  # the webhook of `visplay serve --notify`, in the environment of the runs it serves
Preset = Literal[("", *preset_names())]  # the shipped presets, or none (the line's own): a dropdown in the run form


def _advance_name() -> str:
    """The flow run's name, the iterations it runs (``night-iteration-3``): given at its start, before its first
    log line, whoever created it (the command line, the UI's form, the schedule)."""
    from prefect.runtime import flow_run
    from prefect.utilities.callables import get_call_parameters

    params = get_call_parameters(visplay_nightly.fn, (), flow_run.parameters)
    try:
        state = read_line(_use_home(params["home"], params["tracking_uri"]), params["line"])
    except LineError:  # a name that cannot be a line's: the flow fails, saying so
        return params["line"]
    return line_run_name(params["line"], *line_span(state, params["iterations"]))


def _use_home(home: str, tracking_uri: str) -> Path:
    """The run's home (``home``, else ``$VISPLAY_HOME``, else ./.visplay), with MLflow pointed at
    ``tracking_uri`` when given (a flow run is a process of its own), else at the home's servers when it has
    some (see ``use_servers``)."""
    path = Path(home or os.environ.get(HOME) or ".visplay").resolve()
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    use_servers(path)
    return path


def notify_failure(flow, flow_run, state) -> None:
    """A night that failed (its flow raised: run in the flow run's process) or crashed (its process died, killed
    or out of memory: run by the runner of `visplay serve`, which marks it crashed): POST the line, the flow
    run and its state as JSON to the webhook in ``$VISPLAY_NOTIFY_URL``, its ``text`` a chat message (Slack,
    Mattermost); nothing without one. Prefect logs a webhook that cannot be reached on the flow run."""
    url = os.environ.get(NOTIFY_URL)
    if not url:
        return
    from prefect.client.orchestration import get_client
    from prefect.utilities.urls import url_for

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run.id)  # named as it started (a runner's copy is older)
    line, page = flow_run.parameters.get("line"), url_for(flow_run)
    body = {"text": f"visplay: the night of line {line} {state.name.lower()}: flow run {flow_run.name} "
                    f"({state.message or state.type.value})" + (f" {page}" if page else ""),
            "line": line, "flow_run": {"id": str(flow_run.id), "name": flow_run.name, "url": page},
            "state": {"type": state.type.value, "name": state.name, "message": state.message}}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()


@flow(name="visplay-nightly", flow_run_name=_advance_name, on_failure=[notify_failure], on_crashed=[notify_failure])
def visplay_nightly(line: str = "nightly", preset: Preset = "", config_path: str = "",
                    overrides: list[str] = [],  # noqa: B006 (never mutated; a plain list in the form, not "list or None")
                    iterations: Annotated[int, Field(ge=1)] = 1, home: str = "",
                    tracking_uri: str = "") -> dict:
    """Run the next iterations of a line of evolution, from its last finished Questioner and Reasoner; a
    failed advance of the line is completed first. One advance of a line at a time.

    Args:
        line: name of the line of evolution (its MLflow runs, its summary, its flow runs are named after it)
        preset: configuration preset of a new line (empty: the line's own configuration; a line keeps the one it
            started from)
        config_path: a YAML configuration file on the machine that runs the flow (instead of the preset)
        overrides: key=value settings applied on top of the preset or file, e.g. group_size=4
        iterations: how many iterations this advance adds to the line
        home: run home: stage folders, summaries and, without a tracking server, the MLflow store (empty:
            $VISPLAY_HOME of the machine that runs the flow, else .visplay)
        tracking_uri: MLflow tracking server (empty: the servers of `visplay up` for this home, else local)
    """
    path = _use_home(home, tracking_uri)
    if overrides and not (config_path or preset):
        raise LineError("overrides change a configuration, and a line keeps its own: give them with the preset "
                        "or file of a new line")
    config = load_config(config_path or preset, overrides) if config_path or preset else None
    return advance_line(config, path, line, iterations, "flows/deploy.py:visplay_nightly")


def form_source(source: str) -> dict[str, str]:
    """A preset name or YAML file as the run form's fields (``preset`` or ``config_path``, a file made absolute);
    none for "" (the line's own configuration)."""
    if not source:
        return {}
    return {"preset": source} if source in preset_names() else {"config_path": str(Path(source).resolve())}


def next_runs(cron: str, timezone: str, n: int = 1) -> list:
    """The schedule's next ``n`` run times, in its time zone (as Prefect's scheduler computes them)."""
    from prefect.server.schemas.schedules import CronSchedule

    return asyncio.run(CronSchedule(cron=cron, timezone=timezone).get_dates(n=n))


def schedule_plan(home: str, line: str, source: str, iterations: int, cron: str, timezone: str) -> str:
    """What the schedule will run, in words: the line, its configuration, the next run's time and time zone.
    Raises ``ConfigError``/``LineError`` for a schedule that would fail every night (a configuration the line
    did not grow from, or none for a line not started)."""
    state = read_line(Path(home).resolve(), line)
    config = line_config(state, line, load_config(source) if source else None,
                         mlflow_client.tracking_uri(Path(home).resolve()))
    first, target = line_span(state, iterations)
    when = next_runs(cron, timezone)[0]
    digest = config.model_copy(update={"iterations": 1}).digest()
    return (f"serving {visplay_nightly.name}/{line}: line {line}, {iterations} iteration"
            f"{'s' if iterations > 1 else ''} a run, configuration {config.preset} {digest} "
            f"({f'{first} iterations finished' if state else 'a new line'})\n"
            f"schedule '{cron}' in {timezone}: next run {when:%Y-%m-%d %H:%M %Z}, {line_run_name(line, first, target)}")


def serve(home: str, cron: str, timezone: str, line: str = "nightly", source: str = "", iterations: int = 1,
          notify: str = "") -> None:
    """Serve the line's deployment, named after the line, from this process until interrupted: nightly at
    ``cron`` in ``timezone``, each run advancing ``line`` by ``iterations`` (``source``, a preset or YAML file,
    for a new line; empty: the line's own configuration), at most one run at a time (a deployment concurrency limit of 1: a second
    trigger waits for the first). ``notify``: a webhook URL that each failed or crashed run posts to."""
    from prefect.schedules import Cron

    print(schedule_plan(home, line, source, iterations, cron, timezone), flush=True)
    if notify:
        os.environ[NOTIFY_URL] = notify  # for `notify_failure`, here and in the flow runs' processes
        print(f"a failed or crashed run posts to the webhook at {urlsplit(notify).hostname}", flush=True)
    # Served from source, as a work-pool worker runs it: each run imports the code afresh (a flow object
    # handed to a run by cloudpickle loses its subflows' postponed annotations).
    root = Path(__file__).resolve().parent.parent
    nightly = visplay_nightly.from_source(str(root), "flows/deploy.py:visplay_nightly")
    nightly.serve(name=line, schedule=Cron(cron, timezone=timezone), global_limit=1,
                  parameters={"home": str(Path(home).resolve()), "line": line, "iterations": iterations,
                              **form_source(source)})
