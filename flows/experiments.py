"""The paper's open checks as one command each: sweeps over config keys (with seeds), an oracle Reasoner,
one iteration against three, weaker and stronger bases, and the ablation table.

Every arm is an ordinary self-evolution run in one home, so each run is in MLflow and every stage whose
cache key is unchanged is restored, not recomputed (a sweep over the curation window reuses the first
iteration's Questioner stages; later ones start from a Reasoner the window shaped). The comparison is a table of the last iteration's metrics per arm, mean ± spread
over seeds, with the base model as the reference row, the same per iteration, and a plot of accuracy across
iterations.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev

from flows import report
from flows.grids import arms_of
from flows.self_evolution import self_evolution
from tasks.mlflow_client import experiment_id, tracking_client, tracking_uri
from tasks.registry import slug
from tasks.stage_cache import open_run
from visplay_core.config import PROBE_STATISTICS, load_config
from visplay_core.io import write_json
from visplay_core.measure import eval_items, gain_or_loss

METRICS = ("shapes_accuracy", "pseudo_label_accuracy", "curated", "oracle_validity", "distinct_per_image",
           "pairwise_bleu", "glance_share", *PROBE_STATISTICS, "probe.oracle_accuracy")

def sweep(config_source: str, grids: list[str], seeds: int = 1, home: str = ".visplay", name: str = "sweep",
          overrides: list[str] | None = None) -> dict:
    """Run every arm of the grid for ``seeds`` seeds (config seed, +1, ...) and compare them; writes
    ``HOME/experiments/NAME/{table.md,results.json,accuracy.png}`` and logs them to an MLflow run."""
    overrides = list(overrides or [])
    first_seed = load_config(config_source, overrides).seed
    results = []
    for arm, arm_overrides in arms_of(grids):
        for s in range(seeds):
            config = load_config(config_source, [*overrides, *arm_overrides, f"seed={first_seed + s}"])
            summary = self_evolution(config=config, home=home, run_name=f"{name}-{slug(arm)[:80]}-s{first_seed + s}")
            results.append({"arm": arm, "seed": first_seed + s, "summary": summary})
    comparison = compare(results)
    out = Path(home).resolve() / "experiments" / name
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_markdown(name, comparison)
    (out / "table.md").write_text(table)
    (out / "accuracy.png").write_bytes(accuracy_plot(comparison))
    if _has_headroom(comparison):
        (out / "gain_vs_headroom.png").write_bytes(gain_plot(comparison))
    write_json(out / "results.json", {"name": name, "config": str(config_source), "overrides": overrides,
                                      "grids": grids, "seeds": seeds, **comparison})
    _log_to_mlflow(Path(home).resolve(), name, out)
    print(table)
    return comparison


def compare(results: list[dict]) -> dict:
    """Per arm: the last iteration's metrics (mean, spread over seeds) with its gain over the base it started
    from and the noise, the same for every iteration (``by_iteration``), the iteration each seed kept
    (``kept_iteration``, chosen without ground truth) and its accuracy, how many stages were restored from
    cache, and a verdict of the last iteration's gain over its base against the noise."""
    arms: dict[str, list[dict]] = {}
    for r in results:
        arms.setdefault(r["arm"], []).append(r["summary"])
    n_eval = _eval_items(results)
    rows = []
    for arm, summaries in arms.items():
        row = {"arm": arm, "seeds": len(summaries), "runs": [s["run"] for s in summaries],
               "base_accuracy": _stats([s["base"]["shapes_accuracy"] for s in summaries]),
               **_iteration_stats(summaries, [s["iterations"][-1] for s in summaries], n_eval)}
        row["by_iteration"] = [{"iteration": 0, **_iteration_stats(summaries, [_base_row(s) for s in summaries], n_eval)},
                               *({"iteration": summaries[0]["iterations"][i]["iteration"],
                                  **_iteration_stats(summaries, [s["iterations"][i] for s in summaries], n_eval)}
                                 for i in range(min(len(s["iterations"]) for s in summaries)))]
        row["accuracy_by_iteration"] = [it["shapes_accuracy"]["mean"] for it in row["by_iteration"][1:]]
        row["kept_iteration"] = [s.get("kept_iteration") for s in summaries]
        row["kept_accuracy"] = _stats([next(it["shapes_accuracy"] for it in s["iterations"]
                                            if it["iteration"] == s["kept_iteration"])
                                       for s in summaries if s.get("kept_iteration") is not None])
        stages = [st for s in summaries for it in s["iterations"] for st in it["stages"].values()]
        row["stages_cached"], row["stages"] = sum(st["cached"] for st in stages), len(stages)
        row["verdict"] = _verdict(row["shapes_accuracy"], row["base_accuracy"], n_eval)
        row["base_headroom"] = _stats([(s["base"].get("headroom") or {}).get("headroom") for s in summaries])
        rows.append(row)
    for row in rows:
        row["versus_first"] = _versus(row["shapes_accuracy"], rows[0]["shapes_accuracy"], n_eval) if row is not rows[0] else ""
    bases = {json.dumps(r["base_accuracy"], sort_keys=True) for r in rows}
    return {"base": rows[0]["base_accuracy"] if len(bases) == 1 else None, "eval_items": n_eval, "arms": rows}


def _base_row(summary: dict) -> dict:
    """A run's base as a row of its iterations: what its evaluation measured (accuracy, glances, the probe)."""
    base = summary["base"]
    return {"shapes_accuracy": base["shapes_accuracy"], "glance_share": base.get("glance_share"), **base.get("probe", {})}


def _iteration_stats(summaries: list[dict], its: list[dict], n_eval: int | None) -> dict:
    """The ``METRICS`` of one row a seed (``its``: an iteration, or the base, of each of ``summaries``), mean and
    spread over seeds, their gain over each seed's base, and the noise that gain is judged against (None without
    scores)."""
    out = {metric: _stats([it.get(metric) for it in its]) for metric in METRICS}
    out["gain"] = _stats([it.get("shapes_accuracy") - s["base"]["shapes_accuracy"]
                          if it.get("shapes_accuracy") is not None and s["base"]["shapes_accuracy"] is not None
                          else None for s, it in zip(summaries, its)])
    judged = _judged(out["shapes_accuracy"], _stats([s["base"]["shapes_accuracy"] for s in summaries]), n_eval)
    out["noise"] = judged and judged[1]
    return out


def _eval_items(results: list[dict]) -> int | None:
    return min((eval_items(r["summary"]) for r in results), default=None)


def _stats(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "spread": None, "n": 0}
    return {"mean": mean(values), "spread": stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _judged(arm: dict, base: dict, n_eval: int | None) -> tuple[str, float] | None:
    """``gain_or_loss`` of an arm's mean accuracy against its base's, the larger spread over seeds counted in the
    noise; None without both scores."""
    if arm["mean"] is None or base["mean"] is None:
        return None
    return gain_or_loss(arm["mean"], base["mean"], n_eval, max(arm["spread"] or 0.0, base["spread"] or 0.0))


def _verdict(arm: dict, base: dict, n_eval: int | None) -> str:
    """"above"/"below" its base only when the difference exceeds the noise: the spread over seeds, and at
    least two binomial standard errors of the evaluation (which is all there is with one seed)."""
    judged = _judged(arm, base, n_eval)
    if judged is None:
        return "no score"
    word, margin = judged
    if word == "within noise":
        return f"within noise of its base (±{margin:.3f})"
    return f"{'above' if word == 'gain' else 'below'} its base by {abs(arm['mean'] - base['mean']):.3f} (noise ±{margin:.3f})"


def _versus(arm: dict, first: dict, n_eval: int | None) -> str:
    """An arm's last-iteration accuracy against the first arm's (an ablation against the full method), judged
    against the same noise as a gain over the base."""
    judged = _judged(arm, first, n_eval)
    if judged is None:
        return "no score"
    word, margin = judged
    diff = arm["mean"] - first["mean"]
    return f"{diff:+.3f}, " + ("within noise" if word == "within noise" else "above" if diff > 0 else "below") + f" (±{margin:.3f})"


def _has_headroom(comparison: dict) -> bool:
    """Whether the arms' runs measured their base's headroom (``eval.votes``)."""
    return any(row["base_headroom"]["mean"] is not None for row in comparison["arms"])


def _cell(stat: dict, digits: int = 3, sign: bool = False) -> str:
    if stat["mean"] is None:
        return "-"
    value = f"{stat['mean']:{'+' if sign else ''}.{digits}f}"
    return f"{value} ± {stat['spread']:.{digits}f}" if stat["n"] > 1 else value


# The per-iteration columns of the tables: (header, metric, digits, signed).
ITERATION_COLUMNS = (("ShapesBench acc.", "shapes_accuracy", 3, False), ("gain", "gain", 3, True),
                     ("noise", "noise", 3, False), ("pseudo-label acc.", "pseudo_label_accuracy", 3, False),
                     ("curated", "curated", 1, False), ("question validity", "oracle_validity", 3, False),
                     ("distinct q./image", "distinct_per_image", 2, False), ("pairwise BLEU", "pairwise_bleu", 3, False),
                     ("glance share", "glance_share", 2, False))
PROBE_COLUMNS = (*((name.removeprefix("probe."), name, 3, False) for name in PROBE_STATISTICS),
                 ("probe acc. (truth)", "probe.oracle_accuracy", 3, False))


def _cells(stats: dict, columns: tuple) -> list[str]:
    return [f"±{stats['noise']:.3f}" if metric == "noise" and stats["noise"] is not None else
            "-" if metric == "noise" else _cell(stats[metric], digits, signed)
            for _, metric, digits, signed in columns]


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in body)]


def comparison_markdown(name: str, comparison: dict) -> str:
    headroom = _has_headroom(comparison)
    head = ["arm", "seeds", "base acc.", *(["base headroom"] if headroom else []),
            *(c[0] for c in ITERATION_COLUMNS), "kept iteration", "kept acc.", "stages restored", "verdict",
            f"vs {comparison['arms'][0]['arm']}"]
    body = []
    if comparison["base"] is not None:
        body.append(["base (reference)", "-", _cell(comparison["base"]), *(["-"] if headroom else []),
                     _cell(comparison["base"]), *["-"] * (len(ITERATION_COLUMNS) + 4)])
    for row in comparison["arms"]:
        body.append([row["arm"], str(row["seeds"]), _cell(row["base_accuracy"]),
                     *([_cell(row["base_headroom"], sign=True)] if headroom else []),
                     *_cells(row, ITERATION_COLUMNS),
                     ", ".join("-" if k is None else str(k) for k in row["kept_iteration"]), _cell(row["kept_accuracy"]),
                     f"{row['stages_cached']}/{row['stages']}", row["verdict"], row["versus_first"] or "-"])
    n = comparison["eval_items"]
    lines = [f"## {name}", "", *_table(head, body), "",
             f"Last iteration's metrics, mean ± standard deviation over seeds; ShapesBench on {n or 'all'} "
             f"items; question validity is the oracle's, of the candidates; distinct questions per image and their "
             f"pairwise BLEU (0 to 1) within an image's candidates; the kept iteration is each seed's, chosen by "
             f"its selection rule without ground truth. \"within noise\" means the gain over the base is no larger "
             f"than the spread over seeds or two binomial standard errors of the evaluation (the noise); the last "
             f"column judges each arm's last iteration against the first arm's the same way.", "",
             "### Per iteration", "",
             *_table(["arm", "iteration", *(c[0] for c in ITERATION_COLUMNS + PROBE_COLUMNS)],
                     [[row["arm"], str(it["iteration"]), *_cells(it, ITERATION_COLUMNS + PROBE_COLUMNS)]
                      for row in comparison["arms"] for it in row["by_iteration"]]), "",
             "The probe columns are label-free statistics of the Reasoner's answers to the run's fixed unlabeled "
             "probe questions (probe.*), beside the true accuracy of its greedy answers to them (measurement only)."]
    return "\n".join(lines) + "\n"


def accuracy_plot(comparison: dict) -> bytes:
    fig = report.figure(6, 3.5)
    ax = fig.subplots()
    for row in comparison["arms"]:
        points = [row["base_accuracy"]["mean"], *row["accuracy_by_iteration"]]
        label = row["arm"] if len(row["arm"]) <= 48 else "…" + row["arm"][-47:]  # arms differ at the end
        ax.plot(range(len(points)), points, marker="o", label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("iteration (0 = base)")
    ax.set_ylabel("ShapesBench accuracy")
    ax.legend(fontsize=7)
    return report.png(fig)


def gain_plot(comparison: dict) -> bytes:
    """Gain of the last iteration over its base against the base's headroom, one point per arm (error bars:
    spread over seeds), with the line gain = headroom (all the headroom distilled) for reference."""
    fig = report.figure(5, 4)
    ax = fig.subplots()
    rows = [r for r in comparison["arms"] if r["base_headroom"]["mean"] is not None and r["gain"]["mean"] is not None]
    for row in rows:
        ax.errorbar(row["base_headroom"]["mean"], row["gain"]["mean"], yerr=row["gain"]["spread"] or 0.0,
                    xerr=row["base_headroom"]["spread"] or 0.0, marker="o", capsize=3)
        ax.annotate(row["arm"].split("/")[-1][-24:], (row["base_headroom"]["mean"], row["gain"]["mean"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ends = [v for r in rows for v in (r["base_headroom"]["mean"], r["gain"]["mean"])] + [0.0]
    low, high = min(ends) - 0.02, max(ends) + 0.02
    ax.plot([low, high], [low, high], linestyle=":", color="grey", label="gain = headroom")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("base headroom (majority vote − greedy)")
    ax.set_ylabel("gain after the last iteration (greedy)")
    ax.legend(fontsize=7)
    return report.png(fig)


def _log_to_mlflow(home: Path, name: str, out: Path) -> None:
    client = tracking_client(tracking_uri(home))
    run_id = open_run(client, experiment_id(client, home), f"experiment-{name}",
                      {"visplay.level": "experiment", "visplay.experiment": name})
    client.log_artifacts(run_id, str(out))
    client.set_terminated(run_id, "FINISHED")
