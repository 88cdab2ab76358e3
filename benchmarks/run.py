"""Speed and cost benchmarks: prints markdown tables; ``--write BENCHMARKS.md`` saves them with the machine.

    python benchmarks/run.py [--only throughput,breakdown,resume,scaling] [--write BENCHMARKS.md]

- throughput: confidence scoring (m answers per question) batched with one shared prefill per question
  versus a per-sample loop, same model and inputs (target: >= 5x generated tokens/s).
- breakdown: the demo preset end to end: model compute vs MLflow tracking vs Prefect and the rest
  (target: orchestration and tracking under 5%).
- resume: a rerun of the finished demo run (target: under 15 s, 0 stages recomputed).
- scaling: seconds per iteration as images per iteration and G grow.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from visplay_core import bench, prompts  # noqa: E402
from visplay_core.config import BASE_CHECKPOINT, load_config  # noqa: E402
from visplay_core.generation import generate  # noqa: E402
from visplay_core.model import load_model, load_processor  # noqa: E402


def table(head: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in cells])


def throughput(m: int = 10, questions: int = 16, max_new_tokens: int = 48) -> str:
    model, processor = load_model(BASE_CHECKPOINT), load_processor(BASE_CHECKPOINT)
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
    b, l_ = tokens(batched) / batched_s, tokens(looped) / looped_s
    rows = [["batched, shared prefill", f"{questions}×{m}", f"{batched_s:.1f}", f"{b:.0f}", f"{b / l_:.1f}×"],
            ["per-sample loop", f"{questions}×{m}", f"{looped_s:.1f}", f"{l_:.0f}", "1.0×"]]
    return "### Confidence scoring throughput (tiny base)\n\n" + table(
        ["method", "questions × m", "seconds", "generated tokens/s", "speed-up"], rows)


def _run(config, home: Path) -> tuple[dict, float]:
    from flows.self_evolution import self_evolution

    start = time.time()
    summary = self_evolution(config=config, home=str(home))
    return summary, time.time() - start


def breakdown_and_resume(home: Path) -> str:
    config = load_config("demo")
    summary, wall = _run(config, home)
    stages = [s for it in summary["iterations"] for s in it["stages"].values()] + [summary["base"]["stage"]]
    compute = sum(s["compute_seconds"] for s in stages)
    stage_total = sum(s["seconds"] for s in stages)
    tracking = stage_total - compute
    rest = wall - stage_total
    rows = [["model compute and I/O", f"{compute:.1f}", f"{100 * compute / wall:.1f}%"],
            ["MLflow tracking (params, metrics, artifacts)", f"{tracking:.1f}", f"{100 * tracking / wall:.1f}%"],
            ["Prefect, corpus and the rest", f"{rest:.1f}", f"{100 * rest / wall:.1f}%"],
            ["total (demo preset, 3 iterations)", f"{wall:.1f}", "100%"]]
    again, rerun = _run(config, home)
    recomputed = sum(not s["cached"] for it in again["iterations"] for s in it["stages"].values())
    out = "### Demo preset: where the time goes\n\n" + table(["part", "seconds", "share"], rows)
    out += ("\n\n### Resume: rerun of the finished demo run\n\n"
            + table(["stages", "recomputed", "seconds"], [[len(stages) - 1, recomputed, f"{rerun:.1f}"]]))
    return out


def scaling(home: Path) -> str:
    rows = []
    for images, g in ((4, 4), (8, 4), (16, 4), (8, 8)):
        config = load_config("smoke", ["iterations=1", f"images_per_iteration={images}", f"corpus_size={max(16, images)}",
                                       f"group_size={g}", f"questioner.num_generations={g}",
                                       f"candidates_per_image={g}"])
        summary, wall = _run(config, home / f"i{images}-g{g}")
        it = summary["iterations"][0]
        rows.append([images, g, f"{sum(s['seconds'] for s in it['stages'].values()):.1f}", f"{wall:.1f}"])
    return "### Scaling: one iteration of the smoke preset\n\n" + table(
        ["images / iteration", "G", "iteration seconds", "run seconds (with base eval)"], rows)


def machine() -> str:
    return (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({'CUDA' if torch.cuda.is_available() else 'CPU'}), "
            f"{time.strftime('%Y-%m-%d')}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="throughput,breakdown,scaling")
    parser.add_argument("--write", help="also write the tables to this markdown file")
    args = parser.parse_args()
    wanted = args.only.split(",")
    sections = [machine()]
    with tempfile.TemporaryDirectory(prefix="visplay-bench-") as tmp:
        if "throughput" in wanted:
            sections.append(throughput())
            print(sections[-1], flush=True)
        if "breakdown" in wanted:
            sections.append(breakdown_and_resume(Path(tmp) / "demo"))
            print(sections[-1], flush=True)
        if "scaling" in wanted:
            sections.append(scaling(Path(tmp) / "scaling"))
            print(sections[-1], flush=True)
    if args.write:
        Path(args.write).write_text("# Benchmarks\n\nRegenerate with `make benchmarks`.\n\n" + "\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
