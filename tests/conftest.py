"""Test-wide isolation: Prefect, MLflow and Hugging Face stay offline and write only under tmp folders."""

import os
import tempfile

_root = tempfile.mkdtemp(prefix="visplay-tests-")
for key, value in {
    "PREFECT_HOME": os.path.join(_root, "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ[key] = value
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (a real API and database) for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
