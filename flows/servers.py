"""Local Prefect and MLflow servers for one home: ``visplay up`` starts them, ``visplay down`` stops them.

Each server runs in a process group of its own (a new session), bound to 127.0.0.1 unless asked
otherwise, with its state under HOME (``prefect/`` for Prefect's database, ``mlflow.db`` and
``mlartifacts/`` for MLflow, ``logs/``), readable by its owner only. Either database may instead be a
database server's (PostgreSQL, as Prefect and MLflow recommend for teams): ``up`` takes their URLs once and
the home remembers them (``HOME/databases.json``, mode 0600) for every later ``up``. The servers' pids,
ports and URLs go to ``HOME/servers.json``: ``down`` stops exactly those process groups, and
``use_servers`` points a run at them. Prefect's UI calls its API by a URL relative to its pages (so it works
on any port, by any address) and shows no promotional content.

A server counts as up only when its health check answers *and* its own process group listens on its
port: a port taken by another program (another home's servers) fails ``up`` with the port and its holder
named, never a success that would log into someone else's store. Off loopback both servers require
authentication (Prefect's basic auth string, MLflow's basic-auth app) with credentials generated once
into ``HOME/credentials.json`` (mode 0600), which ``use_servers`` hands to Prefect and MLflow clients.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

import psutil

from visplay_core.io import write_json

SERVERS_FILE = "servers.json"
CREDENTIALS_FILE = "credentials.json"
DATABASES_FILE = "databases.json"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
OWNER_ONLY = 0o077  # the servers' umask: their databases, artifacts and logs are their owner's alone


class ServerError(RuntimeError):
    """A server could not be started, or something else answers in its place."""


def credentials(home: Path) -> dict[str, str]:
    """The home's server credentials, generated on first use into HOME/credentials.json (mode 0600)."""
    path = Path(home) / CREDENTIALS_FILE
    if path.exists():
        return json.loads(path.read_text())
    creds = {"prefect_auth_string": f"visplay:{secrets.token_urlsafe(24)}", "mlflow_username": "visplay",
             "mlflow_password": secrets.token_urlsafe(24), "mlflow_secret_key": secrets.token_urlsafe(32)}
    write_json(path, creds, mode=0o600)
    return creds


def databases(home: Path, prefect: str | None = None, mlflow: str | None = None) -> dict[str, str]:
    """The servers' database URLs: those given (then remembered in HOME/databases.json, mode 0600), else those
    remembered; a server with none keeps its SQLite file under HOME."""
    path = Path(home) / DATABASES_FILE
    known = json.loads(path.read_text()) if path.exists() else {}
    given = {name: url for name, url in (("prefect", prefect), ("mlflow", mlflow)) if url}
    if given and {**known, **given} != known:
        known = {**known, **given}
        write_json(path, known, mode=0o600)
    return known


def prefect_database_url(url: str) -> str:
    """A PostgreSQL URL as Prefect's server takes it (its asyncpg driver named); other URLs unchanged."""
    for scheme in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme):]
    return url


def _owner_only(home: Path) -> None:
    """Make the servers' stores and logs a home already holds (from before) readable by their owner only: a
    folder of mode 0700 closes all it holds."""
    for name in ("mlflow.db", "mlflow-auth.db", "mlflow-auth.ini", "prefect", "logs", "mlartifacts"):
        path = home / name
        if path.exists():
            path.chmod(0o700 if path.is_dir() else 0o600)


def _mlflow_auth_config(home: Path, username: str) -> Path:
    """MLflow's basic-auth settings for this home: its users in HOME/mlflow-auth.db, ``username`` the admin."""
    path = home / "mlflow-auth.ini"
    path.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{home / 'mlflow-auth.db'}\n"
                    f"admin_username = {username}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


# Prefect's server records each task-run event in a SQLite write of its own. A request of the run that writes
# too (a subflow's task run: one per iteration) then meets one of those writes, SQLite refuses it ("database is
# locked"), the server answers 503 and Prefect's client waits 2 s before it asks again: 6 s of a rerun's 12.
# Recorded in batches (every 5 s, and at the server's stop) they seldom meet. Set in the environment, it wins.
RECORDER_IN_BATCHES = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "1000"}
# A temporary server lives for one command and nobody can define an automation on it: its triggers service
# (and the actions it would run) has nothing to do, and starting it builds an in-process API client of its
# own (about 0.5 s of the server's CPU while the command waits for it). Set in the environment, it wins.
NO_AUTOMATIONS = {"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}


def _specs(home: Path, host: str, prefect_port: int, mlflow_port: int, creds: dict | None,
           dbs: dict[str, str]) -> dict[str, dict]:
    """How to start each server: command, extra environment, its port, the URL clients use and its health
    check. ``creds``: require authentication with these credentials; ``dbs``: database URLs by server."""
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    prefect_url, mlflow_url = f"http://{connect}:{prefect_port}", f"http://{connect}:{mlflow_port}"
    prefect_env = {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   # the API the UI's pages call, relative: this server, at whatever address and port the browser
                   # reached it by (Prefect's default follows its API port setting, not --port, and names a host)
                   "PREFECT_SERVER_UI_API_URL": "/api",
                   "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",  # no upgrade prompts, no community pop-up
                   # concurrency slots' leases on disk (HOME/prefect/concurrency_leases): a restarted server gives
                   # back the slots of runs that died meanwhile (kept in memory, they would stay taken for good)
                   "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem"}
    if dbs.get("prefect"):
        prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database_url(dbs["prefect"])
    else:  # SQLite: one writer at a time
        prefect_env.update({k: os.environ.get(k, v) for k, v in RECORDER_IN_BATCHES.items()})
    mlflow_argv = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(mlflow_port),
                   "--workers", "1", "--backend-store-uri", dbs.get("mlflow") or f"sqlite:///{home / 'mlflow.db'}",
                   "--artifacts-destination", str(home / "mlartifacts")]
    mlflow_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_ENABLE_TELEMETRY": "false"}
    if creds:
        prefect_env["PREFECT_SERVER_API_AUTH_STRING"] = creds["prefect_auth_string"]
        mlflow_argv += ["--app-name", "basic-auth"]
        mlflow_env.update({"MLFLOW_AUTH_CONFIG_PATH": str(_mlflow_auth_config(home, creds["mlflow_username"])),
                           "MLFLOW_AUTH_ADMIN_USERNAME": creds["mlflow_username"],
                           "MLFLOW_AUTH_ADMIN_PASSWORD": creds["mlflow_password"],
                           "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["mlflow_secret_key"]})
    return {
        "prefect": {
            "argv": [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(prefect_port)],
            "env": prefect_env, "port": prefect_port,
            "url": prefect_url, "api": f"{prefect_url}/api", "health": f"{prefect_url}/api/health",
        },
        "mlflow": {
            "argv": mlflow_argv, "env": mlflow_env, "port": mlflow_port,
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


def _listens(server: dict) -> bool:
    """Whether the server's own process group listens on its port."""
    for proc in _members(server):
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == server["port"] for c in proc.net_connections("inet")):
                return True
        except psutil.Error:
            continue
    return False


def answering(server: dict) -> bool:
    """The server answers its health check from its own process (not a stranger on the same port)."""
    return "port" in server and _answers(server["health"]) and _listens(server)


def healthy(servers: dict | None) -> bool:
    return bool(servers) and all(answering(s) for s in servers.values())


def port_holder(host: str, port: int) -> str | None:
    """Who holds ``port`` on ``host`` ("pid N: command line"), or None when it is free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
        try:
            s.bind((host, port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections("inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            try:
                return f"pid {conn.pid}: {' '.join(psutil.Process(conn.pid).cmdline())[:300]}"
            except psutil.Error:
                return f"pid {conn.pid}"
    return "another process"


def _stop(server: dict, timeout: float) -> bool:
    """SIGTERM the whole process group, SIGKILL what is left after ``timeout`` seconds; False when nothing
    of it was running."""
    stopped = False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        members = _members(server)
        if not members:
            return stopped
        try:
            os.killpg(server["pid"], sig)
        except ProcessLookupError:
            return stopped
        stopped = True
        psutil.wait_procs(members, timeout=wait)
    if _members(server):
        raise ServerError(f"process group {server['pid']} survived SIGKILL")
    return stopped


def down(home: Path, timeout: float = 15) -> list[str]:
    """Stop the servers recorded in HOME/servers.json; returns the names of those that were running."""
    home = Path(home).resolve()
    servers = read_servers(home) or {}
    stopped = [name for name, server in servers.items() if _stop(server, timeout)]
    (home / SERVERS_FILE).unlink(missing_ok=True)
    return stopped


def _record(home: Path, servers: dict) -> None:
    if servers:
        write_json(home / SERVERS_FILE, servers)
    else:
        (home / SERVERS_FILE).unlink(missing_ok=True)


def up(home: Path, host: str = "127.0.0.1", prefect_port: int = 4200, mlflow_port: int = 5000,
       timeout: float = 180, prefect_database: str | None = None, mlflow_database: str | None = None) -> dict:
    """Start the home's servers that are not up (both, or the one that died) and wait until both answer
    from their own processes. Raises ``ServerError`` naming the port and its holder when a port is taken.
    ``*_database``: a database URL for that server (remembered by the home; default its SQLite file)."""
    home = Path(home).resolve()
    dbs = databases(home, prefect_database, mlflow_database)
    auth = host not in LOOPBACK
    current = read_servers(home) or {}
    servers = {n: s for n, s in current.items() if s.get("auth", False) == auth and answering(s)}
    for name in set(current) - set(servers):  # whatever a previous `up` left half-started
        _stop(current[name], 15)
    specs = {n: spec for n, spec in _specs(home, host, prefect_port, mlflow_port, credentials(home) if auth else None,
                                           dbs).items() if n not in servers}
    _record(home, servers)
    for name, spec in specs.items():
        holder = port_holder(host, spec["port"])
        if holder:
            raise ServerError(f"port {spec['port']} (for {name}) is taken by {holder}; stop it or pick another "
                              f"port (--{name}-port)")
    (home / "logs").mkdir(parents=True, exist_ok=True)
    _owner_only(home)
    procs = {}
    for name, spec in specs.items():
        log = home / "logs" / f"{name}-server.log"
        with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
            procs[name] = subprocess.Popen(spec["argv"], env={**os.environ, **spec["env"]}, stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                           umask=OWNER_ONLY)
        pid = procs[name].pid
        servers[name] = {"pid": pid, "started": psutil.Process(pid).create_time(), "port": spec["port"],
                         "url": spec["url"], "api": spec["api"], "health": spec["health"], "log": str(log), "auth": auth}
        _record(home, servers)  # at once: `down` can stop a half-started pair
    deadline = time.time() + timeout
    while not all(answering(servers[n]) for n in procs):
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead or time.time() > deadline:
            for name in procs:
                _stop(servers.pop(name), 15)
            _record(home, servers)
            why = f"the {' and '.join(dead)} server exited" if dead else f"no answer after {timeout:.0f} s"
            raise ServerError(f"{why}; see {', '.join(str(home / 'logs' / f'{n}-server.log') for n in dead or procs)}")
        time.sleep(0.5)
    return servers


def use_servers(home: Path) -> dict | None:
    """Point Prefect and MLflow at the servers of HOME/servers.json when they answer (variables already set
    win), with the home's credentials when they require them; returns the servers used, or None. Call
    before ``prefect`` is first imported."""
    home = Path(home).resolve()
    servers = read_servers(home)
    if servers is None:
        return None
    if not healthy(servers):
        print(f"visplay: the servers in {home / SERVERS_FILE} do not answer; not using them "
              "(`visplay up` restarts them)", file=sys.stderr)
        return None
    os.environ.setdefault("PREFECT_API_URL", servers["prefect"]["api"])
    os.environ.setdefault("MLFLOW_TRACKING_URI", servers["mlflow"]["api"])
    if servers["prefect"].get("auth"):
        creds = credentials(home)
        os.environ.setdefault("PREFECT_API_AUTH_STRING", creds["prefect_auth_string"])
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", creds["mlflow_username"])
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", creds["mlflow_password"])
    return servers


def start_temporary_prefect() -> Callable[[], None]:
    """With no Prefect server configured, Prefect starts a temporary one at the first flow run and waits for it
    to answer (its boot takes about 5 s of CPU, and importing the code of the ``SubprocessASGIServer`` that
    starts it about 3 s more in this process). Start that same server (its command) at once instead, before
    Prefect is imported here, so that it boots while this process imports, and point this process and its
    children at it; returns a function that waits for it. Like Prefect's, it serves no UI: no Prefect link is
    made. It is stopped at exit; at once when Prefect's settings name a server (a profile) or rule temporary
    ones out; and when it does not answer in time, which leaves Prefect to start (and report on) its own at
    the flow run."""
    if os.environ.get("PREFECT_API_URL"):
        return lambda: None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(find_spec("prefect").origin).parent.parent),
         "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"],
        env={**RECORDER_IN_BATCHES, **NO_AUTOMATIONS, **os.environ, "PREFECT_UI_ENABLED": "0",
             "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
        preexec_fn=_stopped_with(os.getpid()))
    atexit.register(_stop_temporary, server)
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        _stop_temporary(server)
        return lambda: None
    pointed = {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", **({} if settings.ui_url else {"PREFECT_UI_URL": ""})}
    os.environ.update(pointed)
    refresh_global_settings_context()

    def ready() -> None:
        deadline = time.time() + settings.server.ephemeral.startup_timeout_seconds
        while not _answers(f"{pointed['PREFECT_API_URL']}/health"):
            if server.poll() is not None or time.time() > deadline:
                _stop_temporary(server)
                for key in pointed:
                    del os.environ[key]
                refresh_global_settings_context()
                return
            time.sleep(0.1)

    return ready


def _stopped_with(parent: int) -> Callable[[], None] | None:
    """For a child process: on Linux, SIGTERM to it when ``parent`` dies, however it dies (SIGKILL, or a SIGTERM
    that skips the parent's atexit), so that no temporary server outlives its command."""
    if not sys.platform.startswith("linux"):
        return None

    def in_child() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before that
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def _stop_temporary(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def watch_prefect(api: str, grace: float, on_lost: Callable[[str], None], interval: float = 1.0) -> bool:
    """Watch the Prefect server at ``api`` from a daemon thread: once it has not answered its health check
    for ``grace`` seconds, call ``on_lost(message)``. Returns False (and watches nothing) when it does not
    answer now."""
    health = f"{api.rstrip('/')}/health"
    if not _answers(health):
        return False

    def watch():
        last = time.time()
        while True:
            time.sleep(interval)
            if _answers(health):
                last = time.time()
            elif time.time() - last > grace:
                on_lost(f"the Prefect server at {api} stopped answering ({time.time() - last:.0f} s)")
                return

    threading.Thread(target=watch, name="visplay-prefect-watch", daemon=True).start()
    return True
