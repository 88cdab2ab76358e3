"""docs/experiments/kept_rule.py: a rule fixed in advance, checked on finished runs' summaries against the best
iteration and the last, with nothing chosen and no model loaded."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "experiments" / "kept_rule.py"


def _summary(run: str, accuracies: list[float], agreement: list[float | None]) -> dict:
    iterations = [{"iteration": k + 1, "shapes_accuracy": a, "probe.agreement_previous": g,
                   "stages": {"reasoner_grpo": {"key": f"{run}-{k + 1}"}}}
                  for k, (a, g) in enumerate(zip(accuracies, agreement))]
    return {"run": run, "config": {"iterations": len(accuracies), "seed": 0, "eval": {"limit": 300}},
            "iterations": iterations}


def test_a_fixed_rule_is_checked_on_every_run_against_the_best_and_the_last(tmp_path):
    runs = {  # 300 items: the noise at the best's accuracy p is 2·sqrt(p(1-p)/300)
        "fall": _summary("fall", [0.50, 0.66, 0.55], [None, 0.90, 0.80]),  # keeps 2 (0.66): best; last 0.55 below
        "rise": _summary("rise", [0.50, 0.55, 0.60], [None, 0.95, 0.70]),  # keeps 2 (0.55): near 0.60 (±0.057)
        "short": _summary("short", [0.50, 0.60], [None, 0.80]) | {"config": {"iterations": 3, "seed": 0}},
        "single": _summary("single", [0.60], [None]),  # one iteration: nothing to choose
    }
    runs["rise-restored"] = runs["rise"] | {"run": "rise-restored"}  # the same run, restored under another name
    for name, summary in runs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps(summary))
    out = subprocess.run([sys.executable, str(SCRIPT), "--home", str(tmp_path), "--prefix", "",
                          "--rule", "highest:agreement_previous"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("Fixed in advance: **highest agreement_previous**")
    assert "Checking: 2 other runs" in out  # not the unfinished run (2 of 3 iterations), the single, the copy
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[3:-1] for line in out.splitlines()
            if line.startswith("| fall |") or line.startswith("| rise |")}
    fall, rise = rows[("fall", "highest agreement_previous")], rows[("rise", "highest agreement_previous")]
    # kept, best, last, kept acc., best acc., last acc., noise, within noise of best, worse than last
    assert [c.strip() for c in fall] == ["2", "2", "3", "0.660", "0.660", "0.550", "±0.055", "yes", "no"]
    assert [c.strip() for c in rise] == ["2", "3", "3", "0.550", "0.600", "0.600", "±0.057", "yes", "no"]
    assert [c.strip() for c in rows[("fall", "last")]][-2:] == ["no", "no"]  # 0.55 is 0.11 below the best
