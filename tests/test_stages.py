"""Stage identity: the cache key carries the code's versions and each stage's format number, and a GRPO
stage's trainer checkpoints are kept under its whole cache key. Real stages, real MLflow (SQLite), real
TRL training of the tiny base, called without a Prefect flow."""

import importlib
import importlib.metadata

import pytest
from mlflow.tracking import MlflowClient

from tasks import stages
from tasks.stages import Checkpoint, ImageSet, StageResult, reasoner_grpo
from tasks.mlflow_client import experiment_id
from tasks.stage_cache import RunContext, open_run, stage_key
from visplay_core import bench, config, grpo
from visplay_core.config import BASE_CHECKPOINT, code_versions, load_config
from visplay_core.corpus import ingest, write_embedded_corpus
from visplay_core.io import write_jsonl


def _key(stage="reasoner_grpo"):
    return stage_key(stage, {"reasoner": "r", "curated": "c"}, stages._versioned(stage, {"seed": 0}))


@pytest.mark.parametrize("change", ["visplay", "bench", "transformers", "trl", "format"])
def test_each_version_is_part_of_the_cache_key(monkeypatch, change):
    before = _key()
    if change in ("visplay", "transformers", "trl"):
        installed = config._installed_versions()
        monkeypatch.setattr(config, "_installed_versions", lambda: {**installed, change: installed[change] + ".post1"})
    elif change == "bench":
        monkeypatch.setattr(bench, "VERSION", bench.VERSION + "-next")
    else:
        monkeypatch.setitem(stages.FORMATS, "reasoner_grpo", stages.FORMATS["reasoner_grpo"] + 1)
    assert _key() != before
    assert _key("question_rollout") != before  # and stages differ from each other anyway


def test_code_versions_name_what_they_cover():
    versions = code_versions()
    assert versions == {"visplay": importlib.metadata.version("visplay"), "bench": bench.VERSION,
                        "transformers": importlib.metadata.version("transformers"),
                        "trl": importlib.metadata.version("trl")}
    assert set(stages.FORMATS) == {"question_rollout", "confidence_scoring", "questioner_grpo", "candidate_generation",
                                   "threshold_filtering", "reasoner_grpo", "benchmark_eval"}


@pytest.fixture
def reasoner_stage(tmp_path):
    """What ``reasoner_grpo`` needs: a run context (MLflow in tmp), images, a curated set, the base."""
    world = write_embedded_corpus(tmp_path / "world", 2, seed=0)
    manifest = ingest(world / "images", tmp_path / "corpus", max_pixels=112 * 112)
    ids = [m["id"] for m in manifest.images]
    curated = tmp_path / "curated"
    write_jsonl(curated / "curated.jsonl", [{"image_id": i, "question": "How many circles are there?",
                                              "pseudo_label": "1"} for i in ids])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = experiment_id(client, tmp_path)
    run_id = open_run(client, experiment, "run", {"visplay.run": "run"})

    def run(learning_rate: float) -> StageResult:
        config = load_config("smoke", ["reasoner.steps=1", "reasoner.prompts_per_step=1", "reasoner.num_generations=4",
                                       f"reasoner.learning_rate={learning_rate}", "reasoner.temperature=1.5"])
        ctx = RunContext(home=str(tmp_path / "home"), run="run", config=config, tracking_uri=client.tracking_uri,
                         experiment_id=experiment, run_id=run_id)
        return reasoner_grpo.fn(ctx, 0, run_id, Checkpoint.of_folder(BASE_CHECKPOINT),
                                ImageSet(folder=str(tmp_path / "corpus"), ids=ids),
                                StageResult(stage="threshold_filtering", iteration=0, key="curated", folder=str(curated),
                                            run_id=run_id, metrics={}, cached=False, seconds=0.0))

    return tmp_path / "home", run


def test_grpo_work_folder_is_the_stage_key_so_another_learning_rate_never_resumes_it(reasoner_stage, monkeypatch):
    home, run = reasoner_stage
    work_dirs = []
    launch = grpo.launch
    monkeypatch.setattr(grpo, "launch", lambda job: work_dirs.append(job.work_dir) or launch(job))
    first = run(1e-3)
    assert work_dirs == [str(home / "work" / f"reasoner_grpo-{first.key}")]
    assert first.metrics["steps"] == 1 and not (home / "work" / f"reasoner_grpo-{first.key}").exists()
    other = run(2e-3)  # e.g. a killed stage rerun with another learning rate: its own, fresh work folder
    assert other.key != first.key and work_dirs[1] == str(home / "work" / f"reasoner_grpo-{other.key}")
    assert run(1e-3).cached and len(work_dirs) == 2  # the same settings restore the finished stage
