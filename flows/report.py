"""Reports a person looks at: per iteration a markdown summary, a table of sample generated questions with
their image thumbnails, and PNG plots; for a whole run one self-contained HTML page.

Building is pure (data in; markdown, HTML and PNG bytes out). ``load_iteration`` and ``load_run`` read
the data from a run's stage files (from MLflow when a stage folder is gone).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from tasks.mlflow_client import EXPERIMENT, tracking_client, tracking_uri
from tasks.stage_cache import finished_stage
from visplay_core import world
from visplay_core.corpus import Manifest, scenes_by_id
from visplay_core.io import read_jsonl
from visplay_core.rewards import in_window

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SAMPLES = 12  # sample questions shown per iteration
PLOTS_STAMP = "plots.json"  # beside a report's plots: the digest of the data they were drawn from
THUMBNAIL = 64  # pixels
FILES = {"questioner_grpo": "metrics.json", "candidate_generation": "candidates.jsonl",
         "threshold_filtering": "curated.jsonl", "reasoner_grpo": "metrics.json"}  # what a report reads per stage
METRICS = ("shapes_accuracy", "pseudo_label_accuracy", "curated", "mean_confidence", "well_formed", "oracle_validity",
           "questioner_reward", "glance_share", "distinct_per_image", "pairwise_bleu", "question_kinds",
           "probe.vote_disagreement", "probe.shuffle_stability", "probe.agreement_previous", "probe.confidence")


@dataclass
class IterationData:
    iteration: int
    metrics: dict  # the run summary's row of the iteration
    samples: list[dict]  # image (PNG bytes or None), question, votes, confidence, pseudo_label, curated[, oracle]
    confidences: list[float]  # every answered candidate's confidence
    grpo: dict[str, list[dict]]  # role -> GRPO history rows ({"step", "reward", "rewards/<func>/mean", ...})


@dataclass
class RunData:
    run: str
    preset: str
    tau: tuple[float, float]
    base_accuracy: float | None
    iterations: list[IterationData]
    links: dict[str, str]  # the Prefect flow run and MLflow run of the call that wrote the summary: URL or id


# ---- plots -------------------------------------------------------------------------------------------------

def figure(width: float, height: float) -> Figure:
    """A matplotlib figure; matplotlib is imported here, so a rerun that keeps its plots never loads it."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def reward_plot(grpo: dict[str, list[dict]]) -> bytes:
    """One panel per role: the mean GRPO reward and each reward function's mean, per step."""
    fig = figure(9, 3)
    for ax, (role, rows) in zip(fig.subplots(1, len(grpo), squeeze=False)[0], grpo.items()):
        keys = ["reward"] + sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")})
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:  # the total drawn wide and pale: a single reward function's mean lies on it
                ax.plot(*zip(*points), marker="o", label=key, **({"lw": 5, "alpha": 0.35} if key == "reward" else {}))
        if any("reward" in r for r in rows):
            ax.legend(fontsize=7)
        else:
            _empty(ax, "no GRPO steps")
        ax.set(title=f"{role} GRPO reward", xlabel="step", ylabel="reward")
        _integer_ticks(ax.xaxis)
    return png(fig)


def window_bars(confidences: list[float], tau: tuple[float, float]) -> tuple[Counter, Counter]:
    """The histogram's bars, candidates per confidence value (to 3 decimals), in the curation window and
    outside it, by curation's own rule (``in_window`` on the exact value): a value just outside an edge counts
    outside even where its bar stands on the edge."""
    inside = Counter(round(c, 3) for c in confidences if in_window(c, tau))
    outside = Counter(round(c, 3) for c in confidences if not in_window(c, tau))
    return inside, outside


def confidence_plot(confidences: list[float], tau: tuple[float, float], curated: int) -> bytes:
    """Candidates per confidence value (a share of m votes), those in the curation window [τ_low, τ_high] apart
    from the others, beside the number curated (fewer where curation also left a question out: asked again of
    the same image, unanswerable, or over its label's share)."""
    fig = figure(5, 3)
    ax = fig.subplots()
    ax.axvspan(*tau, color="tab:green", alpha=0.15, label=f"τ window [{tau[0]}, {tau[1]}]")
    inside, outside = window_bars(confidences, tau)
    ax.bar(list(outside), list(outside.values()), width=0.03, color="tab:gray", label=f"outside: {outside.total()}")
    ax.bar(list(inside), list(inside.values()), bottom=[outside[x] for x in inside], width=0.03, color="tab:blue",
           label=f"in the window: {inside.total()} ({curated} curated)")
    if not confidences:
        _empty(ax, "no answered candidate")
    ax.set(title=f"candidate confidence (n = {len(confidences)})", xlabel="confidence c", ylabel="candidates",
           xlim=(-0.02, 1.02), ylim=(0, None))
    _integer_ticks(ax.yaxis)
    ax.legend(fontsize=7)
    return png(fig)


def line_plot(points: list[tuple[int, float]], title: str) -> bytes:
    fig = figure(5, 3)
    ax = fig.subplots()
    if points:
        ax.plot(*zip(*points), marker="o")
        ax.set_xticks([x for x, _ in points])
    else:
        _empty(ax, "not measured")
    ax.set(title=title, xlabel="iteration (0 = base model)", ylabel="accuracy", ylim=(0, 1))
    return png(fig)


def iteration_plots(it: IterationData, tau: tuple[float, float]) -> dict[str, bytes]:
    return {"grpo_rewards.png": reward_plot(it.grpo),
            "confidence_histogram.png": confidence_plot(it.confidences, tau, it.metrics["curated"])}


def plots_digest(it: IterationData, tau: tuple[float, float], base_accuracy: float | None, rows: list[dict]) -> str:
    """A digest of all the data the plots of ``iteration_plots`` and ``run_plots`` are drawn from."""
    data = {"grpo": it.grpo, "confidences": it.confidences, "curated": it.metrics["curated"], "tau": list(tau),
            "base_accuracy": base_accuracy,
            "rows": [[r["iteration"], r["shapes_accuracy"], r["pseudo_label_accuracy"]] for r in rows]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def drawn_before(folder: Path | None, digest: str) -> dict[str, bytes] | None:
    """The plots of the report in ``folder`` when they were drawn from data of this digest (its PLOTS_STAMP
    says), else None."""
    if folder is None:
        return None
    try:
        stamp = json.loads((folder / PLOTS_STAMP).read_text())
        return {name: (folder / name).read_bytes() for name in stamp["plots"]} if stamp["digest"] == digest else None
    except (OSError, ValueError, KeyError):
        return None


def run_plots(base_accuracy: float | None, rows: list[dict]) -> dict[str, bytes]:
    """Accuracy and pseudo-label accuracy across iterations; ``rows`` are the summary's iteration rows."""
    accuracy = [(0, base_accuracy)] + [(r["iteration"], r["shapes_accuracy"]) for r in rows]
    labels = [(r["iteration"], r["pseudo_label_accuracy"]) for r in rows]
    return {"accuracy.png": line_plot([p for p in accuracy if p[1] is not None], "ShapesBench accuracy"),
            "pseudo_label_accuracy.png": line_plot([p for p in labels if p[1] is not None],
                                                   "true accuracy of the curated pseudo-labels")}


# ---- tables, markdown, HTML --------------------------------------------------------------------------------

def _fmt(value) -> str:
    if isinstance(value, dict):  # shares by name (the mix of question kinds): those above 0
        return " · ".join(f"{k} {v:.2f}" for k, v in value.items() if v) or "–"
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def sample_table(it: IterationData) -> list[dict]:
    """The sample questions as rows of text (the Prefect table artifact, questions.json)."""
    rows = []
    for s in it.samples:
        votes = " · ".join(f"{a}: {n}" for a, n in sorted(s["votes"].items(), key=lambda kv: -kv[1]))
        row = {"image id": s["image_id"], "question": s["question"] or "(not a question)", "votes": votes or "–",
               "confidence": _fmt(s["confidence"]), "pseudo-label": _fmt(s["pseudo_label"]),
               "curated": "yes" if s["curated"] else "no"}
        if "oracle" in s:
            row["oracle answer"] = s["oracle"] or "(invalid question)"
        rows.append(row)
    return rows


def _value(row: dict, metric: str):
    """A summary row's metric; "question_kinds" gathers its ``kind_share.<kind>`` shares."""
    if metric == "question_kinds":
        return {k.removeprefix("kind_share."): v for k, v in row.items() if k.startswith("kind_share.")} or None
    return row.get(metric)


def _metric_rows(base_accuracy: float | None, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["iteration", *METRICS]
    body = [["0 (base)", _fmt(base_accuracy)] + ["–"] * (len(METRICS) - 1)] if base_accuracy is not None else []
    return head, body + [[str(r["iteration"]), *(_fmt(_value(r, m)) for m in METRICS)] for r in rows]


def _is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def links_markdown(links: dict[str, str]) -> str:
    return " · ".join(f"[{name}]({t})" if _is_url(t) else f"{name} `{t}`" for name, t in links.items())


def links_html(links: dict[str, str]) -> str:
    items = [f'<a href="{html.escape(t)}">{html.escape(name)}</a>' if _is_url(t)
             else f"{html.escape(name)} <code>{html.escape(t)}</code>" for name, t in links.items()]
    return "<p>" + " · ".join(items) + "</p>"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def iteration_markdown(run: str, it: IterationData, plots: dict[str, bytes], links: dict[str, str]) -> str:
    head, body = _metric_rows(None, [{"iteration": it.iteration, **it.metrics}])
    lines = [f"# Run {run}: iteration {it.iteration}", "", links_markdown(links), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             *("| " + " | ".join(r) + " |" for r in body), ""]
    lines += [f"![{name}]({_uri(png)})" for name, png in plots.items()]
    table = sample_table(it)
    lines += ["", f"## Sample questions ({len(table)})", ""]
    if table:
        columns = ["thumbnail", *table[0]]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for s, row in zip(it.samples, table):
            image = f"![{s['image_id']}]({_uri(s['image'])})" if s["image"] else "–"
            lines.append("| " + " | ".join([image, *(_md_cell(v) for v in row.values())]) + " |")
    return "\n".join(lines) + "\n"


def _html_table(head: list[str], body: list[list[str]], raw_first: bool = False) -> str:
    def cell(i: int, v: str) -> str:
        return f"<td>{v if raw_first and i == 0 else html.escape(v)}</td>"

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in body) + "</table>")


def _images(plots: dict[str, bytes]) -> str:
    return "<div class=plots>" + "".join(f'<img alt="{html.escape(n)}" src="{_uri(p)}">' for n, p in plots.items()) + "</div>"


def iteration_html(it: IterationData, plots: dict[str, bytes]) -> str:
    head, body = _metric_rows(None, [{"iteration": it.iteration, **it.metrics}])
    table = sample_table(it)
    samples = "<p>No sample question.</p>"
    if table:
        images = [f'<img class=thumb alt="{s["image_id"]}" src="{_uri(s["image"])}">' if s["image"] else "–"
                  for s in it.samples]
        samples = _html_table(["thumbnail", *table[0]], [[img, *row.values()] for img, row in zip(images, table)],
                              raw_first=True)
    return (f'<section id="iteration-{it.iteration}"><h2>Iteration {it.iteration}</h2>' + _html_table(head, body)
            + _images(plots) + f"<h3>Sample questions ({len(table)})</h3>" + samples + "</section>")


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px;text-align:left}th{background:#f4f4f4}"
         ".plots img{max-width:48%;margin:4px}.thumb{width:64px;image-rendering:pixelated}")


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def iteration_report(run: str, it: IterationData, tau: tuple[float, float], base_accuracy: float | None,
                     rows: list[dict], links: dict[str, str], previous: Path | None = None) -> dict[str, bytes]:
    """One iteration's report files: summary.md, iteration.html, questions.json, the PNG plots and PLOTS_STAMP;
    ``rows`` (the summary rows of iterations 1..k) feed the across-iteration plots; ``links`` (name: URL or
    id) lead to the Prefect flow run and the MLflow run. The plots of the report in ``previous`` are kept when
    drawn from the same data (a rerun that restored every stage draws nothing)."""
    digest = plots_digest(it, tau, base_accuracy, rows)
    plots = drawn_before(previous, digest) or {**iteration_plots(it, tau), **run_plots(base_accuracy, rows)}
    return {"summary.md": iteration_markdown(run, it, plots, links).encode(),
            "iteration.html": page(f"Run {run}: iteration {it.iteration}",
                                   links_html(links) + iteration_html(it, plots)).encode(),
            "questions.json": json.dumps(sample_table(it), indent=2).encode(), **plots,
            PLOTS_STAMP: json.dumps({"digest": digest, "plots": sorted(plots)}).encode()}


def run_page(data: RunData) -> str:
    """The whole run on one self-contained page: summary table, plots across iterations, each iteration."""
    rows = [{"iteration": it.iteration, **it.metrics} for it in data.iterations]
    head, body = _metric_rows(data.base_accuracy, rows)
    intro = (f"<p>preset <b>{html.escape(data.preset)}</b>, {len(data.iterations)} iterations, "
             f"curation window τ = [{data.tau[0]}, {data.tau[1]}]</p>" + links_html(data.links))
    sections = "".join(iteration_html(it, iteration_plots(it, data.tau)) for it in data.iterations)
    return page(f"VisPlay run {data.run}",
                intro + _html_table(head, body) + _images(run_plots(data.base_accuracy, rows)) + sections)


# ---- reading a run -----------------------------------------------------------------------------------------

def _thumbnail(path: Path) -> bytes | None:
    if not path.exists():
        return None
    image = Image.open(path).convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_iteration(k: int, metrics: dict, files: dict[str, Path], corpus: str, truth: str | None) -> IterationData:
    """An iteration's report data from its stage files (``files``: stage -> the file of ``FILES``)."""
    candidates = read_jsonl(files["candidate_generation"])
    curated = {(r["image_id"], r["question"]) for r in read_jsonl(files["threshold_filtering"])}
    scenes = scenes_by_id(truth, Manifest.load(corpus)) if truth else {}
    seen: Counter = Counter()
    ranked = []  # the first valid question of every image, then the second, ...; invalid ones last
    for r in candidates:
        ranked.append(((r["question"] is None, seen[r["image_id"]]), r))
        seen[r["image_id"]] += 1
    samples = []
    for _, r in sorted(ranked, key=lambda x: x[0])[:SAMPLES]:
        sample = {"image_id": r["image_id"], "image": _thumbnail(Path(corpus) / "images" / f"{r['image_id']}.png"),
                  "question": r["question"], "votes": r["votes"], "confidence": r["confidence"],
                  "pseudo_label": r["pseudo_label"], "curated": (r["image_id"], r["question"]) in curated}
        if r["image_id"] in scenes:
            sample["oracle"] = world.oracle(scenes[r["image_id"]], r["question"]) if r["question"] else None
        samples.append(sample)
    grpo = {role: json.loads(files[f"{role}_grpo"].read_text()).get("grpo", []) for role in ("questioner", "reasoner")}
    return IterationData(iteration=k, metrics=metrics, samples=samples, grpo=grpo,
                         confidences=[r["confidence"] for r in candidates if r["confidence"] is not None])


def runs_with_summary(home: Path) -> list[Path]:
    return sorted((Path(home) / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)


def latest_run(home: Path) -> str | None:
    """The run whose summary was written last."""
    found = runs_with_summary(home)
    return found[-1].parent.name if found else None


def _stage_file(home: Path, stage: str, key: str, name: str, scratch: Path) -> Path:
    """A stage's output file: from its folder, else downloaded from the stage's MLflow run."""
    local = home / "stages" / f"{stage}-{key}" / name
    if local.exists():
        return local
    client = tracking_client(tracking_uri(home))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = finished_stage(client, experiment.experiment_id, key) if experiment else None
    if found is None:
        raise FileNotFoundError(f"stage {stage} ({key}): no folder {local.parent} and no finished MLflow run")
    return Path(client.download_artifacts(found.info.run_id, f"outputs/{name}", str(scratch / f"{stage}-{key}")))


def load_run(home: Path, run: str) -> RunData:
    """A finished run's report data, from HOME/runs/<run>/summary.json and its stages' files."""
    home = Path(home).resolve()
    path = home / "runs" / run / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"run {run}: no {path} (runs finished here: "
                                f"{', '.join(p.parent.name for p in runs_with_summary(home)) or 'none'})")
    summary = json.loads(path.read_text())
    corpus = summary["corpus"]
    with tempfile.TemporaryDirectory() as scratch:
        iterations = [
            load_iteration(it["iteration"], {k: v for k, v in it.items() if k != "stages"},
                           {stage: _stage_file(home, stage, it["stages"][stage]["key"], name, Path(scratch))
                            for stage, name in FILES.items()}, corpus["folder"], corpus["truth"])
            for it in summary["iterations"]]
    method = summary["config"]["method"]
    return RunData(run=run, preset=summary["preset"], tau=(method["tau_low"], method["tau_high"]),
                   base_accuracy=summary["base"]["shapes_accuracy"], iterations=iterations,
                   links=summary.get("links", {}))  # none in a summary written before they were
