"""GRPO across two processes on CPU (gloo), under `accelerate launch` with
deployments/accelerate/cpu-2proc.yaml: the Questioner's reward over the gathered batch equals one process's,
and a real flow's two GRPO stages train with each rank on its share of the batch. What stays untested here:
NCCL, vLLM and DeepSpeed ZeRO (no GPU)."""

import json
import subprocess
import sys

import pytest

from visplay_core.answers import extract_question
from visplay_core.config import BASE_CHECKPOINT, TrainingConfig, load_config
from visplay_core.grpo import GRPOJob, check_accelerate_config, launch
from visplay_core.method import MethodConfig, method_preset
from visplay_core.rewards import make_questioner_reward_func, questioner_rewards

from . import two_ranks

ROOT = BASE_CHECKPOINT.parent.parent
TWO_PROCESSES = ROOT / "deployments" / "accelerate" / "cpu-2proc.yaml"


def test_questioner_rewards_over_two_processes_equal_one_process_on_the_same_completions(tmp_path):
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(TWO_PROCESSES),
                           str(ROOT / "tests" / "two_ranks.py"), str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{i}.json").read_text()) for i in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["draws"] for r in ranks] == [[0, 0], [1, 1]]  # outside a trainer, step 0: each rank its own votes
    questions = [extract_question(c) for c in two_ranks.COMPLETIONS]
    confidences = two_ranks.confidences(questions, two_ranks.IMAGE_IDS, 0)
    for preset in ("official-code", "paper"):
        method = method_preset(preset)
        two = ranks[0][preset]["rewards"] + ranks[1][preset]["rewards"]
        one = make_questioner_reward_func(two_ranks.confidences, method)(
            [None] * 6, two_ranks.COMPLETIONS, image_id=two_ranks.IMAGE_IDS)  # this process alone: the whole batch
        assert two == one == questioner_rewards(confidences, questions, method, group_ids=two_ranks.IMAGE_IDS)
        each_alone = [w for half in (slice(0, 3), slice(3, 6)) for w in questioner_rewards(
            confidences[half], questions[half], method, group_ids=two_ranks.IMAGE_IDS[half])]
        assert two != each_alone  # clustering each rank's half alone would differ: the gather matters
        assert [r[preset]["logged"] for r in ranks] == [{"gathered_questions": 6}] * 2


def test_a_multi_cpu_config_that_would_start_one_process_is_refused(tmp_path):
    config = tmp_path / "multi-cpu.yaml"
    config.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\nuse_cpu: true\n")
    job = GRPOJob(role="reasoner", model=str(BASE_CHECKPOINT), output=str(tmp_path / "out"),
                  work_dir=str(tmp_path / "work"), images_folder=str(tmp_path), rows=[], steps=1, learning_rate=1e-4,
                  prompts_per_step=1, num_generations=2, temperature=1.0, max_new_tokens=8, save_steps=1, kl_beta=0.0,
                  seed=0, method=MethodConfig(), training=TrainingConfig(launcher="accelerate",
                                                                         accelerate_config=str(config)))
    with pytest.raises(ValueError, match="MULTI_CPU without mpirun_config.mpirun_hostfile: accelerate launch would "
                                         "start one process, not 2"):
        launch(job)
    assert not (tmp_path / "work" / "launch.log").exists()  # refused before anything was launched
    config.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\nmpirun_config: {mpirun_hostfile: hosts}\n")
    check_accelerate_config(config)  # mpirun starts the processes
    for shipped in (ROOT / "deployments" / "accelerate").glob("*.yaml"):
        check_accelerate_config(shipped)


@pytest.mark.usefixtures("prefect_server")
def test_a_flow_runs_both_grpo_stages_in_two_processes_each_on_its_share(tmp_path):
    from flows.self_evolution import self_evolution
    from visplay_core.io import read_jsonl

    config = load_config("smoke", [
        "iterations=1", "images_per_iteration=2", "group_size=4", "candidates_per_image=2", "eval.limit=6",
        "eval.votes=0", "eval.probe=0", "method.diversity_scope=batch", "method.m_questioner=2", "method.m_curation=2",
        "method.tau_low=0", "method.tau_high=1", "questioner.steps=1", "questioner.prompts_per_step=1",
        "reasoner.steps=1", "reasoner.prompts_per_step=1", "training.launcher=accelerate",
        f"training.accelerate_config={TWO_PROCESSES}"])
    summary = self_evolution(config=config, home=str(tmp_path))
    [iteration] = summary["iterations"]
    folder = {stage: tmp_path / "stages" / f"{stage}-{done['key']}" for stage, done in iteration["stages"].items()}
    for stage, role in (("questioner_grpo", config.questioner), ("reasoner_grpo", config.reasoner)):
        assert json.loads((folder[stage] / "metrics.json").read_text())["steps"] == role.steps == 1
        share = role.prompts_per_step * role.num_generations // 2  # 1 prompt x 4 completions over 2 ranks
        assert sorted(p.name for p in (folder[stage] / "ranks").iterdir()) == ["0.json", "1.json"]
        ranks = [json.loads((folder[stage] / "ranks" / f"{i}.json").read_text()) for i in (0, 1)]
        assert ranks == [{"world_size": 2, "scored": [share] * role.steps}] * 2
    [step] = [row for row in read_jsonl(folder["questioner_grpo"] / "history.jsonl") if "reward" in row]
    assert step["gathered_questions"] == config.questioner.prompts_per_step * config.group_size  # the whole batch
    evaluated = json.loads((folder["benchmark_eval"] / "metrics.json").read_text())
    assert evaluated["shapes_n"] == 6 and 0 <= evaluated["shapes_accuracy"] <= 1  # the trained Reasoner answered
