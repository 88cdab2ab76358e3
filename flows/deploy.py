"""The deployable flow: a self-evolution run from parameters a person fills in the Prefect UI's run form.

``visplay serve`` serves it from one process with a nightly schedule; ``deployments/prefect.yaml``
deploys it to a process work pool.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow

from flows.self_evolution import self_evolution
from flows.servers import use_servers
from visplay_core.config import load_config

DEPLOYMENT = "nightly"


@flow(name="visplay-nightly")
def visplay_nightly(preset: str = "demo", config_path: str | None = None, overrides: list[str] | None = None,
                    iterations: int | None = None, home: str = ".visplay", tracking_uri: str | None = None,
                    run_name: str | None = None) -> dict:
    """Run (or resume) VisPlay self-evolution; the same run name resumes, one run of a name at a time.

    Args:
        preset: configuration preset (smoke, demo, paper-3b, paper-7b), used when no config_path is given
        config_path: a YAML configuration file on the machine that runs the flow
        overrides: key=value settings applied on top, e.g. group_size=4 or method.tau_low=0.3
        iterations: number of self-evolution iterations (the configuration's when empty)
        home: run home: stage folders, summaries and, without a tracking server, the MLflow store
        tracking_uri: MLflow tracking server (else the servers of `visplay up` for this home, else local)
        run_name: run name (default: preset and configuration hash)
    """
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # a flow run is a process of its own
    use_servers(Path(home))
    extra = [f"iterations={iterations}"] if iterations is not None else []
    config = load_config(config_path or preset, [*(overrides or []), *extra])
    return self_evolution(config=config, home=home, run_name=run_name)


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
