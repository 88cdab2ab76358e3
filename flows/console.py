"""The command line's console and process plumbing: where a command's Prefect and MLflow servers are, leaving
at once with one line when its Prefect server dies (child processes stopped first), and one traceback per
error on the console."""

from __future__ import annotations

import copy
import gc
import logging
import os
import sys
from pathlib import Path

PREFECT_GRACE_SECONDS = 10  # how long a run waits for its Prefect server to answer again
SERVE_GRACE_SECONDS = 3  # and `serve`, which has nothing to lose
FREEZE_IMPORTS = False  # set by `entry`, the command's own process
STOPPED_RUN = "the run stops here; run the same command again to resume from its finished stages"


def exit_now(message: str, code: int = 1) -> None:
    """One line on stderr, then leave at once: nothing further can reach a Prefect server that is gone (its
    client would retry each call for a minute). Stages are atomic and the run lock is the kernel's, so the
    rerun restores every finished stage. Child processes (flow runs, GRPO jobs) are stopped first."""
    import psutil

    # A line of its own whatever was drawing: a stage's bar, here or in a child process, leaves no newline.
    print(f"\nvisplay: {message}", file=sys.stderr, flush=True)
    children = psutil.Process().children(recursive=True)
    for child in children:
        child.terminate()
    for child in psutil.wait_procs(children, timeout=3)[1]:
        child.kill()
    os._exit(code)


def watch_prefect(what: str, grace: float) -> None:
    """Leave promptly, with one line, when the Prefect server this process uses stops answering."""
    api = os.environ.get("PREFECT_API_URL")
    if api:
        from flows import servers

        servers.watch_prefect(api, grace, lambda why: exit_now(f"{why}; {what}"))


class TracebackOnce(logging.Formatter):
    """On the console, show an error's traceback the first time it is logged only (Prefect logs it again for
    every task and flow it leaves), and none under warnings or for a lost connection (Prefect's clients and
    background services log one when their server goes away, which the run reports in its own one line).
    The UI's logs keep every copy."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner, self.shown = inner or logging.Formatter(), []

    def format(self, record: logging.LogRecord) -> str:
        from tasks.mlflow_client import interrupted

        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (record.levelno < logging.ERROR or interrupted(error)
                                  or any(error is e for e in self.shown)):
            record = copy.copy(record)
            record.exc_info = record.exc_text = None
        elif error is not None:
            self.shown = [*self.shown[-15:], error]
        return self.inner.format(record)


def tracebacks_once() -> None:
    """Every console handler of the loggers Prefect configures (the root's, and its internal services')."""
    for name in ("", "prefect._internal"):
        for handler in logging.getLogger(name).handlers:
            if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                    and not isinstance(handler.formatter, TracebackOnce)):
                handler.setFormatter(TracebackOnce(handler.formatter))


def connect(home: str):
    """Before a command runs flows: point Prefect and MLflow at HOME's servers when they answer (before prefect
    is imported: its settings are read then) and leave promptly if that Prefect server dies; otherwise start
    Prefect's temporary server in the background. Returns ``ready()``, to call once the flows are imported:
    it waits for Prefect, having opened HOME's embedded MLflow store first when the run uses one (importing,
    creating or checking it: about 1 s that the run would spend at its first MLflow call, spent
    instead while that server still boots; the store stays open for the run)."""
    from flows.servers import start_temporary_prefect, use_servers

    use_servers(Path(home))
    watch_prefect(STOPPED_RUN, PREFECT_GRACE_SECONDS)
    prefect_started = start_temporary_prefect()

    def ready() -> None:
        tracebacks_once()
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            from tasks.mlflow_client import tracking_client, tracking_uri

            Path(home).mkdir(parents=True, exist_ok=True)
            tracking_client(tracking_uri(Path(home)))
        if FREEZE_IMPORTS:
            gc.freeze()
        prefect_started()

    return ready
