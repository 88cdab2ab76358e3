"""The g sweep's bases: greedy, majority-of-10 and headroom on the 1,200 test items against the glance share g.

    python docs/experiments/glance_sweep.py G=BASE [G=BASE ...]   # e.g. 0=bases/g0 0.35=checkpoints/tiny-base

Reads each base's `bootstrap_log.json` (its final evaluation: all 1,200 ShapesBench test items, 10 samples
at T = 1), prints a markdown table and writes `docs/experiments/glance_sweep.png`.
"""

import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

from flows.report import png
from visplay_core.measure import headroom_noise


def _share(final: dict, key: str) -> str:
    return f"{final[key]:.2f}" if key in final else "not measured"


def main(pairs: list[str]) -> None:
    rows = []
    for pair in pairs:
        g, path = pair.split("=", 1)
        final = json.loads((Path(path) / "bootstrap_log.json").read_text())["final"]
        rows.append((float(g), final))
    rows.sort()
    print("| g | greedy | majority of 10 | headroom (noise) | vote wins | greedy wins | glance, greedy | glance, sampled |")
    print("|---|---|---|---|---|---|---|---|")
    for g, f in rows:
        noise = headroom_noise(f["vote_wins"], f["greedy_wins"], f["n"])
        print(f"| {g} | {f['accuracy']:.3f} | {f['majority_accuracy']:.3f} | "
              f"{f['majority_accuracy'] - f['accuracy']:+.3f} (±{noise:.3f}) | {f['vote_wins']:.3f} | "
              f"{f['greedy_wins']:.3f} | {_share(f, 'glance_share')} | {_share(f, 'sampled_glance_share')} |")
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    gs = [g for g, _ in rows]
    ax.plot(gs, [f["accuracy"] for _, f in rows], marker="o", label="greedy")
    ax.plot(gs, [f["majority_accuracy"] for _, f in rows], marker="s", label="majority of 10")
    ax.plot(gs, [f["majority_accuracy"] - f["accuracy"] for _, f in rows], marker="^", label="headroom")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("glance share g of the bootstrap's Reasoner examples")
    ax.set_ylabel("ShapesBench (test, 1,200 items)")
    ax.legend(fontsize=7)
    (Path(__file__).parent / "glance_sweep.png").write_bytes(png(fig))


if __name__ == "__main__":
    main(sys.argv[1:])
