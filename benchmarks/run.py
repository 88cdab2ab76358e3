"""Speed and cost benchmarks: prints markdown tables; ``--write BENCHMARKS.md`` saves them with the machine.

    python benchmarks/run.py [--only throughput,breakdown,scaling] [--write BENCHMARKS.md]
                             [--preset demo] [--home DIR]

- throughput: confidence scoring (m answers per question) batched with one shared prefill per question
  versus a per-sample loop, same model and inputs (target: >= 5x generated tokens/s).
- breakdown: the demo preset end to end: model compute vs reports vs MLflow tracking vs Prefect
  (target: Prefect and MLflow together under 5%); then its resume: a rerun of the finished run
  (target: under 15 s, 0 stages recomputed), in this process and as a whole `visplay run` process
  the way a user waits for it (imports and Prefect's temporary server included); the smoke preset's
  whole-process rerun alternately with a bare import of Prefect and MLflow, 5 times (machines differ:
  target <= 2.5x that import, the median of the pairs' ratios).
- startup: only the smoke preset's run and its reruns (the last tables of breakdown, cheaply).
- scaling: seconds per iteration as images per iteration and G grow.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# Only what generation needs is imported here (benchmarks/gpu_check.py reuses this file on machines with
# torch and transformers alone); the flow and the configuration are imported where used.
from visplay_core import bench, prompts
from visplay_core.generation import generate
from visplay_core.model import load_model, load_processor


def table(head: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in cells])


def scoring_speed(model, processor, m: int = 10, questions: int = 16, max_new_tokens: int = 48) -> dict[str, float]:
    """Confidence scoring (m sampled answers to each of ``questions`` ShapesBench questions), batched with one
    shared prefill per question and as a per-sample loop: seconds and generated tokens/s of each."""
    items = list(bench.shapes_bench())[:questions]
    images = [i.image() for i in items]
    chats = [prompts.reasoner_messages(i.question) for i in items]

    def tokens(outputs):
        return sum(len(processor.tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for o in outputs for c in o)

    start = time.time()
    batched = generate(model, processor, images, chats, n=m, temperature=1.0, max_new_tokens=max_new_tokens,
                       batch_size=160, seed=0)
    batched_s = time.time() - start
    start = time.time()
    looped = [[generate(model, processor, [img], [chat], n=1, temperature=1.0, max_new_tokens=max_new_tokens,
                        batch_size=1, seed=j)[0][0] for j in range(m)] for img, chat in zip(images, chats)]
    looped_s = time.time() - start
    return {"batched_s": batched_s, "looped_s": looped_s, "batched": tokens(batched) / batched_s,
            "looped": tokens(looped) / looped_s}


def throughput(m: int = 10, questions: int = 16, max_new_tokens: int = 48) -> str:
    from visplay_core.config import BASE_CHECKPOINT

    speed = scoring_speed(load_model(BASE_CHECKPOINT), load_processor(BASE_CHECKPOINT), m, questions, max_new_tokens)
    batched_s, looped_s, b, l_ = speed["batched_s"], speed["looped_s"], speed["batched"], speed["looped"]
    rows = [["batched, shared prefill", f"{questions}×{m}", f"{batched_s:.1f}", f"{b:.0f}", f"{b / l_:.1f}×"],
            ["per-sample loop", f"{questions}×{m}", f"{looped_s:.1f}", f"{l_:.0f}", "1.0×"]]
    return "### Confidence scoring throughput (tiny base)\n\n" + table(
        ["method", "questions × m", "seconds", "generated tokens/s", "speed-up"], rows)


def _run(config, home: Path) -> tuple[dict, float]:
    from flows.self_evolution import self_evolution

    start = time.time()
    summary = self_evolution(config=config, home=str(home))
    return summary, time.time() - start


ROOT = Path(__file__).resolve().parent.parent
VISPLAY = [sys.executable, "-m", "flows.cli"]
BARE_IMPORT = "import prefect, mlflow, prefect.flows, mlflow.tracking"
RATIO_TARGET = 2.5  # a whole-process rerun of the finished smoke run, in bare imports (BARE_IMPORT)
RESUME_HEAD = ["run", "stages", "recomputed", "in-process seconds", "whole process seconds",
               "whole process CPU seconds"]


def whole_process(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of the command ``argv`` in a fresh process (children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def rerun_row(preset: str, home: Path) -> list:
    """A rerun of the finished ``preset`` run in ``home``: in this process, then as `visplay run` in a fresh one."""
    from visplay_core.config import load_config

    again, in_process = _run(load_config(preset), home)
    stages = [s for it in again["iterations"] for s in it["stages"].values()] + [again["base"]["stage"]]
    wall, cpu = whole_process([*VISPLAY, "run", "--config", preset, "--home", str(home)])
    return [preset, len(stages), sum(not s["cached"] for s in stages), f"{in_process:.1f}", f"{wall:.1f}", f"{cpu:.1f}"]


def paired_ratio(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """The medians of ``a`` and of ``b`` over (a, b) pairs measured one after the other, and the median of their
    ratios a / b: each ratio compares two runs under the same load, which drifts from pair to pair."""
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(a / b for a, b in pairs))


def rerun_against_imports(home: Path, n: int = 5) -> str:
    """The rerun of the finished smoke run in ``home`` as a whole `visplay run` process and a bare import of
    Prefect and MLflow, alternately ``n`` times: its seconds in imports (target ``RATIO_TARGET``)."""
    rerun = [*VISPLAY, "run", "--config", "smoke", "--home", str(home)]
    runs = [(whole_process(rerun), whole_process([sys.executable, "-c", BARE_IMPORT])) for _ in range(n)]
    walls = paired_ratio([(r[0], i[0]) for r, i in runs])
    cpus = paired_ratio([(r[1], i[1]) for r, i in runs])
    verdict = "pass" if walls[2] <= RATIO_TARGET else "fail"
    return table([f"whole process, alternately ×{n}", "median seconds", "median CPU seconds (children included)"], [
        ["rerun: `visplay run --config smoke --home H`, every stage restored", f"{walls[0]:.1f}", f"{cpus[0]:.1f}"],
        [f"bare import: `python -c '{BARE_IMPORT}'`", f"{walls[1]:.1f}", f"{cpus[1]:.1f}"],
        [f"**rerun in imports** (median of the pairs' ratios; target ≤ {RATIO_TARGET}×)",
         f"**{walls[2]:.2f}× ({verdict})**", f"{cpus[2]:.2f}×"]])


def startup(home: Path) -> str:
    from visplay_core.config import load_config

    _run(load_config("smoke"), home)
    return ("### Start-up: rerun of the finished smoke run\n\n"
            + table(RESUME_HEAD, [rerun_row("smoke", home)]) + "\n\n" + rerun_against_imports(home))


def prefect_start_up() -> float:
    """Seconds until Prefect runs its first flow: in ephemeral mode that starts a local server, once per
    process (a sweep's runs share it); with `visplay up` or PREFECT_API_URL nothing starts."""
    from prefect import flow

    start = time.time()
    flow(name="warm-up")(lambda: None)()
    return time.time() - start


@contextmanager
def timed(module, names: tuple[str, ...]):
    """Count the seconds spent in ``module.<name>`` for each name while the block runs."""
    spent = {"seconds": 0.0}
    originals = {n: getattr(module, n) for n in names}

    def wrap(fn):
        def timed_call(*args, **kwargs):
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["seconds"] += time.time() - start
        return timed_call

    for n, fn in originals.items():
        setattr(module, n, wrap(fn))
    try:
        yield spent
    finally:
        for n, fn in originals.items():
            setattr(module, n, fn)


def breakdown_and_resume(home: Path, preset: str = "demo") -> str:
    import flows.report
    import flows.self_evolution
    from visplay_core.config import load_config

    config = load_config(preset)
    start_up = prefect_start_up()
    with (timed(flows.report, ("load_iteration", "iteration_report")) as reports,
          timed(flows.self_evolution, ("prepare_corpus",)) as corpus):
        summary, wall = _run(config, home)
    stages = [s for it in summary["iterations"] for s in it["stages"].values()] + [summary["base"]["stage"]]
    compute = sum(s["compute_seconds"] for s in stages)
    stage_total = sum(s["seconds"] for s in stages)
    tracking = stage_total - compute
    io = reports["seconds"] + corpus["seconds"]
    prefect = wall - stage_total - io
    rows = [["model compute and stage I/O", f"{compute:.1f}", f"{100 * compute / wall:.1f}%"],
            ["reports (reading stage files, plots, pages) and the corpus", f"{io:.1f}", f"{100 * io / wall:.1f}%"],
            ["MLflow tracking (params, metrics, artifacts)", f"{tracking:.1f}", f"{100 * tracking / wall:.1f}%"],
            ["Prefect flow and task runs", f"{prefect:.1f}", f"{100 * prefect / wall:.1f}%"],
            ["**Prefect and MLflow** (target < 5%)", f"{tracking + prefect:.1f}",
             f"**{100 * (tracking + prefect) / wall:.1f}%**"],
            [f"total ({preset} preset, {config.iterations} iterations)", f"{wall:.1f}", "100%"],
            ["Prefect start-up, once per process (ephemeral server; none with `visplay up`)", f"{start_up:.1f}",
             f"+{100 * start_up / wall:.1f}%"]]
    smoke_home = home.parent / f"{home.name}-smoke"
    smoke_wall = _run(load_config("smoke"), smoke_home)[1]
    out = "### Presets end to end (3 iterations, fresh home)\n\n" + table(
        ["preset", "seconds", "target"], [["smoke", f"{smoke_wall:.1f}", "< 120"], [preset, f"{wall:.1f}",
                                                                                   "< 600" if preset == "demo" else "-"]])
    out += f"\n\n### {preset.capitalize()} preset: where the time goes\n\n" + table(["part", "seconds", "share"], rows)
    out += ("\n\n### Resume: rerun of a finished run (target < 15 s, 0 recomputed)\n\n"
            + table(RESUME_HEAD, [rerun_row(preset, home), rerun_row("smoke", smoke_home)])
            + "\n\n" + rerun_against_imports(smoke_home))
    return out


SCALING_NOTE = ("\n\nScoring and candidate generation grow with images × G; a GRPO stage runs a fixed number of "
                "steps (steps × prompts per step), so it grows with G (the Questioner's group) but not with images.")


def scaling(home: Path) -> str:
    """One iteration of the demo preset as images per iteration grow (G = 8), then as G grows (32 images);
    G is the questions per image everywhere: rollout, the Questioner's GRPO group, candidates."""
    from visplay_core.config import load_config

    rows = []
    for images, g in ((16, 8), (32, 8), (64, 8), (32, 4), (32, 16)):
        config = load_config("demo", ["iterations=1", f"images_per_iteration={images}", f"group_size={g}",
                                      f"questioner.num_generations={g}", f"candidates_per_image={g}"])
        summary = _run(config, home / f"i{images}-g{g}")[0]
        stages = summary["iterations"][0]["stages"]
        rows.append([images, g, *(f"{stages[s]['seconds']:.1f}" for s in ("confidence_scoring", "questioner_grpo",
                                                                           "candidate_generation", "reasoner_grpo")),
                     f"{sum(s['seconds'] for s in stages.values()):.1f}"])
    return "### Scaling: one iteration of the demo preset\n\n" + table(
        ["images / iteration", "G", "confidence scoring", "questioner GRPO", "candidates", "reasoner GRPO",
         "iteration seconds"], rows) + SCALING_NOTE


def machine() -> str:
    return (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({'CUDA' if torch.cuda.is_available() else 'CPU'}), "
            f"{time.strftime('%Y-%m-%d')}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="throughput,breakdown,scaling")
    parser.add_argument("--write", help="also write the tables to this markdown file")
    parser.add_argument("--preset", default="demo", help="preset of the breakdown and resume sections")
    parser.add_argument("--home", help="keep the demo run here (a fresh home; default: a temporary folder), "
                                       "e.g. to reuse its stages in `visplay experiment --home` afterwards")
    args = parser.parse_args()
    wanted = args.only.split(",")
    sections = [machine()]
    with tempfile.TemporaryDirectory(prefix="visplay-bench-") as tmp:
        if "throughput" in wanted:
            sections.append(throughput())
            print(sections[-1], flush=True)
        if "breakdown" in wanted:
            sections.append(breakdown_and_resume(Path(args.home or Path(tmp) / "run"), args.preset))
            print(sections[-1], flush=True)
        if "startup" in wanted:
            sections.append(startup(Path(tmp) / "startup"))
            print(sections[-1], flush=True)
        if "scaling" in wanted:
            sections.append(scaling(Path(tmp) / "scaling"))
            print(sections[-1], flush=True)
    if args.write:
        Path(args.write).write_text("# Benchmarks\n\nRegenerate with `make benchmarks`.\n\n" + "\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
