"""The report's parts built from hand-made data: the confidence histogram's window by curation's rule, the
sample table's columns, the metrics it names and the links to the Prefect flow run and the MLflow run."""

import json
import re
import subprocess
import sys
from pathlib import Path

from flows import report
from visplay_core.method import method_preset
from visplay_core.rewards import Candidate, Vote, curate

PAPER = method_preset("paper")
TAU = (PAPER.tau_low, PAPER.tau_high)
LINKS = {"Prefect flow run": "http://127.0.0.1:4200/flow-runs/flow-run/f-1", "MLflow run": "0123abcd"}


def _candidates(confidences: list[float]) -> list[Candidate]:
    return [Candidate(f"img{i}", f"How many circles are there ({i})?", Vote(label="2", confidence=c, votes={"2": 1}, m=4))
            for i, c in enumerate(confidences)]


def _iteration(confidences: list[float], curated: int) -> report.IterationData:
    sample = {"image_id": "img0", "image": None, "question": "How many circles are there?", "votes": {"2": 3, "3": 1},
              "confidence": 0.75, "pseudo_label": "2", "curated": True, "oracle": None}
    metrics = {"shapes_accuracy": 0.8333333, "pseudo_label_accuracy": 0.5, "curated": curated, "mean_confidence": 0.6,
               "well_formed": 1.0, "oracle_validity": 0.875, "questioner_reward": 0.4}
    return report.IterationData(iteration=1, metrics=metrics, samples=[sample], confidences=confidences,
                                grpo={"questioner": [], "reasoner": []})


def test_the_histogram_counts_the_window_by_curations_rule():
    assert TAU == (0.25, 0.75)
    on_edges, just_outside = [0.25, 0.75, 0.5], [0.2496, 0.7504]  # just outside: on the edges' bars
    confidences = [*on_edges, *just_outside, 0.1, 1.0]
    inside, outside = report.window_bars(confidences, TAU)
    assert inside == {0.25: 1, 0.75: 1, 0.5: 1}
    assert outside == {0.25: 1, 0.75: 1, 0.1: 1, 1.0: 1}
    assert inside.total() == len(curate(_candidates(confidences), PAPER)) == 3


def test_the_histogram_shows_the_window_beside_the_number_curated(monkeypatch):
    figures = []
    monkeypatch.setattr(report, "png", lambda fig: figures.append(fig) or b"")
    report.confidence_plot([0.25, 0.2496, 0.5, 0.5, 1.0], TAU, curated=2)  # one of the two 0.5 a repeat, say
    [legend] = [ax.get_legend() for ax in figures[0].axes]
    assert [t.get_text() for t in legend.get_texts()] == ["τ window [0.25, 0.75]", "outside: 2",
                                                          "in the window: 3 (2 curated)"]


def test_the_sample_table_columns_have_distinct_titles():
    it = _iteration([0.75], curated=1)
    html_titles = re.findall(r"<th>([^<]*)</th>", report.iteration_html(it, {}).split("<h3>")[1])
    md_titles = [line for line in report.iteration_markdown("r", it, {}, LINKS).splitlines()
                 if line.startswith("| thumbnail")][0].strip("| ").split(" | ")
    for titles in (html_titles, md_titles):
        assert titles[:3] == ["thumbnail", "image id", "question"] and len(set(titles)) == len(titles)
    assert report.sample_table(it)[0]["oracle answer"] == "(invalid question)"


def test_the_report_names_well_formed_beside_the_oracles_validity_and_links_both_runs():
    it = _iteration([0.5], curated=1)
    files = report.iteration_report("r", it, TAU, 0.5, [{"iteration": 1, "shapes_accuracy": 0.8,
                                                         "pseudo_label_accuracy": 0.5}], LINKS)
    summary = files["summary.md"].decode()
    head = summary.split("\n")[4].strip("| ").split(" | ")
    assert head[head.index("well_formed") + 1] == "oracle_validity" and "questioner_validity" not in summary
    assert "| 1.000 | 0.875 |" in summary
    assert f"[Prefect flow run]({LINKS['Prefect flow run']}) · MLflow run `0123abcd`" in summary
    html_links = f'<a href="{LINKS["Prefect flow run"]}">Prefect flow run</a> · MLflow run <code>0123abcd</code>'
    assert html_links in files["iteration.html"].decode()
    whole = report.run_page(report.RunData(run="r", preset="smoke", tau=TAU, base_accuracy=0.5, iterations=[it], links=LINKS))
    assert html_links in whole and "<th>oracle_validity</th>" in whole  # `visplay report`


def test_a_report_keeps_the_plots_drawn_from_the_same_data_and_redraws_them_when_it_changed(tmp_path):
    it = _iteration([0.5, 0.25], curated=1)
    rows = [{"iteration": 1, "shapes_accuracy": 0.8, "pseudo_label_accuracy": 0.5}]
    first = report.iteration_report("r", it, TAU, 0.5, rows, LINKS, previous=tmp_path)  # nothing there yet
    plots = json.loads(first[report.PLOTS_STAMP])["plots"]
    assert set(plots) == {"grpo_rewards.png", "confidence_histogram.png", "accuracy.png", "pseudo_label_accuracy.png"}
    assert all(first[name].startswith(b"\x89PNG") for name in plots)
    for name, content in first.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "accuracy.png").write_bytes(b"kept")  # what the earlier report holds is what is shown again

    again = report.iteration_report("r", it, TAU, 0.5, rows, {"Prefect flow run": "another"}, previous=tmp_path)
    assert again["accuracy.png"] == b"kept" and again[report.PLOTS_STAMP] == first[report.PLOTS_STAMP]
    assert "another" in again["summary.md"].decode()  # the text is written anew

    changed = [{**rows[0], "shapes_accuracy": 0.9}]
    redrawn = report.iteration_report("r", it, TAU, 0.5, changed, LINKS, previous=tmp_path)
    assert redrawn["accuracy.png"].startswith(b"\x89PNG") and redrawn[report.PLOTS_STAMP] != first[report.PLOTS_STAMP]


KEEP_PLOTS = """
import sys
from pathlib import Path
from tests.test_report import LINKS, TAU, _iteration
from flows import report
rows = [{"iteration": 1, "shapes_accuracy": 0.8, "pseudo_label_accuracy": 0.5}]
report.iteration_report("r", _iteration([0.5, 0.25], curated=1), TAU, 0.5, rows, LINKS, previous=Path(sys.argv[1]))
print("matplotlib" in sys.modules)
"""


def test_a_rerun_that_keeps_its_plots_never_loads_matplotlib(tmp_path):
    """About 0.5 s of every rerun's start-up (BENCHMARKS.md): matplotlib is imported where a plot is drawn."""
    it = _iteration([0.5, 0.25], curated=1)
    rows = [{"iteration": 1, "shapes_accuracy": 0.8, "pseudo_label_accuracy": 0.5}]
    for name, content in report.iteration_report("r", it, TAU, 0.5, rows, LINKS, previous=tmp_path).items():
        (tmp_path / name).write_bytes(content)
    root = Path(__file__).resolve().parents[1]
    kept = subprocess.run([sys.executable, "-c", KEEP_PLOTS, str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert kept.stdout.strip() == "False"
    (tmp_path / report.PLOTS_STAMP).unlink()  # the same call with no plots to keep draws them, and so loads it
    drawn = subprocess.run([sys.executable, "-c", KEEP_PLOTS, str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert drawn.stdout.strip() == "True", drawn.stderr[-2000:]
