"""Keeping an iteration without labels (EXPERIMENTS.md): choose a `selection` rule on some finished runs, judged by
the **validation** draw of ShapesBench, then check it on the other runs with the test items, against the
ground-truth best iteration and against keeping the last. Also the correlation of each label-free probe
statistic with test accuracy across iterations, within runs.

    python docs/experiments/kept_rule.py --home H --prefix ablations- --choose-seeds 0
    python docs/experiments/kept_rule.py --home H --prefix ablations- --choose-seeds 0,1,2 \
        --check ablations-question-source-oracle-grammar   # the second choice, checked on runs made after it
    python docs/experiments/kept_rule.py --home D --prefix "" --rule highest:agreement_previous  # checked only

The choosing runs' Reasoners are evaluated on the validation draw once (cached in
HOME/experiments/kept-rule/validation.json); the table goes to HOME/experiments/kept-rule/table.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import StatisticsError, correlation as pearson, mean

from visplay_core.config import PROBE_STATISTICS, SelectionConfig
from visplay_core.io import write_json
from visplay_core.measure import eval_items, selection_outcome

RULES = [SelectionConfig(), *(SelectionConfig(statistic=s, best=b) for s in PROBE_STATISTICS
                              for b in ("lowest", "highest"))]


def rule_name(rule: SelectionConfig) -> str:
    return "last" if rule.statistic == "last" else f"{rule.best} {rule.statistic.removeprefix('probe.')}"


def finished_runs(home: Path, prefix: str) -> list[dict]:
    """The finished runs with an iteration to choose (two or more), each once: a run an experiment restored
    under another name (the same Reasoner stages) is the same run."""
    runs, seen = [], set()
    for path in sorted((home / "runs").glob(f"{prefix}*/summary.json")):
        summary = json.loads(path.read_text())
        reasoners = tuple(row["stages"]["reasoner_grpo"]["key"] for row in summary["iterations"])
        if len(reasoners) == summary["config"]["iterations"] >= 2 and reasoners not in seen:
            seen.add(reasoners)
            runs.append(summary)
    return runs


def with_validation_accuracy(home: Path, summary: dict, cache: dict, cache_file: Path) -> list[dict]:
    """The run's iteration rows, each with its Reasoner's greedy accuracy on the validation draw (all 1,200),
    evaluated once: ``cache`` (Reasoner stage key → accuracy) is kept in ``cache_file``."""
    from visplay_core.evaluate import evaluate_on
    from visplay_core.model import load_model, load_processor

    rows = []
    for row in summary["iterations"]:
        key = row["stages"]["reasoner_grpo"]["key"]
        if key not in cache:
            path = home / "stages" / f"reasoner_grpo-{key}" / "model"
            scores = evaluate_on("shapes", load_model(path), load_processor(path), shapes_split="validation",
                                 shuffled=False)
            cache[key] = scores["accuracy"]
            write_json(cache_file, cache)
        rows.append({**row, "validation_accuracy": cache[key]})
    return rows


def judged(runs: list[tuple[dict, list[dict]]], rule: SelectionConfig, accuracy: str) -> list[dict]:
    return [{"run": s["run"], **selection_outcome(rows, rule, eval_items(s), accuracy)} for s, rows in runs]


def correlation(runs: list[dict], statistic: str) -> float | None:
    """Pearson's r of ``statistic`` with test accuracy over iterations 1..K, each run's mean taken out of both."""
    pairs = []
    for s in runs:
        rows = [r for r in s["iterations"] if r.get(statistic) is not None]
        if len(rows) < 2:
            continue
        mx, my = mean(r[statistic] for r in rows), mean(r["shapes_accuracy"] for r in rows)
        pairs += [(r[statistic] - mx, r["shapes_accuracy"] - my) for r in rows]
    try:
        return pearson([x for x, _ in pairs], [y for _, y in pairs])
    except StatisticsError:  # fewer than two pairs, or a constant statistic
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--prefix", default="ablations-", help="the runs: HOME/runs/PREFIX*")
    parser.add_argument("--choose-seeds", default="0", help="seeds of the runs the rule is chosen on (comma-separated)")
    parser.add_argument("--check", action="append", default=[], metavar="PREFIX",
                        help="runs named PREFIX* only check the rule, whatever their seed (repeatable)")
    parser.add_argument("--rule", metavar="BEST:STATISTIC",
                        help="check this rule, fixed in advance (e.g. highest:agreement_previous), on every run; "
                             "nothing is chosen")
    args = parser.parse_args()
    home = Path(args.home)
    seeds = {int(s) for s in args.choose_seeds.split(",")}
    runs = finished_runs(home, args.prefix)
    fixed = None
    if args.rule:
        best, _, statistic = args.rule.partition(":")
        fixed = SelectionConfig(statistic=f"probe.{statistic}", best=best)
    chooses = [not fixed and s["config"]["seed"] in seeds and not s["run"].startswith(tuple(args.check)) for s in runs]
    choosing = [s for s, c in zip(runs, chooses) if c]
    checking = [(s, s["iterations"]) for s, c in zip(runs, chooses) if not c]
    folder = home / "experiments" / "kept-rule"
    cache_file = folder / "validation.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    chosen_on = [(s, with_validation_accuracy(home, s, cache, cache_file)) for s in choosing]

    lines = [] if fixed else [f"Choosing: {len(chosen_on)} runs (seeds {sorted(seeds)}), the validation draw", "",
                              "| rule | kept = best | within noise of best | worse than last beyond noise | "
                              "mean kept acc. |", "|---|---|---|---|---|", ""]
    scores = []
    for rule in RULES:  # "last" first: a statistic must do strictly better to be chosen
        out = judged(chosen_on, rule, "validation_accuracy")
        score = (sum(o["near_best"] for o in out) - sum(o["worse_than_last"] for o in out),
                 mean(o["kept_accuracy"] for o in out)) if out else (0, 0.0)
        scores.append((score, rule))
        if out:
            lines.append(f"| {rule_name(rule)} | {sum(o['kept'] == o['best'] for o in out)}/{len(out)} | "
                         f"{sum(o['near_best'] for o in out)}/{len(out)} | {sum(o['worse_than_last'] for o in out)} | "
                         f"{score[1]:.3f} |")
    chosen = fixed or (max(scores, key=lambda sr: sr[0])[1] if chosen_on else RULES[0])
    lines += [f"{'Fixed in advance' if fixed else 'Chosen'}: **{rule_name(chosen)}**", "",
              f"Checking: {len(checking)} other runs, the test items", "",
              "| run | rule | kept | best | last | kept acc. | best acc. | last acc. | noise | within noise of best | "
              "worse than last |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rule in [chosen] + ([RULES[0]] if chosen != RULES[0] else []):
        for o in judged(checking, rule, "shapes_accuracy"):
            lines.append(f"| {o['run']} | {rule_name(rule)} | {o['kept']} | {o['best']} | {o['last']} | "
                         f"{o['kept_accuracy']:.3f} | {o['best_accuracy']:.3f} | {o['last_accuracy']:.3f} | "
                         f"±{o['noise']:.3f} | {'yes' if o['near_best'] else 'no'} | "
                         f"{'yes' if o['worse_than_last'] else 'no'} |")
    lines += ["", "Every rule on the checking runs, for the record only (choosing from this would choose on the test items):",
              "", "| rule | within noise of best | worse than last beyond noise | mean kept acc. |", "|---|---|---|---|"]
    for rule in RULES:
        out = judged(checking, rule, "shapes_accuracy")
        if out:
            lines.append(f"| {rule_name(rule)} | {sum(o['near_best'] for o in out)}/{len(out)} | "
                         f"{sum(o['worse_than_last'] for o in out)} | {mean(o['kept_accuracy'] for o in out):.3f} |")
    lines += ["", f"Correlation with test accuracy over iterations 1..K within runs ({len(runs)} runs, Pearson's r "
              "of run-centred values):", ""]
    for statistic in PROBE_STATISTICS:
        r = correlation(runs, statistic)
        lines.append(f"- {statistic.removeprefix('probe.')}: " + ("-" if r is None else f"{r:+.2f}"))
    text = "\n".join(lines) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
