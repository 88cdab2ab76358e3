"""MLflow calls interrupted mid-answer, against a real MLflow server behind a proxy that cuts the answer short
after the server acted on the request: each call is repeated, and repeating it leaves one of each thing."""

import fcntl
import http.client
import subprocess
import sys
import threading
import time

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from requests.exceptions import ChunkedEncodingError, ConnectionError as RequestsConnectionError

from tasks.mlflow_client import REQUEST_TAG, ROOT, ResilientClient, interrupted, tracking_client
from tests.net import CuttingProxy, mlflow_server


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """(a client talking through the proxy, the proxy, a client talking to the server directly)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        proxy = CuttingProxy(int(url.rsplit(":", 1)[1]))
        yield ResilientClient(proxy.url), proxy, ResilientClient(url)
        proxy.close()


@pytest.fixture
def experiment(proxied):
    _, _, direct = proxied
    return direct.create_experiment(f"e{time.monotonic_ns()}")


def test_mlflows_own_client_fails_on_an_answer_cut_short(proxied, experiment):
    _, proxy, direct = proxied
    run_id = direct.create_run(experiment).info.run_id
    proxy.cut("/runs/log-batch")
    with pytest.raises(MlflowException) as error:
        MlflowClient(proxy.url).log_batch(run_id, metrics=[Metric("acc", 0.5, 1000, 0)])
    assert interrupted(error.value) and "IncompleteRead" in str(error.value)


def test_a_create_run_cut_short_makes_one_run(proxied, experiment):
    client, proxy, direct = proxied
    proxy.cut("/runs/create")
    run = client.create_run(experiment, tags={"k": "v"}, run_name="once")
    assert proxy.cut_paths[-1].endswith("/runs/create")
    runs = direct.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    assert runs[0].data.tags["k"] == "v" and len(runs[0].data.tags[REQUEST_TAG]) == 32


def test_a_log_batch_cut_short_logs_each_metric_once(proxied, experiment):
    client, proxy, direct = proxied
    run_id = direct.create_run(experiment).info.run_id
    proxy.cut("/runs/log-batch")
    client.log_batch(run_id, metrics=[Metric("acc", 0.5, 1000, 0), Metric("acc", 0.75, 1000, 1)])
    assert proxy.cut_paths[-1].endswith("/runs/log-batch")
    assert [(m.step, m.value) for m in direct.get_metric_history(run_id, "acc")] == [(0, 0.5), (1, 0.75)]


def test_a_logged_model_cut_short_is_created_once(proxied, experiment):
    client, proxy, direct = proxied
    proxy.cut("/logged-models")
    model = client.create_logged_model(experiment, name="reasoner-iteration-1")
    assert [m.model_id for m in direct.search_logged_models([experiment])] == [model.model_id]


def test_an_answered_error_is_raised_at_once(proxied):
    client, _, _ = proxied
    began = time.monotonic()
    with pytest.raises(MlflowException) as error:
        client.get_run("0" * 32)
    assert error.value.error_code == "RESOURCE_DOES_NOT_EXIST" and time.monotonic() - began < 5


def _raised_from(cause: BaseException) -> MlflowException:
    try:
        try:
            raise cause
        except Exception as e:
            raise MlflowException(f"API request failed with exception {e}")
    except MlflowException as outer:
        return outer


@pytest.mark.parametrize("cause, expected", [
    (ChunkedEncodingError("Connection broken: IncompleteRead(0 bytes read, 2 more expected)"), True),
    (RequestsConnectionError("Connection refused"), True),
    (http.client.RemoteDisconnected("Remote end closed connection without response"), True),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (ValueError("bad value"), False),
])
def test_interrupted_follows_the_cause(cause, expected):
    assert interrupted(_raised_from(cause)) is expected
    assert interrupted(cause) is expected


def test_processes_side_by_side_take_turns_creating_an_embedded_store(tmp_path):
    """The first touch of a new SQLite store creates its tables: while another process holds the store's lock,
    a client waits for it instead of migrating the same tables at once (which failed with ``duplicate column
    name: step``); then four processes started together on one new store all get a working store."""
    uri = f"sqlite:///{tmp_path / 'held' / 'mlflow.db'}"
    (tmp_path / "held").mkdir()
    made = threading.Event()
    with open(tmp_path / "held" / "mlflow.db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: (tracking_client(uri), made.set()))
        waiting.start()
        assert not made.wait(1.0)
        assert not (tmp_path / "held" / "mlflow.db").exists()
    waiting.join(60)
    assert made.is_set() and (tmp_path / "held" / "mlflow.db").exists()

    script = ("import sys; from tasks.mlflow_client import tracking_client; "
              "c = tracking_client(sys.argv[1]); print(c.search_experiments()[0].name)")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", script, uri], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-800:] for _, err in outcomes]
    assert all(out.strip() == "Default" for out, _ in outcomes)
