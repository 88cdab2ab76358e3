"""The experiments' grids: the shipped experiments by name, and the grid syntax of ``visplay sweep --grid``.
Pure and light to import (the command line's choices come from ``EXPERIMENTS``); ``flows.experiments`` runs
them."""

from __future__ import annotations

import itertools

from visplay_core.config import load_config

# The shipped experiments: name -> (what it asks, its grid). "{K}" and "{Q}"/"{R}" are filled from the
# config (iterations and GRPO steps per iteration) so "same budget" holds for any preset.
EXPERIMENTS = {
    "thresholds": ("the paper's curation-window ablation, and no window (every candidate with a majority)",
                   ["method.tau_low:method.tau_high=0:1,0.1:0.9,0.25:0.75,0.4:0.6"]),
    "oracle": ("an oracle Reasoner (exact, and wrong 30% of the time) against the Reasoner model",
               ["oracle_reasoner_error=null,0.0,0.3"]),
    "iterations": ("one iteration against K, same total GRPO steps",
                   ["iterations:questioner.steps:reasoner.steps={K}:{Q}:{R},1:{KQ}:{KR}"]),
    "initialization": ("the same run from a weaker and a stronger base", ["base_model={BASES}"]),
    "ceiling": ("the Reasoner trained on true answers (to the curated questions, to fresh world questions) "
                "against pseudo-labels: the most any labeller could give", ["ceiling=none,curated,fresh"]),
    "headroom": ("the same run from bases of different headroom (majority of eval.votes samples − greedy, "
                 "measured on each base first): does the gain follow the headroom?", ["base_model={BASES}"]),
    "ablations": ("the full method against a frozen Questioner, no Questioner (the same number of questions drawn "
                  "blind from the world's grammar; and drawn from each image's scene, an oracle arm) and no "
                  "diversity penalty",
                  ["- | questioner.steps=0 | question_source=grammar questioner.steps=0 "
                   "| question_source=oracle-grammar questioner.steps=0 | method.diversity_weight=0"]),
}


def parse_grid(spec: str) -> list[list[str]]:
    """One ``--grid``: ``key=v1,v2`` → ``[["key=v1"], ["key=v2"]]``; keys joined with ``:`` take values
    joined with ``:`` together (``a:b=1:2,3:4`` → ``[["a=1", "b=2"], ["a=3", "b=4"]]``). Arms that set
    different keys are joined with ``|``, each its overrides apart by spaces, ``-`` for none
    (``- | a=1 b=2 | c=3`` → ``[[], ["a=1", "b=2"], ["c=3"]]``)."""
    if "|" in spec:
        arms = []
        for alternative in spec.split("|"):
            overrides = [] if alternative.strip() == "-" else alternative.split()
            well_formed = overrides and all(o.partition("=")[0] and o.partition("=")[2] for o in overrides)
            if alternative.strip() != "-" and not well_formed:
                raise ValueError(f"--grid {spec!r}: {alternative.strip()!r} is not key=value overrides apart by spaces "
                                 "(or - for none)")
            arms.append(overrides)
        return arms
    keys, sep, values = spec.partition("=")
    if not sep or not keys.strip() or not values.strip():
        raise ValueError(f"--grid {spec!r}: expected key=v1,v2,... (or k1:k2=a1:a2,b1:b2)")
    names = [k.strip() for k in keys.split(":")]
    arms = []
    for value in values.split(","):
        parts = value.split(":") if len(names) > 1 else [value]
        if len(parts) != len(names):
            raise ValueError(f"--grid {spec!r}: {value!r} has {len(parts)} values for {len(names)} keys")
        arms.append([f"{k}={v.strip()}" for k, v in zip(names, parts)])
    return arms


def arms_of(grids: list[str]) -> list[tuple[str, list[str]]]:
    """The cartesian product of the grids: ``[(arm name, overrides)]``."""
    product = itertools.product(*(parse_grid(g) for g in grids)) if grids else [()]
    return [(" ".join(o for part in combo for o in part) or "config", [o for part in combo for o in part])
            for combo in product]


def shipped_grids(name: str, config_source: str, overrides: list[str], bases: list[str] | None = None) -> list[str]:
    """The grid of a shipped experiment, filled in from the config it runs on."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r} (known: {', '.join(EXPERIMENTS)})")
    config = load_config(config_source, overrides)
    k, q, r = config.iterations, config.questioner.steps, config.reasoner.steps
    fill = {"{K}": k, "{Q}": q, "{R}": r, "{KQ}": k * q, "{KR}": k * r, "{BASES}": ",".join(bases or ["base"])}
    grids = []
    for grid in EXPERIMENTS[name][1]:
        for placeholder, value in fill.items():
            grid = grid.replace(placeholder, str(value))
        grids.append(grid)
    return grids
