"""Local Prefect and MLflow servers for one home: ``visplay up`` starts them, ``visplay down`` stops them.

Each server runs in a process group of its own (a new session), bound to 127.0.0.1 unless asked
otherwise, with its state under HOME (``prefect/`` for Prefect's database, ``mlflow.db`` and
``mlartifacts/`` for MLflow, ``logs/``). Their pids and URLs go to ``HOME/servers.json``: ``down`` stops
exactly those process groups, and ``use_servers`` points a run at them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from visplay_core.io import write_json

SERVERS_FILE = "servers.json"


def _specs(home: Path, host: str, prefect_port: int, mlflow_port: int) -> dict[str, dict]:
    """How to start each server: command, extra environment, the URL clients use and its health check."""
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    prefect_url, mlflow_url = f"http://{connect}:{prefect_port}", f"http://{connect}:{mlflow_port}"
    return {
        "prefect": {
            "argv": [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(prefect_port)],
            "env": {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
            "url": prefect_url, "api": f"{prefect_url}/api", "health": f"{prefect_url}/api/health",
        },
        "mlflow": {
            "argv": [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(mlflow_port),
                     "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                     "--artifacts-destination", str(home / "mlartifacts")],
            "env": {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_ENABLE_TELEMETRY": "false"},
            "url": mlflow_url, "api": mlflow_url, "health": f"{mlflow_url}/health",
        },
    }


def read_servers(home: Path) -> dict | None:
    path = Path(home) / SERVERS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def healthy(servers: dict | None) -> bool:
    return bool(servers) and all(_answers(s["health"]) for s in servers.values())


def _members(server: dict) -> list[psutil.Process]:
    """The live processes of the server's process group (none when the group is gone or was never ours)."""
    pgid, started = server["pid"], server["started"]
    try:
        leader = psutil.Process(pgid)
        if abs(leader.create_time() - started) > 0.01:  # the pid now belongs to another program
            return []
    except psutil.NoSuchProcess:
        pass
    found = []
    for proc in psutil.process_iter(["create_time", "status"]):
        try:
            if (os.getpgid(proc.pid) == pgid and proc.info["create_time"] >= started - 0.01
                    and proc.info["status"] != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _stop(server: dict, timeout: float) -> None:
    """SIGTERM the whole process group, SIGKILL what is left after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        members = _members(server)
        if not members:
            return
        try:
            os.killpg(server["pid"], sig)
        except ProcessLookupError:
            return
        psutil.wait_procs(members, timeout=wait)
    if _members(server):
        raise RuntimeError(f"process group {server['pid']} survived SIGKILL")


def down(home: Path, timeout: float = 15) -> list[str]:
    """Stop the servers recorded in HOME/servers.json; returns the names of those that were recorded."""
    home = Path(home).resolve()
    servers = read_servers(home) or {}
    for server in servers.values():
        _stop(server, timeout)
    (home / SERVERS_FILE).unlink(missing_ok=True)
    return list(servers)


def up(home: Path, host: str = "127.0.0.1", prefect_port: int = 4200, mlflow_port: int = 5000,
       timeout: float = 180) -> dict:
    """Start both servers (or find them already up) and wait until both answer their health checks."""
    home = Path(home).resolve()
    current = read_servers(home)
    if healthy(current):
        return current
    down(home)  # whatever a previous `up` left half-started
    (home / "logs").mkdir(parents=True, exist_ok=True)
    servers, procs = {}, {}
    for name, spec in _specs(home, host, prefect_port, mlflow_port).items():
        log = home / "logs" / f"{name}-server.log"
        with open(log, "ab") as out:
            procs[name] = subprocess.Popen(spec["argv"], env={**os.environ, **spec["env"]}, stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pid = procs[name].pid
        servers[name] = {"pid": pid, "started": psutil.Process(pid).create_time(), "url": spec["url"],
                         "api": spec["api"], "health": spec["health"], "log": str(log)}
        write_json(home / SERVERS_FILE, servers)  # recorded at once: `down` can stop a half-started pair
    deadline = time.time() + timeout
    while not all(_answers(s["health"]) for s in servers.values()):
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead or time.time() > deadline:
            down(home)
            why = f"the {' and '.join(dead)} server exited" if dead else f"no answer after {timeout:.0f} s"
            raise RuntimeError(f"{why}; see {', '.join(servers[n]['log'] for n in dead or servers)}")
        time.sleep(0.5)
    return servers


def use_servers(home: Path) -> dict | None:
    """Point Prefect and MLflow at the servers of HOME/servers.json when they answer (variables already set
    win); returns the servers used, or None. Call before ``prefect`` is first imported."""
    servers = read_servers(Path(home).resolve())
    if servers is None:
        return None
    if not healthy(servers):
        print(f"visplay: the servers in {Path(home) / SERVERS_FILE} do not answer; not using them "
              "(`visplay up` restarts them)", file=sys.stderr)
        return None
    os.environ.setdefault("PREFECT_API_URL", servers["prefect"]["api"])
    os.environ.setdefault("MLFLOW_TRACKING_URI", servers["mlflow"]["api"])
    return servers
