"""One run at a time: a run holds a lock on its folder under the home for as long as it runs."""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path


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
