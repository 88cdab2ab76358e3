"""Operating visplay as its users do: `visplay up` (real Prefect and MLflow servers on loopback), `visplay
serve`, a run triggered with parameters through the Prefect API as the UI does, the run found completed
in Prefect and its stage runs, reports and artifacts in the MLflow server; a second run of the same name
refused by the run lock; `visplay report`; and `visplay down` leaving no process behind."""

import json
import os
import re
import sqlite3
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from flows.self_evolution import STAGES, self_evolution
from flows.servers import ServerError, up
from tasks.locks import RunInProgressError, run_lock
from tests.net import Webhook, free_port
from visplay_core.config import load_config, preset_names

ROOT = Path(__file__).resolve().parent.parent
VISPLAY = [sys.executable, "-m", "flows.cli"]
RUN = "nightly-test"
HELD = "held-elsewhere"
ITERATIONS = 2
PARAMETERS = {"line": RUN, "preset": "smoke", "iterations": ITERATIONS, "overrides": ["eval.limit=12"]}
NOTIFIED = "noisy-nights"
REPORT_FILES = {"summary.md", "iteration.html", "questions.json", "grpo_rewards.png", "confidence_histogram.png",
                "accuracy.png", "pseudo_label_accuracy.png", "plots.json"}



def _visplay(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*VISPLAY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _group(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except ProcessLookupError:
            continue
    return members


def _holder(lock: Path) -> str:
    """Who holds a run lock: its holder writes its pid there once it has the lock, and clears it when done."""
    return lock.read_text() if lock.exists() else ""


def _wait(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """`visplay up` on free ports: (home, the content of servers.json)."""
    home = tmp_path_factory.mktemp("ops")
    up = _visplay("up", "--home", str(home), "--prefect-port", str(free_port()), "--mlflow-port", str(free_port()))
    assert up.returncode == 0, up.stdout + up.stderr
    yield home, json.loads((home / "servers.json").read_text())
    _visplay("down", "--home", str(home))  # no-op when test_down already stopped them


def _serve(home: Path, log, *args: str) -> subprocess.Popen:
    """`visplay serve --home HOME ARGS` in a process group of its own, writing to ``log``."""
    return subprocess.Popen([*VISPLAY, "serve", "--home", str(home), *args], cwd=ROOT,
                            env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # picks a run up at once
                                 "PREFECT_LOGGING_LEVEL": "INFO"},  # the run's log, as a user reads it
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(serve: subprocess.Popen) -> None:
    os.killpg(serve.pid, signal.SIGTERM)
    try:
        serve.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def served(servers):
    """`visplay serve` and one run triggered through the Prefect API; while it is in flight, a second run of
    the same name, and a command-line run of a name whose lock is held. What the tests look at is read from
    Prefect here, once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, info = servers
    log = open(home / "serve.log", "w")
    serve = _serve(home, log, "--timezone", "Europe/Paris", "--line", RUN, "--config", "smoke")
    start = time.time()
    try:
        with temporary_settings({PREFECT_API_URL: info["prefect"]["api"]}), get_client(sync_client=True) as client:
            def deployment():
                try:
                    return client.read_deployment_by_name(f"visplay-nightly/{RUN}")
                except Exception:
                    assert serve.poll() is None, (home / "serve.log").read_text()
                    return None

            found = _wait(deployment, 120, "the served deployment")
            flow_run = run_deployment(f"visplay-nightly/{RUN}", parameters=PARAMETERS, timeout=0)
            _wait(lambda: _holder(home / "runs" / RUN / "lock"), 180, "the run to take its lock")
            try:  # a second run of the same name, while the first is in flight
                self_evolution(config=load_config("smoke"), home=str(home), run_name=RUN)
                second = None
            except RunInProgressError as e:
                second = str(e)
            with run_lock(home, HELD):  # the command line's answer to a run in flight (held by this test)
                cli = _visplay("run", "--config", "smoke", "--name", HELD, "--home", str(home))
            final = _wait(lambda: (r := client.read_flow_run(flow_run.id)).state.is_final() and r, 900,
                          "the triggered run", interval=2)
            keys = [f"{RUN}-mlflow", *(f"{RUN}-iteration-{k}{suffix}" for k in range(1, ITERATIONS + 1)
                                       for suffix in ("", "-questions"))]
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
                                    sort=LogSort.TIMESTAMP_ASC)
        seconds = time.time() - start
    finally:
        _stop(serve)
        log.close()
    print(f"served run: {seconds:.0f} s from `visplay serve` to completion")
    return {"home": home, "info": info, "deployment": found, "flow_run": final, "second": second, "cli": cli,
            "artifacts": {a.key: a for a in artifacts}, "logs": [entry.message for entry in logs],
            "serve_log": (home / "serve.log").read_text()}


@pytest.fixture(scope="module")
def failed_nights(servers):
    """`visplay serve --notify` with a local webhook, and two nights that go wrong: one whose flow raises (a
    setting its configuration does not know: Failed, in the run's process) and one whose process is SIGKILLed
    once it holds its line's lock, as the kernel's out-of-memory killer would (Crashed, by serve's runner).
    What the webhook received, and each flow run as Prefect ends it."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, info = servers
    webhook, log = Webhook(), open(home / "serve-notify.log", "w")
    serve = _serve(home, log, "--line", NOTIFIED, "--config", "smoke", "--notify", webhook.url)
    try:
        with temporary_settings({PREFECT_API_URL: info["prefect"]["api"]}), get_client(sync_client=True) as client:
            def deployment():
                assert serve.poll() is None, (home / "serve-notify.log").read_text()
                served = [d for d in client.read_deployments() if d.parameters.get("line") == NOTIFIED]
                return served and f"visplay-nightly/{served[0].name}"

            name = _wait(deployment, 120, "the served deployment")
            failing = run_deployment(name, parameters={"overrides": ["no_such_key=1"]}, timeout=0)
            failed = webhook.next(300)
            crashing = run_deployment(name, timeout=0)
            holder = _wait(lambda: _holder(home / "runs" / NOTIFIED / "lock"), 300, "the night to take its lock")
            os.kill(int(holder.split()[1]), signal.SIGKILL)
            crashed = webhook.next(120)
            runs = {"failed": client.read_flow_run(failing.id), "crashed": client.read_flow_run(crashing.id)}
    finally:
        _stop(serve)
        webhook.close()
        log.close()
    return {"info": info, "posts": {"failed": failed, "crashed": crashed}, "runs": runs,
            "serve_log": (home / "serve-notify.log").read_text()}


def test_up_serves_both_on_loopback(servers):
    home, info = servers
    assert set(info) == {"prefect", "mlflow"}
    for name, server in info.items():
        listening = [c.laddr for p in _group(server["pid"]) for c in p.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and {a.ip for a in listening} == {"127.0.0.1"}, (name, listening)
        assert int(server["url"].rsplit(":", 1)[1]) in {a.port for a in listening}
    import urllib.request
    assert urllib.request.urlopen(info["prefect"]["health"]).read() == b"true"
    assert urllib.request.urlopen(info["mlflow"]["health"]).read() == b"OK"


def test_the_prefect_ui_calls_its_own_api_and_shows_no_promotions(servers):
    """On a port other than Prefect's default (the fixture's), the UI's pages call this server's API: a URL
    relative to the page, so also when reached by another address (off loopback, through a tunnel)."""
    import urllib.parse
    import urllib.request

    _, info = servers
    assert info["prefect"]["port"] != 4200
    page = f"{info['prefect']['url']}/ui-settings"
    settings = json.loads(urllib.request.urlopen(page, timeout=30).read())
    assert settings["api_url"] == "/api" and urllib.parse.urljoin(page, settings["api_url"]) == info["prefect"]["api"]
    server = json.loads(urllib.request.urlopen(f"{info['prefect']['api']}/admin/settings", timeout=30).read())
    assert server["server"]["ui"]["show_promotional_content"] is False


def test_the_servers_stores_and_logs_are_their_owners_alone(servers):
    home, _ = servers
    for name in ("mlflow.db", "prefect", "prefect/prefect.db", "logs", "logs/mlflow-server.log",
                 "logs/prefect-server.log"):
        mode = (home / name).stat().st_mode
        assert mode & 0o077 == 0, f"{name}: {oct(mode & 0o777)}"


def test_up_beside_another_homes_servers_fails_naming_the_port_and_its_holder(servers, tmp_path):
    home, info = servers
    prefect_port = info["prefect"]["port"]
    other = tmp_path / "h2"
    done = _visplay("up", "--home", str(other), "--prefect-port", str(prefect_port), "--mlflow-port", str(free_port()))
    assert done.returncode == 1 and not done.stdout
    holder = next(p.pid for p in _group(info["prefect"]["pid"]) for c in p.net_connections("inet")
                  if c.status == psutil.CONN_LISTEN and c.laddr.port == prefect_port)
    assert f"visplay up: port {prefect_port} (for prefect) is taken by pid {holder}: " in done.stderr, done.stderr
    assert not (other / "servers.json").exists()
    down = _visplay("down", "--home", str(other))
    assert down.returncode == 0 and down.stdout.startswith("nothing to stop"), down.stdout
    assert json.loads((home / "servers.json").read_text()) == info  # the first home is untouched


def test_up_names_a_stranger_holding_the_port_and_starts_nothing(tmp_path):
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        with pytest.raises(ServerError, match=rf"port {port} \(for mlflow\) is taken by pid {os.getpid()}: "):
            up(tmp_path, prefect_port=free_port(), mlflow_port=port)
    assert not (tmp_path / "servers.json").exists() and not (tmp_path / "logs").exists()


def test_off_loopback_both_servers_refuse_requests_without_the_homes_credentials(tmp_path):
    import base64
    import urllib.error
    import urllib.request

    home = tmp_path / "exposed"
    started = _visplay("up", "--home", str(home), "--host", "0.0.0.0", "--prefect-port", str(free_port()),
                       "--mlflow-port", str(free_port()))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"credentials in {home / 'credentials.json'} (mode 0600)" in started.stdout
        info = json.loads((home / "servers.json").read_text())
        creds = json.loads((home / "credentials.json").read_text())
        assert (home / "credentials.json").stat().st_mode & 0o777 == 0o600
        basic = {"prefect": base64.b64encode(creds["prefect_auth_string"].encode()).decode(),
                 "mlflow": base64.b64encode(f"{creds['mlflow_username']}:{creds['mlflow_password']}".encode()).decode()}
        requests = {"prefect": (f"{info['prefect']['api']}/flows/filter", b"{}"),
                    "mlflow": (f"{info['mlflow']['api']}/api/2.0/mlflow/experiments/search?max_results=1", None)}
        for name, (url, body) in requests.items():
            headers = {"Content-Type": "application/json"}
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10)
            assert refused.value.code == 401, name
            headers["Authorization"] = f"Basic {basic[name]}"
            with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as ok:
                assert ok.status == 200, name
        for name, server in info.items():  # listening beyond loopback
            listening = {c.laddr.ip for p in _group(server["pid"]) for c in p.net_connections("inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == server["port"]}
            assert listening == {"0.0.0.0"}, (name, listening)
        # visplay's own clients use the home's credentials
        client = subprocess.run([sys.executable, "-c", CLIENTS, str(home)], cwd=ROOT, capture_output=True, text=True,
                                timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))})
        assert client.returncode == 0 and client.stdout.split() == ["mlflow-ok", "prefect-ok"], client.stderr[-2000:]
    finally:
        down = _visplay("down", "--home", str(home))
    assert down.stdout.strip() == "stopped mlflow and prefect", down.stdout


CLIENTS = """
import os, sys
from pathlib import Path
from flows.servers import use_servers
assert use_servers(Path(sys.argv[1]))
from mlflow.tracking import MlflowClient
MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_experiments()
print("mlflow-ok")
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    client.read_flows(limit=1)
print("prefect-ok")
"""


def test_starting_a_run_imports_no_torch_transformers_trl_or_matplotlib():
    """A rerun whose stages are all restored must not pay for the training stack, nor for plotting: stages
    import it when they compute, reports when they draw."""
    probe = ("import sys, flows.cli, flows.deploy, flows.experiments, flows.self_evolution; "
             "print(' '.join(m for m in ('torch', 'transformers', 'trl', 'peft', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr[-2000:]


TEMPORARY_PREFECT = """
import os, sys, psutil
from flows.servers import start_temporary_prefect
ready = start_temporary_prefect()
ready()
def servers():
    return [c for c in psutil.Process().children() if "uvicorn" in " ".join(c.cmdline())]
before = len(servers())
automations = [c.environ().get("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "-") for c in servers()]
from prefect import flow, task
step = task(name="step")(lambda i: i)
child = flow(name="child")(lambda: [step(i) for i in range(7)])
assert flow(name="probe")(lambda: [*[step(i) for i in range(7)], child()] and 7)() == 7
print(before, len(servers()), *automations)
"""


@pytest.mark.parametrize("configured", [False, True])
def test_a_command_boots_prefects_temporary_server_early_and_its_flows_use_that_one(prefect_server, configured,
                                                                                     tmp_path):
    """Without a Prefect server, a command starts Prefect's temporary server while it imports the flows, and
    the flow runs on it (one server), which records every task run, in batches, by the time it stops and
    runs no automations (nobody can define one on it); with one configured it starts none."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path)  # the temporary server's database: tmp_path/prefect.db
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # two loaded cores can take more than 20 s
    if configured:  # a server of the test session's harness
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    done = subprocess.run([sys.executable, "-c", TEMPORARY_PREFECT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == (["0", "0"] if configured else ["1", "1", "false"])
    if not configured:  # 14 steps and the subflow's own task run, each in its final state
        with sqlite3.connect(tmp_path / "prefect.db") as db:
            states = db.execute("SELECT name, state_type FROM task_run").fetchall()
        assert len(states) == 15 and {state for _, state in states} == {"COMPLETED"}, states


KILLED_COMMAND = """
import os, signal, sys, psutil
from flows.servers import start_temporary_prefect
start_temporary_prefect()
[server] = [c for c in psutil.Process().children() if "uvicorn" in " ".join(c.cmdline())]
print(server.pid, flush=True)
os.kill(os.getpid(), getattr(signal, sys.argv[1]))
"""


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_temporary_server_does_not_outlive_its_command_however_it_is_killed(signal_name):
    """Killed, a command runs no atexit (SIGKILL; SIGTERM by default): its temporary server stops anyway."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-c", KILLED_COMMAND, signal_name], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -getattr(signal, signal_name), done.stderr[-2000:]
    server = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(server), f"the temporary server {server} outlived its command"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # an exited orphan no one reaped yet
    except psutil.NoSuchProcess:
        return False


def test_deployment_is_a_nightly_form_with_one_run_at_a_time(served):
    deployment = served["deployment"]
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/Paris")
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.parameters == {"home": str(served["home"].resolve()), "line": RUN, "iterations": 1, "preset": "smoke"}
    form = deployment.parameter_openapi_schema["properties"]
    assert form["preset"]["enum"] == ["", *preset_names()] and form["preset"]["default"] == ""
    assert form["overrides"]["type"] == "array" and form["overrides"]["items"] == {"type": "string"}
    assert form["iterations"]["minimum"] == 1 and form["line"]["default"] == "nightly"
    assert {"config_path", "home", "tracking_uri"} <= set(form) and "run_name" not in form
    assert all(p.get("description") for p in form.values())


def test_serve_says_what_it_runs_and_when(served):
    plan = served["serve_log"].splitlines()[:2]
    assert plan[0].startswith(f"serving visplay-nightly/{RUN}: line {RUN}, 1 iteration a run, configuration smoke ")
    assert plan[0].endswith("(a new line)")
    assert re.fullmatch(r"schedule '0 2 \* \* \*' in Europe/Paris: next run \d{4}-\d\d-\d\d 02:00 CES?T, "
                        f"{RUN}-iteration-1", plan[1]), plan


def test_a_run_the_form_started_is_named_from_its_first_log_line(served):
    logs = [m for m in served["logs"] if not m.startswith("Downloading flow code")]  # the runner's, before the flow
    assert logs[0] == f"Beginning flow run '{RUN}-iterations-1-{ITERATIONS}' for flow 'visplay-nightly'", served["logs"][:3]
    assert logs[1].startswith(f"line {RUN}: iterations 1 to {ITERATIONS} (0 finished), configuration smoke "), logs[:3]


def test_triggered_run_completes_and_logs_to_the_mlflow_server(served):
    assert served["flow_run"].state.is_completed(), served["flow_run"].state
    assert served["flow_run"].parameters == {**PARAMETERS, "home": str(served["home"].resolve())}
    client = MlflowClient(served["info"]["mlflow"]["api"])
    experiment = client.get_experiment_by_name("visplay")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the kind MLflow 3 records
    runs = client.search_runs([experiment.experiment_id], f"tags.`visplay.run` = '{RUN}'", max_results=1000)
    [top] = [r for r in runs if r.data.tags.get("visplay.level") == "run"]
    assert top.info.status == "FINISHED"
    flow_run = served["flow_run"]
    assert flow_run.name == top.info.run_name == f"{RUN}-iterations-1-{ITERATIONS}"
    assert top.data.tags["prefect.flow_run_id"] == str(flow_run.id)
    assert top.data.tags["prefect.deployment"] == f"visplay-nightly/{RUN}"  # named after its line
    best = client.get_model_version_by_alias("visplay-reasoner", f"{RUN}-best")  # the line's first Reasoner is its best
    assert best.tags["visplay.run_id"] == top.info.run_id
    assert top.data.tags["prefect.flow_run_url"] == f"{served['info']['prefect']['url']}/flow-runs/flow-run/{flow_run.id}"
    link = served["artifacts"][f"{RUN}-mlflow"]  # and back, on the flow run the deployment started
    assert link.flow_run_id == flow_run.id and link.data.startswith("[MLflow run ")  # Prefect renders links as markdown
    assert (f"{served['info']['mlflow']['url']}/#/experiments/{experiment.experiment_id}/runs/{top.info.run_id}"
            "?workflowType=machine_learning)") in link.data  # opens in MLflow's model training view, not GenAI
    assert "summary.json" in {a.path for a in client.list_artifacts(top.info.run_id)}
    stages = {(r.data.tags["visplay.iteration"], r.data.tags["visplay.stage"]): r for r in runs
              if r.data.tags.get("visplay.complete") == "true"}
    assert set(stages) == {(str(k), s) for k in range(1, ITERATIONS + 1) for s in STAGES} | {("0", "benchmark_eval")}
    for run in stages.values():
        assert "outputs/metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id, "outputs")}
    iterations = {r.data.tags["visplay.iteration"]: r for r in runs if r.data.tags.get("visplay.level") == "iteration"}
    assert set(iterations) == {str(k) for k in range(1, ITERATIONS + 1)}
    for run in iterations.values():
        assert run.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} == {f"report/{f}" for f in REPORT_FILES}
        assert "shapes_accuracy" in run.data.metrics


def test_each_iteration_has_prefect_artifacts(served):
    artifacts = served["artifacts"]
    for k in range(1, ITERATIONS + 1):
        summary, table = artifacts[f"{RUN}-iteration-{k}"], artifacts[f"{RUN}-iteration-{k}-questions"]
        assert summary.type == "markdown" and table.type == "table"
        assert summary.flow_run_id == table.flow_run_id == served["flow_run"].id  # on the run the user opens
        assert f"iteration {k}" in summary.data and summary.data.count("data:image/png;base64,") >= 4
        rows = json.loads(table.data) if isinstance(table.data, str) else table.data
        assert rows and {"question", "votes", "confidence", "pseudo-label", "oracle answer"} <= set(rows[0])


def test_second_run_of_the_same_name_is_refused(served):
    assert served["second"] and served["second"].startswith(f"run {RUN} is already in progress (pid ")
    cli = served["cli"]
    assert cli.returncode == 1 and f"visplay: run {HELD} is already in progress" in cli.stderr, cli.stderr[-2000:]
    summary = json.loads((served["home"] / "runs" / RUN / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == list(range(1, ITERATIONS + 1))


def test_report_page_has_every_iteration_even_with_stage_folders_gone(served, tmp_path):
    home = served["home"]
    (home / "stages").rename(home / "stages-moved")  # the report must fetch from the MLflow server
    try:
        done = _visplay("report", "--run", "latest", "--home", str(home), "--output", str(tmp_path / "report.html"))
    finally:
        (home / "stages-moved").rename(home / "stages")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and 'src="http' not in page and "<link" not in page  # self-contained
    sections = page.split('<section id="iteration-')[1:]
    assert [int(s.split('"', 1)[0]) for s in sections] == list(range(1, ITERATIONS + 1))
    for section in sections:
        assert "<table>" in section and "Sample questions" in section
        assert section.count('alt="grpo_rewards.png" src="data:image/png;base64,') == 1
        assert section.count('alt="confidence_histogram.png" src="data:image/png;base64,') == 1
        assert 'class=thumb' in section
    for plot in ("accuracy.png", "pseudo_label_accuracy.png"):
        assert f'alt="{plot}" src="data:image/png;base64,' in page


def test_serve_notifies_only_a_web_url():
    from flows import cli

    with pytest.raises(SystemExit, match=r"^visplay serve: --notify takes a webhook's http\(s\) URL \(got 'file:///tmp/x'\)$"):
        cli.main(["serve", "--notify", "file:///tmp/x"])


@pytest.mark.parametrize("how", ["failed", "crashed"])
def test_a_night_that_fails_or_crashes_posts_to_the_webhook(failed_nights, how):
    path, content_type, body = failed_nights["posts"][how]
    flow_run = failed_nights["runs"][how]
    assert flow_run.state.name == how.capitalize(), flow_run.state
    assert (path, content_type) == ("/nights", "application/json")
    ui = f"{failed_nights['info']['prefect']['url']}/runs/flow-run/{flow_run.id}"
    assert body["line"] == NOTIFIED and body["flow_run"] == {"id": str(flow_run.id), "name": flow_run.name, "url": ui}
    assert body["state"] == {"type": how.upper(), "name": how.capitalize(), "message": flow_run.state.message}
    assert body["text"].startswith(f"visplay: the night of line {NOTIFIED} {how}: flow run {flow_run.name} (")
    assert body["text"].endswith(f") {ui}")
    why = {"failed": "no_such_key: Extra inputs are not permitted", "crashed": "Process exited with status code: -9"}
    assert why[how] in body["state"]["message"], body["state"]["message"]
    assert "a failed or crashed run posts to the webhook at 127.0.0.1" in failed_nights["serve_log"]


def test_four_runs_at_once_against_one_pair_of_servers(servers):
    """A team's sweeps and nights share one pair of servers: four runs at once all finish, with every MLflow
    run finished and neither server failing a request (no "database is locked", no HTTP 500)."""
    home, info = servers
    logs = {name: Path(server["log"]) for name, server in info.items()}
    seen = {name: log.stat().st_size for name, log in logs.items()}
    names = [f"side-by-side-{seed}" for seed in range(21, 25)]
    light = [f"{key}={value}" for key, value in {"iterations": 1, "images_per_iteration": 2, "eval.limit": 6,
                                                  "eval.votes": 0, "questioner.steps": 1, "reasoner.steps": 1}.items()]
    runs = [subprocess.Popen([*VISPLAY, "run", "--config", "smoke", *(a for kv in light for a in ("--set", kv)),
                              "--set", f"seed={name.rsplit('-', 1)[1]}", "--name", name, "--home", str(home)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in names]
    done = [(run, *run.communicate(timeout=1200)) for run in runs]
    for run, out, err in done:
        assert run.returncode == 0, err[-3000:]
    client = MlflowClient(info["mlflow"]["api"])
    experiment = client.get_experiment_by_name("visplay").experiment_id
    for name in names:
        recorded = client.search_runs([experiment], f"tags.`visplay.run` = '{name}'", max_results=1000)
        assert recorded and {r.info.status for r in recorded} == {"FINISHED"}, name
        stages = [r for r in recorded if r.data.tags.get("visplay.complete") == "true"]
        assert len(stages) == 1 + len(STAGES), name
    for name, log in logs.items():
        with open(log) as f:
            f.seek(seen[name])
            text = f.read()
        assert "database is locked" not in text and not re.search(r'" 500 |HTTP/1.1" 500|500 Internal Server Error', text), \
            f"{name} server: {text[-3000:]}"


def test_down_leaves_no_process(servers):
    home, info = servers
    processes = [p for server in info.values() for p in _group(server["pid"])]
    assert len(processes) >= 2
    done = _visplay("down", "--home", str(home))
    assert done.returncode == 0 and done.stdout.strip() == "stopped mlflow and prefect", done.stdout + done.stderr
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    assert not any(_group(server["pid"]) for server in info.values())
    assert not (home / "servers.json").exists()
