"""`visplay up` with both servers on PostgreSQL, as teams run them: a real PostgreSQL server started here from
Debian's packages (initdb and pg_ctl in a temporary folder, as the `postgres` user when the tests run as root,
since initdb refuses root), a real flow run and a real MLflow run recorded in its databases, and the home
remembering them across `down` and `up`."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.servers import down, read_servers, up
from tests.net import free_port


def _postgres_bin() -> Path | None:
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if folder and all((Path(folder) / tool).exists() for tool in ("initdb", "pg_ctl")):
            return Path(folder)
    return None


PG = _postgres_bin()
pytestmark = pytest.mark.skipif(PG is None, reason="PostgreSQL is not installed (Debian: apt-get install postgresql; "
                                "`.ci/run` installs it)")
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-visplay"


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on a free loopback port (password authentication), with databases `prefect` and
    `mlflow`; yields a function giving a database's URL."""
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="visplay-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    (root / "password").write_text(PASSWORD)
    if as_postgres:
        for path in (root, root / "password"):
            shutil.chown(path, "postgres")
    port = free_port()
    data = root / "data"
    subprocess.run([*as_postgres, str(PG / "initdb"), "-D", str(data), "-U", "visplay", "--pwfile", str(root / "password"),
                    "--auth-host=scram-sha-256", "--auth-local=scram-sha-256"], check=True, capture_output=True)
    subprocess.run([*as_postgres, str(PG / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "120",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="visplay", password=PASSWORD, dbname="postgres",
                             autocommit=True) as conn:  # CREATE DATABASE runs outside a transaction
            for name in ("prefect", "mlflow"):
                conn.execute(f"CREATE DATABASE {name}")
        yield lambda name: f"postgresql://visplay:{PASSWORD}@127.0.0.1:{port}/{name}"
    finally:
        subprocess.run([*as_postgres, str(PG / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _rows(url: str, query: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


PROBE = """
from prefect import flow

@flow(name="postgres-probe")
def probe():
    return 42

assert probe() == 42
"""


def test_up_on_postgresql_records_flow_runs_and_mlflow_runs_there_and_remembers_it(postgres, tmp_path):
    home = tmp_path / "home"
    ports = {"prefect_port": free_port(), "mlflow_port": free_port()}
    try:
        done = subprocess.run([sys.executable, "-m", "flows.cli", "up", "--home", str(home),
                               "--prefect-port", str(ports["prefect_port"]), "--mlflow-port", str(ports["mlflow_port"]),
                               "--prefect-database", postgres("prefect"), "--mlflow-database", postgres("mlflow")],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        masked = postgres("mlflow").replace(PASSWORD, "***")
        assert PASSWORD not in done.stdout and f"(database {masked})" in done.stdout, done.stdout
        servers = read_servers(home)
        env = {**os.environ, "PREFECT_API_URL": servers["prefect"]["api"]}
        probe = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert probe.returncode == 0, probe.stderr[-2000:]
        assert _rows(postgres("prefect"), "SELECT r.state_type FROM flow_run r JOIN flow f ON r.flow_id = f.id "
                                          "WHERE f.name = 'postgres-probe'") == [("COMPLETED",)]
        client = MlflowClient(servers["mlflow"]["api"])
        run_id = client.create_run(client.create_experiment("pg")).info.run_id
        client.log_metric(run_id, "accuracy", 0.75)
        assert _rows(postgres("mlflow"), f"SELECT key, value FROM metrics WHERE run_uuid = '{run_id}'") == [("accuracy", 0.75)]
        assert not (home / "mlflow.db").exists() and not (home / "prefect" / "prefect.db").exists()
        remembered = home / "databases.json"
        assert oct(remembered.stat().st_mode & 0o777) == "0o600"
        assert json.loads(remembered.read_text()) == {"prefect": postgres("prefect"), "mlflow": postgres("mlflow")}
        assert PASSWORD not in (home / "servers.json").read_text()
        down(home)
        up(home, **ports)  # no URLs: the home's own
        assert MlflowClient(read_servers(home)["mlflow"]["api"]).get_run(run_id).data.metrics == {"accuracy": 0.75}
    finally:
        down(home)
