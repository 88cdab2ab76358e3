"""``visplay``: the command line. Each subcommand is a thin shell over ``visplay_core`` or the flows."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Offline by default: nothing is fetched from a model hub, no telemetry.
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_ENABLE_TELEMETRY": "false",
                     "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_key, _value)


def _model_path(value: str) -> Path:
    from visplay_core.config import BASE_CHECKPOINT

    path = BASE_CHECKPOINT if value == "base" else Path(value)
    if not (path / "config.json").exists():
        raise SystemExit(f"visplay: --model {value}: not a model checkpoint folder (no config.json in {path})")
    return path


def cmd_bootstrap(args) -> int:
    from visplay_core.bootstrap import BootstrapConfig, bootstrap
    from visplay_core.config import BASE_CHECKPOINT

    output = Path(args.output) if args.output else BASE_CHECKPOINT
    log = bootstrap(output, BootstrapConfig(steps=args.steps, seed=args.seed, threads=args.threads))
    final = log["final"]
    print(f"saved {output} after {log['seconds']:.0f} s: accuracy {final['accuracy']:.3f}, "
          f"question-only {final['question_only_baseline']:.3f}, shuffled images {final['shuffled_image_accuracy']:.3f}")
    return 0


def cmd_eval(args) -> int:
    from visplay_core.evaluate import evaluate_shapes
    from visplay_core.model import load_model, load_processor

    if args.bench != "shapes":
        raise SystemExit(f"visplay eval: unknown benchmark {args.bench!r} (known: shapes)")
    path = _model_path(args.model)
    scores = evaluate_shapes(load_model(path), load_processor(path), limit=args.limit)
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    print(f"ShapesBench ({scores['bench']}), {path}: n={scores['n']}")
    print(f"{'kind':<10} {'n':>5} {'accuracy':>9} {'q-only':>7} {'shuffled':>9}")
    for kind, row in scores["per_kind"].items():
        print(f"{kind:<10} {row['n']:>5} {row['accuracy']:>9.3f} {row['question_only_baseline']:>7.3f} "
              f"{row['shuffled_image_accuracy']:>9.3f}")
    print(f"{'overall':<10} {scores['n']:>5} {scores['accuracy']:>9.3f} {scores['question_only_baseline']:>7.3f} "
          f"{scores['shuffled_image_accuracy']:>9.3f}")
    return 0


def _run_flow(config, home: str, name: str | None) -> int:
    from flows.self_evolution import self_evolution

    self_evolution(config=config, home=home, run_name=name)
    return 0


def cmd_run(args) -> int:
    from visplay_core.config import ConfigError, load_config

    try:
        config = load_config(args.config, args.set)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"visplay run: {e}")
    return _run_flow(config, args.home, args.name)


def cmd_demo(args) -> int:
    from visplay_core.config import load_config

    return _run_flow(load_config(args.preset, args.set), args.home, args.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visplay", description="Self-evolving VLMs from unlabeled images (VisPlay).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run (or resume) self-evolution from a config file or preset")
    p.add_argument("--config", required=True, help="YAML file or preset name (smoke, demo, paper-3b, paper-7b)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--home", default=".visplay", help="run home: stages, MLflow store, summaries (default ./.visplay)")
    p.add_argument("--name", help="run name (default: preset and config hash; the same name resumes)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the embedded default end to end")
    p.add_argument("--preset", default="demo", choices=["smoke", "demo"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--home", default=".visplay")
    p.add_argument("--name")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bootstrap", help="rebuild the tiny base VLM from its seed")
    p.add_argument("--output", help="checkpoint folder (default: the shipped checkpoints/tiny-base)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("eval", help="score a model on a benchmark")
    p.add_argument("--model", default="base", help="checkpoint folder, or 'base' for the shipped tiny base")
    p.add_argument("--bench", default="shapes")
    p.add_argument("--limit", type=int, help="at most N items, spread over the question kinds")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
