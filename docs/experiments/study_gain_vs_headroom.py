"""Gain after the `study` preset against the base's headroom (EXPERIMENTS.md, "Headroom → gain"), on the 1,200
test items: the numbers of that section's table, as its runs recorded them (`base.headroom` and the last
iteration's `shapes_accuracy` in MLflow), drawn with the `headroom` experiment's own plot.

    python docs/experiments/study_gain_vs_headroom.py   # writes docs/experiments/gain_vs_headroom-study.png
"""

from pathlib import Path
from statistics import mean, stdev

from flows.experiments import gain_plot

# base: (base greedy, base headroom, greedy after iteration 3 per seed)
RUNS = {"g = 0": (0.647, -0.013, [0.550, 0.526]), "g = 0.15": (0.644, -0.007, [0.605]),
        "g = 0.35": (0.443, 0.159, [0.624, 0.618, 0.608]), "g = 0.6": (0.4492, 0.093, [0.4375]),
        "shipped": (0.480, 0.162, [0.595, 0.640, 0.627]), "g = 0, 4,500 steps": (0.757, -0.007, [0.656])}


def main() -> None:
    arms = []
    for label, (base, headroom, after) in RUNS.items():
        gains = [a - base for a in after]
        arms.append({"arm": f"{label}, {len(after)} seed{'s' * (len(after) > 1)}",
                     "base_headroom": {"mean": headroom, "spread": 0.0},
                     "gain": {"mean": mean(gains), "spread": stdev(gains) if len(gains) > 1 else 0.0}})
    out = Path(__file__).parent / "gain_vs_headroom-study.png"
    out.write_bytes(gain_plot({"arms": arms}))
    print(out)


if __name__ == "__main__":
    main()
