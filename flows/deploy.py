"""The deployable flow: the next iterations of a line of evolution, from parameters a person fills in the
Prefect UI's run form (or `visplay advance` on the command line).

``visplay serve`` serves it from one process with a nightly schedule, so every night moves the line one
iteration further; ``deployments/prefect.yaml`` deploys it to a process work pool.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from flows.self_evolution import advance_line
from flows.servers import use_servers
from visplay_core.config import load_config, preset_names

DEPLOYMENT = "nightly"
Preset = Literal[tuple(preset_names())]  # the shipped presets: a dropdown in the run form


@flow(name="visplay-nightly")
def visplay_nightly(line: str = "nightly", preset: Preset = "demo", config_path: str = "",
                    overrides: list[str] = [],  # noqa: B006 (never mutated; a plain list in the form, not "list or None")
                    iterations: Annotated[int, Field(ge=1)] = 1, home: str = ".visplay",
                    tracking_uri: str = "") -> dict:
    """Run the next iterations of a line of evolution, from its last finished Questioner and Reasoner; a
    failed advance of the line is completed first. One advance of a line at a time.

    Args:
        line: name of the line of evolution (its MLflow runs, its summary, its flow runs are named after it)
        preset: configuration preset, used when no config_path is given
        config_path: a YAML configuration file on the machine that runs the flow (instead of the preset)
        overrides: key=value settings applied on top, e.g. group_size=4 or method.tau_low=0.3
        iterations: how many iterations this advance adds to the line
        home: run home: stage folders, lines, summaries and, without a tracking server, the MLflow store
        tracking_uri: MLflow tracking server (empty: the servers of `visplay up` for this home, else local)
    """
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # a flow run is a process of its own
    use_servers(Path(home))
    config = load_config(config_path or preset, overrides)
    return advance_line(config, Path(home).resolve(), line, iterations, "flows/deploy.py:visplay_nightly")


def serve(home: str, cron: str, timezone: str) -> None:
    """Serve the deployment from this process until interrupted: nightly at ``cron`` in ``timezone``, at most
    one run at a time (a deployment concurrency limit of 1: a second trigger waits for the first)."""
    from prefect.schedules import Cron

    # Served from source, as a work-pool worker runs it: each run imports the code afresh (a flow object
    # handed to a run by cloudpickle loses its subflows' postponed annotations).
    source = Path(__file__).resolve().parent.parent
    nightly = visplay_nightly.from_source(str(source), "flows/deploy.py:visplay_nightly")
    nightly.serve(name=DEPLOYMENT, schedule=Cron(cron, timezone=timezone), global_limit=1,
                  parameters={"home": str(Path(home).resolve())})
