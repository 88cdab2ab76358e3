"""What a GRPO stage resumed from its trainer checkpoint depends on, beyond the checkpoint itself: each
epoch's data order, the Questioner's votes drawn by step, the trainer's log, and where it cannot resume
exactly (vLLM rollouts), a restart. tests/test_resilience.py kills whole runs after each role's first
trainer checkpoint and compares them with an uninterrupted run."""

import logging

from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from trl.trainer.utils import RepeatSampler

from visplay_core import world
from visplay_core.grpo import GRPOJob, _EpochSampler, resume_point, step_log
from visplay_core.method import MethodConfig
from visplay_core.selfplay import OracleScorer


def test_an_epochs_data_order_does_not_depend_on_the_epochs_drawn_before_it():
    settings = dict(data_source=list(range(6)), mini_repeat_count=2, batch_size=3, shuffle=True, seed=0)

    def epoch(sampler, e):  # the trainer sets each epoch on its (accelerate-prepared) loader
        loader = prepare_data_loader(DataLoader(settings["data_source"], sampler=sampler, batch_size=12),
                                     put_on_device=False)
        loader.set_epoch(e)
        return [int(i) for batch in loader for i in batch]

    running = _EpochSampler(**settings)
    uninterrupted = [epoch(running, e) for e in range(3)]
    assert epoch(_EpochSampler(**settings), 2) == uninterrupted[2]  # a resume at the start of epoch 2
    assert uninterrupted[0] == list(RepeatSampler(**settings))  # epoch 0 is TRL's own order
    assert len({tuple(order) for order in uninterrupted}) == 3
    assert list(RepeatSampler(**settings)) != uninterrupted[2]  # TRL's: a fresh sampler replays epoch 0


def test_the_oracle_votes_of_a_step_do_not_depend_on_the_calls_before_it():
    scene = world.Scene((world.Obj("circle", "red", "small", 1, 1), world.Obj("square", "blue", "large", 2, 3)),
                        background=240)
    image = world.render(scene, seed=1)
    scorer = OracleScorer({"a": scene}, {"a": image}, m=20, error_rate=0.5, seed=3)
    questions = ["How many squares are there?", "What color is the circle?"]
    step_1 = scorer.votes([image] * 2, questions, step=1)
    scorer.votes([image] * 2, questions, step=0)
    assert scorer.votes([image] * 2, questions, step=1) == step_1
    assert OracleScorer({"a": scene}, {"a": image}, m=20, error_rate=0.5, seed=3).votes([image] * 2, questions,
                                                                                       step=1) == step_1
    assert scorer.votes([image] * 2, questions, step=2) != step_1


def test_the_step_log_keeps_each_steps_numbers_without_the_end_of_training_summary():
    log_history = [{"loss": 0.5, "reward": 1.0, "epoch": 0.5, "step": 1}, {"loss": 0.25, "note": "text", "step": 2},
                   {"train_runtime": 3.0, "train_loss": 0.375, "step": 2}]
    assert step_log(log_history) == [{"loss": 0.5, "reward": 1.0, "epoch": 0.5, "step": 1}, {"loss": 0.25, "step": 2}]


def test_a_job_resumes_from_its_last_whole_checkpoint_and_one_with_vllm_rollouts_starts_again(tmp_path, caplog):
    for name, state in (("checkpoint-1", "{}"), ("checkpoint-2", "{}"), ("checkpoint-3", '{"cut sh')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text(state)

    def job(engine):
        return GRPOJob(role="reasoner", model="m", output="out", work_dir=str(tmp_path), images_folder="images",
                       rows=[], steps=4, learning_rate=1e-6, prompts_per_step=1, num_generations=2, temperature=1.0,
                       max_new_tokens=8, save_steps=1, kl_beta=0.0, seed=0, method=MethodConfig(), engine=engine)

    with caplog.at_level(logging.INFO, logger="visplay"):
        assert resume_point(job("hf")) == str(tmp_path / "checkpoint-2")
        assert f"GRPO reasoner: resuming from {tmp_path / 'checkpoint-2'}" in caplog.text
        assert resume_point(job("vllm")) is None
    assert "not resuming from" in caplog.text and "restarting it from step 0" in caplog.text
