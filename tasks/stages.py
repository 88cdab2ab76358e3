"""The seven stages of a self-evolution iteration, one thin Prefect task each.

Every task names its inputs (checkpoints and datasets by key), its configuration slice, and a
``compute`` that calls ``visplay_core`` and writes its outputs; ``run_stage`` caches and records it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Callable

from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from visplay_core import world
from visplay_core.config import code_versions
from visplay_core.corpus import Manifest, load_images, scenes_by_id
from visplay_core.io import read_jsonl, write_json, write_jsonl
from visplay_core.measure import measure_iteration, probe_statistics, probe_truth, question_diversity
from visplay_core.rewards import Candidate, Vote, answerable_confidence, curate, is_unanswerable, questioner_rewards

from .stage_cache import RunContext, StageResult, run_stage, stage_key

if TYPE_CHECKING:  # for annotations only: these import torch
    from visplay_core import selfplay
    from visplay_core.grpo import GRPOJob, ScorerSpec

# Each stage's format number, part of its cache key with the code's versions (``code_versions``): bump it
# when what the stage writes, or how it computes it, changes in a way its configuration does not show;
# its finished copies are then recomputed, and so is every stage after it (their inputs' keys change).
FORMATS = {"question_rollout": 1, "confidence_scoring": 2, "questioner_grpo": 2, "candidate_generation": 2,
           "threshold_filtering": 1, "reasoner_grpo": 2, "benchmark_eval": 4}

# torch, transformers and TRL (and the modules that import them) are imported where a stage computes, so
# that a run whose stages are all restored starts in seconds.


class Checkpoint(BaseModel):
    """A model folder and the key that identifies its content."""

    path: str
    key: str

    @staticmethod
    def of_folder(path: str | Path) -> "Checkpoint":
        """Key a checkpoint by its files' names and contents (hashing a 7B's 15 GB takes about ten seconds,
        once per run): a base retrained in place gets a new key, the same weights elsewhere the same key."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a model checkpoint folder (no config.json)")
        digest = hashlib.sha256()
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            content = hashlib.sha256()
            with open(file, "rb") as f:
                while chunk := f.read(1 << 24):
                    content.update(chunk)
            digest.update(f"{file.name}\0{content.hexdigest()}\n".encode())
        return Checkpoint(path=str(path), key=digest.hexdigest()[:16])

    @staticmethod
    def of_stage(stage: StageResult) -> "Checkpoint":
        """The model a GRPO stage wrote (``<its folder>/model``), keyed by the stage's key."""
        return Checkpoint(path=str(Path(stage.folder) / "model"), key=stage.key)


class ImageSet(BaseModel):
    """Images of one iteration: ids (content hashes) in an ingested corpus folder; ``truth`` is the
    embedded world's folder (its scenes, for measurement only), None for other corpora."""

    folder: str
    ids: list[str]
    truth: str | None = None

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.ids).encode()).hexdigest()[:16]

    def load(self) -> dict[str, Image.Image]:
        return load_images(self.folder, self.ids)


def _engine(ctx: RunContext, checkpoint: Checkpoint):
    from visplay_core.generation import make_engine

    return make_engine(checkpoint.path, ctx.config.engine, ctx.config.trust_remote_code, ctx.config.seed)


def _scorer_spec(ctx: RunContext, reasoner: Checkpoint, images: ImageSet, m: int, seed: int) -> ScorerSpec:
    """The Reasoner's vote: the model's, or the oracle's when the config asks for an oracle Reasoner."""
    from visplay_core.grpo import ScorerSpec

    cfg = ctx.config
    return ScorerSpec(reasoner=reasoner.path, m=m, temperature=cfg.reasoner.temperature,
                      max_new_tokens=cfg.reasoner.max_new_tokens, seed=seed, engine=cfg.engine,
                      oracle_error=cfg.oracle_reasoner_error, truth=images.truth,
                      trust_remote_code=cfg.trust_remote_code,
                      unanswerable_vote_share=cfg.method.unanswerable_vote_share)


def _scorer(ctx: RunContext, reasoner: Checkpoint, images: ImageSet, m: int, seed: int) -> selfplay.ConfidenceScorer:
    from visplay_core import selfplay

    return selfplay.make_scorer(_scorer_spec(ctx, reasoner, images, m, seed), images.folder, images.load())


def _grpo_job(ctx: RunContext, role: str, model: Checkpoint, out: Path, work: Path, images: ImageSet, rows: list[dict],
              k: int, scorer: ScorerSpec | None = None) -> GRPOJob:
    from visplay_core.grpo import GRPOJob

    cfg = ctx.config
    return GRPOJob(role=role, model=model.path, output=str(out), work_dir=str(work), images_folder=images.folder,
                   rows=rows, **getattr(cfg, role).model_dump(), seed=cfg.seed + k,
                   method=cfg.method, scorer=scorer, engine=cfg.engine, training=cfg.training,
                   trust_remote_code=cfg.trust_remote_code)


def _versioned(stage: str, params: dict) -> dict:
    return {**params, "code": {**code_versions(), "format": FORMATS[stage]}}


def _stage(ctx: RunContext, k: int, run_id: str, stage: str, inputs: dict, params: dict,
           compute: Callable[[Path], dict]) -> StageResult:
    """``run_stage`` with the code's versions and the stage's format number in its cache key, and one
    progress bar over the prompts its compute generates for."""
    from visplay_core.progress import progress

    def compute_with_bar(out: Path) -> dict:
        with progress(f"iteration {k} · {stage}"):
            return compute(out)

    return run_stage(ctx, k, run_id, stage, inputs, _versioned(stage, params), compute_with_bar)


def _grpo_stage(ctx: RunContext, k: int, run_id: str, stage: str, inputs: dict, params: dict,
                compute: Callable[[Path, Path], dict]) -> StageResult:
    """A GRPO stage: ``compute(out, work)`` keeps the trainer's checkpoints in ``HOME/work/<stage>-<key>``,
    named by the stage's whole cache key, so only a rerun with the same settings, inputs and code resumes
    them (never an optimizer trained with another learning rate, say); they go once the stage is recorded."""
    params = _versioned(stage, params)
    work = Path(ctx.home) / "work" / f"{stage}-{stage_key(stage, inputs, params)}"
    result = run_stage(ctx, k, run_id, stage, inputs, params, lambda out: compute(out, work))
    shutil.rmtree(work, ignore_errors=True)
    return result


def _vote(row: dict) -> Vote:
    return Vote(label=row["pseudo_label"], confidence=row["confidence"], votes=row["votes"], m=row["m"])


def _question_metrics(rows: list[dict], unanswerable_vote_share: float) -> dict:
    valid = [r for r in rows if r["question"] is not None]
    return {
        "questions": len(rows),
        "malformed_questions": len(rows) - len(valid),  # not one question in the Questioner's format: reward 0
        "unanswered_samples": sum(r["m"] - sum(r["votes"].values()) for r in valid),  # no boxed answer: no vote
        # the Reasoner's "none" answers make them invalid (rewards.is_unanswerable): no reward, never curated
        "unanswerable_questions": sum(is_unanswerable(_vote(r), unanswerable_vote_share) for r in valid),
        "validity_rate": len(valid) / len(rows) if rows else 0.0,
        "distinct_questions": len({r["question"] for r in valid}),
        "mean_confidence": mean(r["confidence"] for r in valid) if valid else 0.0,
    }


@task(name="question_rollout", cache_policy=NO_CACHE)
def question_rollout(ctx: RunContext, k: int, run_id: str, questioner: Checkpoint, images: ImageSet) -> StageResult:
    """The current Questioner writes G questions per image (before its update)."""
    cfg = ctx.config
    params = {"G": cfg.group_size, "temperature": cfg.questioner.temperature,
              "max_new_tokens": cfg.questioner.max_new_tokens, "engine": cfg.engine, "seed": cfg.seed}

    def compute(out: Path) -> dict:
        from transformers import set_seed
        from visplay_core import selfplay

        set_seed(cfg.seed + k)
        rows = selfplay.write_questions(_engine(ctx, questioner), images.load(), images.ids, n=cfg.group_size,
                                        temperature=cfg.questioner.temperature,
                                        max_new_tokens=cfg.questioner.max_new_tokens, seed=cfg.seed + k)
        write_jsonl(out / "questions.jsonl", rows)
        valid = sum(r["question"] is not None for r in rows)
        return {"questions": len(rows), "validity_rate": valid / len(rows)}

    return _stage(ctx, k, run_id, "question_rollout", {"questioner": questioner.key, "images": images.key},
                  params, compute)


@task(name="confidence_scoring", cache_policy=NO_CACHE)
def confidence_scoring(ctx: RunContext, k: int, run_id: str, reasoner: Checkpoint, images: ImageSet,
                       rollout: StageResult) -> StageResult:
    """The Reasoner votes on every rolled-out question; each gets its confidence and Questioner reward.
    Measures the Questioner's difficulty before its update and picks the images its GRPO trains on."""
    cfg = ctx.config
    params = {"m": cfg.method.m_questioner, "reasoner_temperature": cfg.reasoner.temperature,
              "max_new_tokens": cfg.reasoner.max_new_tokens, "method": cfg.method.questioner_slice(),
              "oracle": cfg.oracle_reasoner_error, "seed": cfg.seed}

    def compute(out: Path) -> dict:
        from transformers import set_seed
        from visplay_core import selfplay

        set_seed(cfg.seed + k)
        rows = selfplay.score_rows(_scorer(ctx, reasoner, images, cfg.method.m_questioner, cfg.seed + 100 * k),
                                   images.load(), read_jsonl(Path(rollout.folder) / "questions.jsonl"))
        confidences = [answerable_confidence(_vote(r), cfg.method.unanswerable_vote_share) for r in rows]
        rewards = questioner_rewards(confidences, [r["question"] for r in rows], cfg.method,
                                     group_ids=[r["image_id"] for r in rows])
        rows = [{**r, "reward": w} for r, w in zip(rows, rewards)]
        write_jsonl(out / "scored.jsonl", rows)
        by_image: dict[str, list[float]] = {}
        for r in rows:
            by_image.setdefault(r["image_id"], []).append(r["reward"])
        # GRPO learns only from groups whose rewards differ: train on those images (all when none do).
        informative = [i for i in images.ids if len(set(by_image.get(i, []))) > 1] or list(images.ids)
        write_json(out / "grpo_images.json", informative)
        return {**_question_metrics(rows, cfg.method.unanswerable_vote_share), "mean_reward": mean(rewards),
                "informative_images": len(informative)}

    return _stage(ctx, k, run_id, "confidence_scoring", {"reasoner": reasoner.key, "rollout": rollout.key},
                  params, compute)


@task(name="questioner_grpo", cache_policy=NO_CACHE)
def questioner_grpo(ctx: RunContext, k: int, run_id: str, questioner: Checkpoint, reasoner: Checkpoint,
                    images: ImageSet, scoring: StageResult) -> StageResult:
    """GRPO on the Questioner: reward = uncertainty of the Reasoner's vote minus the diversity penalty."""
    cfg, role = ctx.config, ctx.config.questioner
    params = {"role": role.model_dump(), "method": cfg.method.questioner_slice(),
              "lora": cfg.training.lora and cfg.training.lora.model_dump(),
              "reasoner_temperature": cfg.reasoner.temperature, "reasoner_max_new_tokens": cfg.reasoner.max_new_tokens,
              "oracle": cfg.oracle_reasoner_error, "seed": cfg.seed}

    def compute(out: Path, work: Path) -> dict:
        from visplay_core.grpo import launch

        chosen = json.loads((Path(scoring.folder) / "grpo_images.json").read_text())
        scorer = _scorer_spec(ctx, reasoner, images, cfg.method.m_questioner, cfg.seed + 100 * k + 1)
        result = launch(_grpo_job(ctx, "questioner", questioner, out, work, images, [{"image_id": i} for i in chosen],
                                  k, scorer))
        return {"grpo": result.history, "steps": result.steps}

    return _grpo_stage(ctx, k, run_id, "questioner_grpo",
                       {"questioner": questioner.key, "reasoner": reasoner.key, "scoring": scoring.key}, params, compute)


@task(name="candidate_generation", cache_policy=NO_CACHE)
def candidate_generation(ctx: RunContext, k: int, run_id: str, questioner: Checkpoint, reasoner: Checkpoint,
                         images: ImageSet) -> StageResult:
    """The updated Questioner writes N candidates per image (or, by ``question_source``, the world's grammar
    does); the Reasoner's vote labels each one."""
    cfg = ctx.config
    params = {"N": cfg.candidates_per_image, "m": cfg.method.m_curation, "temperature": cfg.questioner.temperature,
              "reasoner_temperature": cfg.reasoner.temperature, "max_new_tokens": cfg.questioner.max_new_tokens,
              "reasoner_max_new_tokens": cfg.reasoner.max_new_tokens, "engine": cfg.engine,
              "oracle": cfg.oracle_reasoner_error, "seed": cfg.seed,
              # only where it is not the Questioner: the stages of runs from before the setting keep their keys
              **({"source": cfg.question_source} if cfg.question_source != "questioner" else {})}

    def compute(out: Path) -> dict:
        from transformers import set_seed
        from visplay_core import selfplay

        set_seed(cfg.seed + k)
        pictures = images.load()
        if cfg.question_source == "questioner":
            rows = selfplay.write_questions(_engine(ctx, questioner), pictures, images.ids, n=cfg.candidates_per_image,
                                            temperature=cfg.questioner.temperature,
                                            max_new_tokens=cfg.questioner.max_new_tokens, seed=cfg.seed + 10 * k)
        else:  # the grammar: blind, or from each image's scene in the oracle arm (questions only, never answers)
            oracle = cfg.question_source == "oracle-grammar"
            scenes = scenes_by_id(images.truth, Manifest.load(images.folder)) if oracle else None
            rows = selfplay.grammar_questions(images.ids, cfg.candidates_per_image, cfg.seed + 10 * k, scenes)
        rows = selfplay.score_rows(_scorer(ctx, reasoner, images, cfg.method.m_curation, cfg.seed + 100 * k + 2), pictures, rows)
        write_jsonl(out / "candidates.jsonl", rows)
        return _question_metrics(rows, cfg.method.unanswerable_vote_share)

    return _stage(ctx, k, run_id, "candidate_generation",
                  {"questioner": questioner.key, "reasoner": reasoner.key, "images": images.key}, params, compute)


@task(name="threshold_filtering", cache_policy=NO_CACHE)
def threshold_filtering(ctx: RunContext, k: int, run_id: str, candidates: StageResult) -> StageResult:
    """Keep candidates whose confidence lies in [tau_low, tau_high]; the majority answer is the pseudo-label."""
    method = ctx.config.method
    params = {"tau_low": method.tau_low, "tau_high": method.tau_high, "max_label_share": method.max_label_share}
    # A question's kind is read from its text (the embedded grammar); other corpora have one kind.
    kind_of = world.question_kind if ctx.config.corpus == "embedded" else (lambda question: None)

    def compute(out: Path) -> dict:
        rows = [r for r in read_jsonl(Path(candidates.folder) / "candidates.jsonl") if r["question"] is not None]
        kept = curate([Candidate(r["image_id"], r["question"], _vote(r)) for r in rows], method, kind_of)
        curated = [{"image_id": c.image_id, "question": c.question, "pseudo_label": c.vote.label,
                    "confidence": c.vote.confidence, "votes": c.vote.votes} for c in kept]
        write_jsonl(out / "curated.jsonl", curated)
        return {"curated": len(curated), "kept_fraction": len(curated) / len(rows) if rows else 0.0,
                "mean_confidence": mean(c["confidence"] for c in curated) if curated else 0.0}

    return _stage(ctx, k, run_id, "threshold_filtering", {"candidates": candidates.key}, params, compute)


@task(name="reasoner_grpo", cache_policy=NO_CACHE)
def reasoner_grpo(ctx: RunContext, k: int, run_id: str, reasoner: Checkpoint, images: ImageSet,
                  curated: StageResult) -> StageResult:
    """GRPO on the Reasoner: reward 1 when its boxed answer equals the pseudo-label."""
    cfg, role = ctx.config, ctx.config.reasoner
    params = {"role": role.model_dump(), "format_weight": cfg.method.reasoner_format_weight, "ceiling": cfg.ceiling,
              "lora": cfg.training.lora and cfg.training.lora.model_dump(), "seed": cfg.seed}

    def compute(out: Path, work: Path) -> dict:
        from visplay_core.grpo import launch

        data = read_jsonl(Path(curated.folder) / "curated.jsonl")
        rows = [{"image_id": r["image_id"], "question": r["question"], "pseudo_label": r["pseudo_label"]} for r in data]
        if cfg.ceiling != "none":  # the ceiling arms: true answers in place of pseudo-labels
            from visplay_core import selfplay

            scenes = scenes_by_id(images.truth, Manifest.load(images.folder))
            rows = (selfplay.oracle_labels(rows, scenes) if cfg.ceiling == "curated" else
                    selfplay.fresh_questions(scenes, images.ids, role.steps * role.prompts_per_step, cfg.seed + k))
        result = launch(_grpo_job(ctx, "reasoner", reasoner, out, work, images, rows, k))
        return {"grpo": result.history, "steps": result.steps, "trained_on": len(rows)}

    return _grpo_stage(ctx, k, run_id, "reasoner_grpo", {"reasoner": reasoner.key, "curated": curated.key},
                       params, compute)


@task(name="benchmark_eval", cache_policy=NO_CACHE)
def benchmark_eval(ctx: RunContext, k: int, run_id: str, reasoner: Checkpoint, images: ImageSet,
                   stages: dict[str, StageResult], previous: StageResult | None = None) -> StageResult:
    """The Reasoner on the configured benchmarks (ShapesBench, and the paper's at real scale); the diversity of
    the iteration's questions; the Reasoner's answers to the run's probe of unlabeled questions and their
    label-free statistics (``probe.*``, against the ``previous`` evaluation's answers); and on the embedded
    world the oracle's view of the iteration: validity of the questions, true accuracy of the pseudo-labels and
    their calibration, and of the probe's answers.

    The probe (``eval.probe`` questions) is written once a run, by the first evaluation (the base's, with no
    ``previous``): its model writes them as Questioner, one about each of its images in turn; every later
    evaluation answers the questions of the one before it."""
    cfg = ctx.config
    params = {"eval": cfg.eval.model_dump(), "probe_votes": cfg.method.m_curation,
              "probe_temperature": cfg.reasoner.temperature, "bleu": cfg.method.bleu,
              "probe_writing": {"temperature": cfg.questioner.temperature,
                                "max_new_tokens": cfg.questioner.max_new_tokens, "seed": cfg.seed}}

    def compute(out: Path) -> dict:
        from transformers import set_seed
        from visplay_core.evaluate import evaluate_on
        from visplay_core.model import load_model, load_processor

        set_seed(cfg.seed)
        model = load_model(reasoner.path, cfg.trust_remote_code)
        processor = load_processor(reasoner.path, cfg.trust_remote_code)
        votes = cfg.eval.votes if k == 0 or cfg.eval.votes_every_iteration else 0
        results = {name: evaluate_on(name, model, processor, limit=cfg.eval.limit, votes=votes,
                                     temperature=cfg.reasoner.temperature, shapes_split=cfg.eval.split,
                                     shuffled=cfg.eval.shuffled, source=cfg.eval.sources.get(name))
                   for name in cfg.eval.benchmarks}
        files = {name: read_jsonl(Path(s.folder) / f) for name, s, f in (
            ("rollout", stages.get("confidence_scoring"), "scored.jsonl"),
            ("candidates", stages.get("candidate_generation"), "candidates.jsonl"),
            ("curated", stages.get("threshold_filtering"), "curated.jsonl")) if s is not None}
        scenes = scenes_by_id(images.truth, Manifest.load(images.folder)) if images.truth else {}
        truth = measure_iteration(files, scenes)
        write_json(out / "eval.json", {**results, **truth})
        diversity = {f"{name}.{metric}": value for name in ("candidates", "curated") if name in files
                     for metric, value in question_diversity(files[name], cfg.method.bleu,
                                                             kinds=cfg.corpus == "embedded").items()}
        before = read_jsonl(Path(previous.folder) / "probe.jsonl") if previous is not None else None
        answered = []
        if cfg.eval.probe:
            from visplay_core.evaluate import answer_probe
            from visplay_core.generation import HFEngine
            from visplay_core.selfplay import probe_questions

            questions = ([{"image_id": r["image_id"], "question": r["question"]} for r in before] if before is not None
                         else probe_questions(HFEngine(model, processor), images.load(), images.ids, cfg.eval.probe,
                                              cfg.questioner.temperature, cfg.questioner.max_new_tokens, cfg.seed))
            pictures = load_images(images.folder, sorted({r["image_id"] for r in questions}))
            answered = answer_probe(model, processor, pictures, questions, cfg.method.m_curation,
                                    cfg.reasoner.temperature, seed=cfg.seed) if questions else []
        write_jsonl(out / "probe.jsonl", answered)
        probed = {**probe_statistics(answered, before), **probe_truth(answered, scenes)}
        shapes = results.get("shapes", {}).get("per_kind", {})
        return {**{f"{name}_{metric}": r[metric] for name, r in results.items()
                   for metric in ("accuracy", "pass_at_1", "majority_accuracy", "mean_entropy", "vote_wins", "greedy_wins",
                                  "n", "glance_share", "sampled_glance_share")
                   if metric in r},
                **{f"{name}_headroom": r["majority_accuracy"] - r["accuracy"] for name, r in results.items()
                   if "majority_accuracy" in r},
                **{f"shapes_accuracy.{kind}": row["accuracy"] for kind, row in shapes.items()},
                **{k2: v for k2, v in {**truth, **diversity, **probed}.items() if isinstance(v, (int, float))}}

    return _stage(ctx, k, run_id, "benchmark_eval",
                  {"reasoner": reasoner.key, **{name: s.key for name, s in stages.items()},
                   **({"previous": previous.key} if previous is not None else {})},
                  params, compute)
