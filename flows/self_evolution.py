"""The self-evolution flow: K iterations of VisPlay, each a Prefect subflow of seven cached stages.

Iteration k starts from iteration k-1's Questioner and Reasoner (iteration 1 from the base model).
Rerunning a run (same name, or any run whose stages have the same cache keys) restores every finished
stage and computes only what is missing. A line of evolution (``flows.line``) is a run that grows by a
few iterations at a time, as the nightly deployment runs it.

Every call makes new MLflow runs (run, iterations, computed stages), tagged with the Prefect flow run
they ran in, so their durations are those of that call; restored stages keep the runs that computed them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

from prefect import Task, flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from tasks.stages import (Checkpoint, ImageSet, benchmark_eval, candidate_generation, confidence_scoring,
                          question_rollout, questioner_grpo, reasoner_grpo, threshold_filtering)

from flows import report
from tasks.locks import run_lock
from tasks.mlflow_client import experiment_id, link_tags, mlflow_run_url, tracking_client, tracking_uri
from tasks.registry import better_on_shapes, line_alias, log_dataset, log_model, register_model, slug
from tasks.stage_cache import DONE, RunContext, StageResult, finished_stages, log_iteration, log_params, stage_folder
from visplay_core.config import PROBE_STATISTICS, VisPlayConfig
from visplay_core.corpus import Manifest, ingest, write_embedded_corpus
from visplay_core.io import write_json
from visplay_core.measure import base_headroom, eval_items, gain_or_loss, headroom_line, kept_iteration

STAGES = ("question_rollout", "confidence_scoring", "questioner_grpo", "candidate_generation",
          "threshold_filtering", "reasoner_grpo", "benchmark_eval")
REGISTERED_REASONER = "visplay-reasoner"  # the Model Registry's name of every finished run's final Reasoner


class IterationResult(BaseModel):
    iteration: int
    questioner: Checkpoint
    reasoner: Checkpoint
    stages: dict[str, StageResult]
    mlflow_run_id: str  # the iteration's MLflow run
    models: dict[str, str]  # role -> MLflow logged model of its updated checkpoint


def prepare_corpus(config: VisPlayConfig, home: Path) -> tuple[Path, Path | None, Manifest]:
    """Ingest the corpus once (normalized images + manifest); returns (ingested folder, truth folder,
    manifest). A corpus with nothing usable stops the run here, before any training."""
    truth = None
    source = config.corpus
    if config.corpus == "embedded":
        truth = write_embedded_corpus(home / "world" / f"n{config.corpus_size}-s{config.seed}",
                                      config.corpus_size, config.seed)
        source = str(truth / "images")
    where = source if source.startswith("datasets:") else str(Path(source).resolve())
    folder = home / "corpus" / hashlib.sha256(f"{where}|{config.max_image_pixels}".encode()).hexdigest()[:12]
    return folder, truth, ingest(source, folder, max_pixels=config.max_image_pixels)


def iteration_images(folder: Path, truth: Path | None, config: VisPlayConfig, k: int) -> ImageSet:
    """A seeded draw of ``images_per_iteration`` images for iteration k (ids are content hashes)."""
    ids = sorted(m["id"] for m in json.loads((folder / "manifest.json").read_text())["images"])
    chosen = random.Random(config.seed * 1000 + k).sample(ids, min(config.images_per_iteration, len(ids)))
    return ImageSet(folder=str(folder), ids=chosen, truth=str(truth) if truth else None)


@flow(name="iteration", flow_run_name="iteration-{k}")
def iteration(ctx: RunContext, k: int, questioner: Checkpoint, reasoner: Checkpoint, images: ImageSet,
              previous: StageResult | None = None) -> IterationResult:
    """One VisPlay iteration: Questioner update, curation, Reasoner update, evaluation (its answers to the run's
    probe beside the ``previous`` evaluation's)."""
    client = ctx.client
    run_id = client.create_run(ctx.experiment_id, run_name=f"iteration-{k}", tags={
        "visplay.run": ctx.run, "visplay.iteration": str(k), "visplay.level": "iteration", **ctx.tags,
        "mlflow.parentRunId": ctx.run_id}).info.run_id
    try:
        rollout = _named(question_rollout, k)(ctx, k, run_id, questioner, images)
        scoring = _named(confidence_scoring, k)(ctx, k, run_id, reasoner, images, rollout)
        q_update = _named(questioner_grpo, k)(ctx, k, run_id, questioner, reasoner, images, scoring)
        new_questioner = Checkpoint.of_stage(q_update)
        candidates = _named(candidate_generation, k)(ctx, k, run_id, new_questioner, reasoner, images)
        curated = _named(threshold_filtering, k)(ctx, k, run_id, candidates)
        r_update = _named(reasoner_grpo, k)(ctx, k, run_id, reasoner, images, curated)
        new_reasoner = Checkpoint.of_stage(r_update)
        evaluation = _named(benchmark_eval, k)(ctx, k, run_id, new_reasoner, images, {
            "confidence_scoring": scoring, "candidate_generation": candidates, "threshold_filtering": curated},
            previous)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    stages = dict(zip(STAGES, (rollout, scoring, q_update, candidates, curated, r_update, evaluation)))
    log_dataset(client, run_id, f"images-iteration-{k}", images.folder, images.key)
    log_dataset(client, run_id, f"curated-iteration-{k}", Path(curated.folder) / "curated.jsonl", curated.key)
    models = {role: log_model(ctx, run_id, stage, role) for role, stage in (("questioner", q_update), ("reasoner", r_update))}
    log_iteration(client, run_id, k, _numbers(_iteration_row(k, stages)),
                  [m.model_id for m in models.values() if not m.metrics])  # a new model carries its iteration's metrics
    client.set_terminated(run_id, "FINISHED")
    return IterationResult(iteration=k, questioner=new_questioner, reasoner=new_reasoner, stages=stages,
                           mlflow_run_id=run_id, models={role: m.model_id for role, m in models.items()})


def _named(stage: Task, k: int) -> Task:
    """The stage's task with its Prefect task run named ``<k>-<stage>``."""
    return stage.with_options(task_run_name=f"{k}-{stage.name}")


def _iteration_row(k: int, stages: dict[str, StageResult]) -> dict:
    ev = stages["benchmark_eval"].metrics
    return {
        "shapes_accuracy": ev.get("shapes_accuracy"),
        "pseudo_label_accuracy": ev.get("pseudo_label_accuracy"),
        "oracle_validity": ev.get("candidates.oracle_validity"),
        "curated": stages["threshold_filtering"].metrics["curated"],
        "mean_confidence": stages["candidate_generation"].metrics["mean_confidence"],
        "headroom": ev.get("shapes_headroom"),
        "glance_share": ev.get("shapes_glance_share"),
        "sampled_glance_share": ev.get("shapes_sampled_glance_share"),
        "well_formed": stages["confidence_scoring"].metrics["validity_rate"],
        "questioner_reward": stages["confidence_scoring"].metrics["mean_reward"],
        "distinct_per_image": ev.get("candidates.distinct_per_image"),
        "pairwise_bleu": ev.get("candidates.pairwise_bleu"),
        **{name.removeprefix("candidates."): v for name, v in ev.items() if name.startswith("candidates.kind_share.")},
        **_probe_row(ev),
    }


def _numbers(row: dict) -> dict:
    """The numbers of a summary row (what MLflow logs of it)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float))}


def _probe_row(metrics: dict) -> dict:
    """An evaluation's label-free probe statistics, and the probe's true greedy accuracy (measurement only)."""
    return {name: metrics.get(name) for name in (*PROBE_STATISTICS, "probe.oracle_accuracy")}


def run_name_for(config: VisPlayConfig) -> str:
    return f"{config.preset}-{config.digest()[:8]}"


def _run_name() -> str:
    """The flow run's name, from its parameters: given at its start, before its first log line."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return params.get("run_name") or run_name_for(VisPlayConfig.model_validate(params["config"]))


@flow(name="self-evolution", flow_run_name=_run_name)
def self_evolution(config: VisPlayConfig, home: str = ".visplay", run_name: str | None = None) -> dict:
    """Run (or resume) K iterations of VisPlay self-evolution; returns the run summary. One run of a name
    at a time: a second one started while the first is in flight fails at once (``RunInProgressError``)."""
    home_path = Path(home).resolve()
    run = run_name or run_name_for(config)
    with run_lock(home_path, run):
        return evolve(config, home_path, run, run, "flows/self_evolution.py:self_evolution")


def evolve(config: VisPlayConfig, home_path: Path, run: str, mlflow_name: str, entry_point: str,
           earlier: list[dict] = ()) -> dict:
    """The body of a self-evolution run, inside the caller's flow run (the one a person opens): a new MLflow
    run ``mlflow_name`` tagged with that flow run and the code, its configuration as params; every
    finished stage restored, the rest computed. ``earlier``: the summary rows of iterations 1..j this run
    already finished; it goes on from iteration j's Questioner and Reasoner (from iteration 1 when their
    checkpoints can no longer be restored)."""
    start = time.time()
    ctx = start_run(config, home_path, run, mlflow_name, entry_point)
    try:
        folder, truth = corpus_of(ctx)
        base, base_eval = evaluate_base(ctx, folder, truth)
        earlier, results = run_iterations(ctx, base, base_eval, list(earlier), folder, truth)
    except BaseException:
        ctx.client.set_terminated(ctx.run_id, "FAILED")
        raise
    summary = build_summary(run, config, base_eval, earlier, results, folder, truth, time.time() - start,
                            report_links(ctx))
    record_summary(ctx, summary)
    register_model(ctx.client, REGISTERED_REASONER, results[-1].models["reasoner"],
                   _version_tags(run, ctx.run_id, summary["iterations"][-1]),
                   aliases={line_alias(run, "best"): better_on_shapes})
    keep_reasoner(ctx.client, ctx.experiment_id, run, ctx.run_id, summary)
    ctx.client.set_terminated(ctx.run_id, "FINISHED")
    print(summary_table(summary))
    return summary


def start_run(config: VisPlayConfig, home_path: Path, run: str, mlflow_name: str, entry_point: str) -> RunContext:
    """The call's MLflow run (its configuration as params, tagged with the flow run and the code), linked from the
    flow run when MLflow is a server; the context every stage of the call gets."""
    uri = tracking_uri(home_path)
    client = tracking_client(uri)
    exp = experiment_id(client, home_path)
    tags = link_tags(entry_point)
    run_id = client.create_run(exp, run_name=mlflow_name, tags={
        "visplay.run": run, "visplay.level": "run", "visplay.preset": config.preset,
        "visplay.home": str(home_path), **tags}).info.run_id
    log_params(client, run_id, config.model_dump(mode="json"))
    ctx = RunContext(home=str(home_path), run=run, config=config, tracking_uri=uri, experiment_id=exp, run_id=run_id,
                     tags=tags, finished=finished_stages(client, exp, run))
    url = mlflow_run_url(uri, exp, run_id)
    if url:
        create_link_artifact(url, link_text=f"MLflow run {mlflow_name}", key=f"{slug(run)}-mlflow",
                             description=f"the MLflow run of {mlflow_name}")
    get_run_logger().info("run %s: home %s, MLflow run %s", run, home_path, url or f"{run_id} in {uri}")
    return ctx


def corpus_of(ctx: RunContext) -> tuple[Path, Path | None]:
    """The run's ingested corpus and its truth folder (``prepare_corpus``); what it used and skipped is logged."""
    folder, truth, manifest = prepare_corpus(ctx.config, Path(ctx.home))
    corpus = manifest.summary()
    log_iteration(ctx.client, ctx.run_id, 0, {"corpus.usable": corpus["usable"], "corpus.skipped": corpus["skipped"],
                                              **{f"corpus.skipped.{r}": n for r, n in corpus["skipped_by_reason"].items()}})
    return folder, truth


def evaluate_base(ctx: RunContext, folder: Path, truth: Path | None) -> tuple[Checkpoint, StageResult]:
    """The base model and its evaluation (iteration 0), with its headroom logged and said in one line (a warning
    when it is within noise)."""
    base = Checkpoint.of_folder(ctx.config.base_model_path)
    base_eval = _named(benchmark_eval, 0)(ctx, 0, ctx.run_id, base, iteration_images(folder, truth, ctx.config, 0), {})
    headroom = base_headroom(base_eval.metrics)
    if headroom:
        log_iteration(ctx.client, ctx.run_id, 0, {"base.headroom": headroom["headroom"],
                                                  **({"base.headroom_noise": headroom["noise"]} if "noise" in headroom else {})})
        logger = get_run_logger()
        (logger.warning if headroom.get("within_noise") else logger.info)(headroom_line(headroom))
    return base, base_eval


def run_iterations(ctx: RunContext, base: Checkpoint, base_eval: StageResult, earlier: list[dict], folder: Path,
                   truth: Path | None) -> tuple[list[dict], list[IterationResult]]:
    """The iterations after ``earlier`` (from its last iteration's models when they can be restored, else all of
    them from the base), each reported once computed; returns the rows kept of ``earlier`` and the results."""
    models = _checkpoints(ctx, earlier[-1]) if earlier else None
    earlier = earlier if models else []
    questioner, reasoner = models or (base, base)
    previous = _restored(ctx, earlier[-1], "benchmark_eval") if earlier else base_eval
    results = []
    for k in range(len(earlier) + 1, ctx.config.iterations + 1):
        result = iteration(ctx, k, questioner, reasoner, iteration_images(folder, truth, ctx.config, k), previous)
        questioner, reasoner, previous = result.questioner, result.reasoner, result.stages["benchmark_eval"]
        results.append(result)
        if k == ctx.config.iterations or not all(s.cached for s in result.stages.values()):
            publish_report(ctx, base_eval, earlier, results, folder, truth)  # not again for iterations only restored
    return earlier, results


def record_summary(ctx: RunContext, summary: dict) -> None:
    """The summary's numbers as the run's metrics (step = iteration), the summary itself in HOME/runs/<run>/ and
    HOME/summary.json, and as an artifact of the run."""
    client, run_id, home = ctx.client, ctx.run_id, Path(ctx.home)
    log_iteration(client, run_id, 0, summary["base"]["probe"])
    for row in summary["iterations"]:
        log_iteration(client, run_id, row["iteration"], _numbers(row))
    log_iteration(client, run_id, ctx.config.iterations, {"kept_iteration": summary["kept_iteration"]})
    write_json(home / "runs" / ctx.run / "summary.json", summary)
    write_json(home / "summary.json", summary)
    client.log_artifact(run_id, str(home / "runs" / ctx.run / "summary.json"))


def _checkpoints(ctx: RunContext, row: dict) -> tuple[Checkpoint, Checkpoint] | None:
    """The updated Questioner and Reasoner of a finished iteration's summary row, restored from their stages
    (here, or from MLflow); None when one of them cannot be."""
    found = [_restored(ctx, row, stage) for stage in ("questioner_grpo", "reasoner_grpo")]
    if None in found:
        return None
    return tuple(Checkpoint.of_stage(s) for s in found)


def _restored(ctx: RunContext, row: dict, stage: str) -> StageResult | None:
    """A stage of a finished iteration's summary row, restored (here, or from MLflow); None when it cannot be."""
    key = row["stages"][stage]["key"]
    folder, finished = stage_folder(ctx, stage, key)
    if finished is None or not (folder / DONE).exists():
        return None
    return StageResult(stage=stage, iteration=row["iteration"], key=key, folder=str(folder), run_id=finished,
                       metrics=json.loads((folder / "metrics.json").read_text()), cached=True, seconds=0.0)


def keep_reasoner(client, experiment: str, run: str, run_id: str, summary: dict) -> None:
    """The Reasoner of the run's kept iteration (``measure.kept_iteration``) as a version of the registered
    Reasoner, under the alias ``<run>-kept`` (a line's name for a line): chosen without a benchmark, the model a
    run on a user's own images gives. Its logged model is found by its stage's cache key; a store that does not
    hold it (an iteration run against another tracking store) gets no alias, and a warning."""
    row = next(r for r in summary["iterations"] if r["iteration"] == summary["kept_iteration"])
    key = row["stages"]["reasoner_grpo"]["key"]
    found = client.search_logged_models([experiment], f"tags.`visplay.cache_key` = '{key}'", max_results=1)
    if not found:
        get_run_logger().warning("run %s keeps iteration %d, whose Reasoner this tracking store does not hold: no %s "
                                 "alias", run, row["iteration"], line_alias(run, "kept"))
        return
    register_model(client, REGISTERED_REASONER, found[0].model_id, _version_tags(run, run_id, row),
                   aliases={line_alias(run, "kept"): lambda new, held: True})


def _version_tags(run: str, run_id: str, row: dict) -> dict[str, str]:
    """The tags of a registered version of an iteration's Reasoner (``row``: its summary row)."""
    accuracy = row["shapes_accuracy"]
    return {"visplay.run": run, "visplay.run_id": run_id, "visplay.iteration": str(row["iteration"]),
            **({"shapes_accuracy": f"{accuracy:.3f}"} if accuracy is not None else {})}


def publish_report(ctx: RunContext, base_eval: StageResult, earlier: list[dict], results: list[IterationResult],
                   folder: Path, truth: Path | None) -> None:
    """The last iteration's report: files in HOME/runs/<run>/report/iteration-<k>/, logged under ``report/``
    on the iteration's MLflow run, and as Prefect artifacts (markdown summary, table of sample questions)."""
    last = results[-1]
    rows = [*({k: v for k, v in row.items() if k != "stages"} for row in earlier),
            *({"iteration": r.iteration, **_iteration_row(r.iteration, r.stages)} for r in results)]
    data = report.load_iteration(last.iteration, rows[-1],
                                 {s: Path(last.stages[s].folder) / f for s, f in report.FILES.items()},
                                 str(folder), str(truth) if truth else None)
    out = Path(ctx.home) / "runs" / ctx.run / "report" / f"iteration-{last.iteration}"
    files = report.iteration_report(ctx.run, data, (ctx.config.method.tau_low, ctx.config.method.tau_high),
                                    base_eval.metrics.get("shapes_accuracy"), rows, report_links(ctx), previous=out)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out / name).write_bytes(content)
    ctx.client.log_artifacts(last.mlflow_run_id, str(out), "report")
    key = f"{slug(ctx.run)}-iteration-{last.iteration}"
    create_markdown_artifact(files["summary.md"].decode(), key=key, description=f"run {ctx.run}, iteration {last.iteration}")
    create_table_artifact(report.sample_table(data), key=f"{key}-questions",
                          description=f"sample questions of run {ctx.run}, iteration {last.iteration}")


def report_links(ctx: RunContext) -> dict[str, str]:
    """The call's Prefect flow run and MLflow run, as the reports show them: their pages where a server shows
    them, else their ids."""
    return {"Prefect flow run": ctx.tags.get("prefect.flow_run_url") or ctx.tags["prefect.flow_run_id"],
            "MLflow run": mlflow_run_url(ctx.tracking_uri, ctx.experiment_id, ctx.run_id) or ctx.run_id}


def build_summary(run: str, config: VisPlayConfig, base_eval: StageResult, earlier: list[dict],
                  results: list[IterationResult], folder: Path, truth: Path | None, seconds: float,
                  links: dict[str, str]) -> dict:
    rows = [*earlier, *(
        {"iteration": r.iteration, **_iteration_row(r.iteration, r.stages),
         "stages": {name: {"seconds": round(s.seconds, 3), "compute_seconds": round(s.compute_seconds, 3),
                           "cached": s.cached, "key": s.key}
                    for name, s in r.stages.items()}}
        for r in results)]
    return {
        "run": run,
        "preset": config.preset,
        "links": links,
        "config": config.model_dump(mode="json"),
        "corpus": {"folder": str(folder), "truth": str(truth) if truth else None},
        "base": {"shapes_accuracy": base_eval.metrics.get("shapes_accuracy"),
                 "headroom": base_headroom(base_eval.metrics),
                 "glance_share": base_eval.metrics.get("shapes_glance_share"),
                 "sampled_glance_share": base_eval.metrics.get("shapes_sampled_glance_share"),
                 "probe": {k: v for k, v in _probe_row(base_eval.metrics).items() if v is not None},
                 "stage": {"seconds": round(base_eval.seconds, 3), "compute_seconds": round(base_eval.compute_seconds, 3),
                           "cached": base_eval.cached}},
        "iterations": rows,
        "kept_iteration": kept_iteration(rows, config.selection),
        "selection": config.selection.model_dump(),
        "seconds": round(seconds, 3),
    }


def summary_table(summary: dict) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    head = ["iter", "shapes_acc", "pseudo_label_acc", "curated", "mean_conf", "seconds", "cached stages"]
    rows = [["base", fmt(summary["base"]["shapes_accuracy"]), "-", "-", "-", "-", "-"]]
    for it in summary["iterations"]:
        cached = [n for n, s in it["stages"].items() if s["cached"]]
        rows.append([str(it["iteration"]), fmt(it["shapes_accuracy"]), fmt(it["pseudo_label_accuracy"]),
                     fmt(it["curated"]), fmt(it["mean_confidence"]),
                     f"{sum(s['seconds'] for s in it['stages'].values()):.1f}",
                     f"{len(cached)}/{len(it['stages'])}"])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head] + rows]
    if summary["base"].get("headroom"):
        lines.append(headroom_line(summary["base"]["headroom"]))
    base = summary["base"]["shapes_accuracy"]
    last = summary["iterations"][-1]["shapes_accuracy"] if summary["iterations"] else None
    if base is not None and last is not None:
        n = eval_items(summary)
        word, margin = gain_or_loss(last, base, n)
        lines.append(f"iteration {summary['iterations'][-1]['iteration']} against the base: {word} ({last - base:+.3f}; "
                     f"noise ±{margin:.3f}, two binomial standard errors at {n} items, one seed)")
    if "kept_iteration" in summary:
        lines.append(kept_line(summary))
    return "\n".join([f"run {summary['run']} ({summary['preset']}), {summary['seconds']:.1f} s"] + lines)


def kept_line(summary: dict) -> str:
    """One line on the iteration the run keeps, and why."""
    kept, selection = summary["kept_iteration"], summary["selection"]
    row = next(r for r in summary["iterations"] if r["iteration"] == kept)
    value = None if selection["statistic"] == "last" else row.get(selection["statistic"])
    why = ("the last iteration" if value is None else
           f"{selection['best']} {selection['statistic']} {value:.3f}"
           + (f", the earliest within {selection['tolerance']} of the best" if selection["tolerance"] else ""))
    return f"kept iteration {kept} ({why}): its Reasoner is the run's output, chosen without ground truth"
