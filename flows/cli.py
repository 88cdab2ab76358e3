"""``visplay``: the command line. Each subcommand is a thin shell over ``visplay_core`` or the flows."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

from flows import console

# Offline by default: nothing is fetched from a model hub, no telemetry; one progress bar per training stage
# (none for loading and saving checkpoints).
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1",
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
    if args.init:
        _model_path(args.init)
    log = bootstrap(output, BootstrapConfig(steps=args.steps, seed=args.seed, threads=args.threads, lr=args.lr,
                                            init=args.init and str(_model_path(args.init)),
                                            glance_share=args.glance_share))
    final = log["final"]
    print(f"saved {output} after {log['seconds']:.0f} s: accuracy {final['accuracy']:.3f}, "
          f"question-only {final['question_only_baseline']:.3f}, shuffled images {final['shuffled_image_accuracy']:.3f}, "
          f"majority of {final['votes']} {final['majority_accuracy']:.3f}")
    return 0


def cmd_eval(args) -> int:
    from visplay_core.benchmarks import BenchmarkError, Judge
    from visplay_core.evaluate import benchmark_names, evaluate_on
    from visplay_core.model import load_model, load_processor

    names = [n.strip() for n in args.bench.split(",") if n.strip()]
    if args.source and len(names) != 1:
        raise SystemExit("visplay eval: --source names the data of one benchmark; give a single --bench")
    path = _model_path(args.model)
    model, processor = load_model(path, args.trust_remote_code), load_processor(path, args.trust_remote_code)
    judge = Judge(args.judge_url, model=args.judge_model) if args.judge_url else None
    results = {}
    for name in names:
        try:
            results[name] = evaluate_on(name, model, processor, limit=args.limit, votes=args.votes,
                                        temperature=args.temperature, shapes_split=args.split, source=args.source,
                                        judge=judge)
        except BenchmarkError as e:
            raise SystemExit(f"visplay eval: {e}")
    if args.json:
        print(json.dumps(results[names[0]] if len(names) == 1 else results, indent=2))
        return 0
    for name, scores in results.items():
        print(_shapes_table(scores, path) if name == "shapes" else
              f"{scores['benchmark']}: accuracy {scores['accuracy']:.3f} on {scores['n']} items "
              f"({scores['no_answer']} without an answer; scoring: {scores['scoring']})" + (
                  f"\n  {scores['votes']} votes at temperature {scores['temperature']}: pass@1 {scores['pass_at_1']:.3f}, "
                  f"majority {scores['majority_accuracy']:.3f} (headroom {scores['majority_accuracy'] - scores['accuracy']:+.3f}), "
                  f"token entropy {scores['mean_entropy']:.3f}" if "majority_accuracy" in scores else ""))
    print(f"(benchmarks: {', '.join(benchmark_names())})")
    return 0


def _shapes_table(scores: dict, path: Path) -> str:
    voted = "majority_accuracy" in scores
    lines = [f"ShapesBench ({scores['bench']}), {path}: n={scores['n']}"
             + (f", {scores['votes']} votes at temperature {scores['temperature']}" if voted else ""),
             f"{'kind':<10} {'n':>5} {'accuracy':>9} {'q-only':>7} {'shuffled':>9}"
             + (f" {'pass@1':>7} {'majority':>9} {'headroom':>9} {'vote wins':>9} {'greedy wins':>11} {'entropy':>8}"
                if voted else "") + f" {'glance':>7}" + (f" {'glance (sampled)':>16}" if voted else "")]
    rows = [*scores["per_kind"].items(), ("overall", scores)]
    for kind, row in rows:
        line = (f"{kind:<10} {row['n']:>5} {row['accuracy']:>9.3f} {row['question_only_baseline']:>7.3f} "
                f"{row['shuffled_image_accuracy']:>9.3f}")
        if voted:
            line += (f" {row['pass_at_1']:>7.3f} {row['majority_accuracy']:>9.3f} "
                     f"{row['majority_accuracy'] - row['accuracy']:>+9.3f} {row['vote_wins']:>9.3f} "
                     f"{row['greedy_wins']:>11.3f} {row['mean_entropy']:>8.3f}")
        line += f" {row['glance_share']:>7.3f}" + (f" {row['sampled_glance_share']:>16.3f}" if voted else "")
        lines.append(line)
    return "\n".join(lines)


def _run_flow(config, home: str, name: str | None) -> int:
    ready = console.connect(home)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.self_evolution import self_evolution
    from tasks.locks import RunInProgressError

    ready()
    try:
        # No flow-run heartbeats from the command line: each flow's end waits up to a second for its heartbeat
        # thread, and they serve only Prefect automations that mark silent runs crashed. Served runs keep them.
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            self_evolution(config=config, home=home, run_name=name)
    except RunInProgressError as e:
        raise SystemExit(f"visplay: {e}")
    except Exception as e:  # Prefect has logged its traceback once already
        raise SystemExit(f"visplay: run failed: {type(e).__name__}: {e}")
    return 0


def cmd_run(args) -> int:
    from visplay_core.config import ConfigError, load_config

    try:
        config = load_config(args.config, args.set)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"visplay run: {e}")
    return _run_flow(config, args.home, args.name)


def cmd_advance(args) -> int:
    if args.iterations < 1:
        raise SystemExit(f"visplay advance: --iterations must be at least 1 (got {args.iterations})")
    from visplay_core.config import ConfigError, load_config

    if args.set and not args.config:
        raise SystemExit("visplay advance: --set changes a configuration, and a line keeps its own: give --set with "
                         "the --config of a new line")
    try:
        if args.config:
            load_config(args.config, args.set)  # a bad configuration stops here, before any server or flow run
    except ConfigError as e:
        raise SystemExit(f"visplay advance: {e}")
    ready = console.connect(args.home)
    from flows.deploy import form_source, visplay_nightly
    from flows.line import LineError, check_line_name
    from tasks.locks import RunInProgressError

    ready()
    try:
        check_line_name(args.line)
        visplay_nightly(line=args.line, overrides=args.set, iterations=args.iterations, home=args.home,
                        **form_source(args.config or ""))
    except (ConfigError, LineError, RunInProgressError) as e:
        raise SystemExit(f"visplay advance: {e}")
    return 0


def cmd_demo(args) -> int:
    from visplay_core.config import load_config

    return _run_flow(load_config(args.preset, args.set), args.home, args.name)


def cmd_sweep(args) -> int:
    ready = console.connect(args.home)
    from flows.experiments import sweep
    from visplay_core.config import ConfigError

    ready()
    try:
        sweep(args.config, args.grid, args.seeds, args.home, args.name, args.set)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"visplay sweep: {e}")
    return 0


def cmd_experiment(args) -> int:
    ready = console.connect(args.home)
    from flows.experiments import sweep
    from flows.grids import shipped_grids
    from visplay_core.config import ConfigError

    ready()
    bases = [b.strip() for b in args.bases.split(",")] if args.bases else None
    if args.name == "initialization" and bases is None:
        bases = _bootstrapped_bases(Path(args.home), [int(n) for n in args.bootstrap_steps.split(",")])
    if args.name == "headroom" and bases is None:
        raise SystemExit("visplay experiment headroom: give the bases to compare with --bases (e.g. bootstrapped "
                         "with visplay bootstrap --glance-share G)")
    try:
        grids = shipped_grids(args.name, args.config, args.set, bases)
        sweep(args.config, grids, args.seeds, args.home, args.name, args.set)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"visplay experiment: {e}")
    return 0


def _bootstrapped_bases(home: Path, steps: list[int]) -> list[str]:
    """Bases trained for ``steps`` bootstrap steps (built once under HOME/bases), with the shipped base in
    its place by its own step count: weakest first."""
    from visplay_core.bootstrap import BootstrapConfig, bootstrap

    bases = {BootstrapConfig().steps: "base"}
    for n in steps:
        path = home / "bases" / f"steps-{n}"  # as given (relative to here): short arm names
        if not (path / "config.json").exists():
            print(f"bootstrapping a base for {n} steps into {path}")
            bootstrap(path, BootstrapConfig(steps=n))
        bases.setdefault(n, str(path))
    return [bases[n] for n in sorted(bases)]


def _without_password(url: str) -> str:
    """A database URL as it may be shown: its password masked."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_up(args) -> int:
    from flows.servers import databases, up

    try:
        servers = up(Path(args.home), host=args.host, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
                     prefect_database=args.prefect_database, mlflow_database=args.mlflow_database)
    except RuntimeError as e:
        raise SystemExit(f"visplay up: {e}")
    dbs = databases(Path(args.home))
    print(f"Prefect  {servers['prefect']['url']}   (API {servers['prefect']['api']}; database "
          f"{_without_password(dbs['prefect']) if 'prefect' in dbs else 'SQLite, in ' + str(Path(args.home) / 'prefect')})")
    print(f"MLflow   {servers['mlflow']['url']}   (database "
          f"{_without_password(dbs['mlflow']) if 'mlflow' in dbs else 'SQLite, ' + str(Path(args.home) / 'mlflow.db')})")
    if servers["prefect"].get("auth"):
        print(f"both require the credentials in {Path(args.home) / 'credentials.json'} (mode 0600), which visplay uses")
    print(f"recorded in {Path(args.home) / 'servers.json'}: `visplay run/demo/serve --home {args.home}` use them; "
          f"`visplay down --home {args.home}` stops them")
    return 0


def cmd_down(args) -> int:
    from flows.servers import down

    stopped = down(Path(args.home))
    print(f"stopped {' and '.join(stopped)}" if stopped else
          f"nothing to stop: no server of {Path(args.home) / 'servers.json'} was running")
    return 0


def cmd_serve(args) -> int:
    if args.iterations < 1:
        raise SystemExit(f"visplay serve: --iterations must be at least 1 (got {args.iterations})")
    if args.notify and not args.notify.startswith(("http://", "https://")):
        raise SystemExit(f"visplay serve: --notify takes a webhook's http(s) URL (got {args.notify!r})")
    from flows.servers import use_servers

    use_servers(Path(args.home))  # before prefect is imported
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise SystemExit("visplay serve: no Prefect server: run `visplay up` first (same --home) or set PREFECT_API_URL")
    console.watch_prefect("stopped serving", console.SERVE_GRACE_SECONDS)
    from flows.deploy import serve
    from flows.line import LineError
    from visplay_core.config import ConfigError

    console.tracebacks_once()
    try:
        serve(args.home, cron=args.cron, timezone=args.timezone, line=args.line, source=args.config or "",
              iterations=args.iterations, notify=args.notify)
    except (ConfigError, LineError) as e:
        raise SystemExit(f"visplay serve: {e}")
    return 0


def cmd_report(args) -> int:
    from flows.servers import use_servers

    use_servers(Path(args.home))
    from flows.report import latest_run, load_run, run_page

    home = Path(args.home)
    run = latest_run(home) if args.run == "latest" else args.run
    if run is None:
        raise SystemExit(f"visplay report: no finished run in {home / 'runs'}")
    try:
        data = load_run(home, run)
    except FileNotFoundError as e:
        raise SystemExit(f"visplay report: {e}")
    output = Path(args.output) if args.output else home / "runs" / run / "report.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(run_page(data))
    print(f"wrote {output}")
    return 0


def cmd_inspect(args) -> int:
    from visplay_core.corpus import scan

    try:
        manifest = scan(args.corpus, max_pixels=args.max_pixels)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"visplay inspect: {e}")
    report = {"corpus": args.corpus, **manifest.summary(), "skipped_files": manifest.skipped}
    sizes = [(i["width"], i["height"]) for i in manifest.images]
    if sizes:
        report["size"] = {"min": list(min(sizes, key=lambda s: s[0] * s[1])),
                          "max": list(max(sizes, key=lambda s: s[0] * s[1]))}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.corpus}: {report['usable']} usable, {report['skipped']} skipped")
    for fmt, n in sorted(report["formats"].items(), key=lambda kv: -kv[1]):
        print(f"  format {fmt}: {n}")
    if sizes:
        print(f"  smallest {report['size']['min'][0]}x{report['size']['min'][1]}, "
              f"largest {report['size']['max'][0]}x{report['size']['max'][1]}")
    for reason, n in sorted(report["skipped_by_reason"].items()):
        print(f"  skipped ({reason}): {n}")
    for item in manifest.skipped:
        print(f"    {item['source']}: {item['reason']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from flows.grids import EXPERIMENTS
    from visplay_core.benchmarks import ADAPTERS
    from visplay_core.config import preset_names

    parser = argparse.ArgumentParser(prog="visplay", description="Self-evolving VLMs from unlabeled images (VisPlay).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    home = argparse.ArgumentParser(add_help=False)  # the options several commands share
    home.add_argument("--home", default=".visplay", help="run home: stages, MLflow store, summaries, the servers of "
                      "`visplay up` (default ./.visplay)")
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config key (repeatable)")
    presets = ", ".join(preset_names())

    p = sub.add_parser("run", parents=[home, overrides], help="run (or resume) self-evolution from a config file or "
                       "preset")
    p.add_argument("--config", required=True, help=f"YAML file or preset name ({presets})")
    p.add_argument("--name", help="run name (default: preset and config hash; the same name resumes)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("advance", parents=[home, overrides], help="run the next iterations of a line of evolution (a "
                       "failed advance is completed first); what `visplay serve` runs every night")
    p.add_argument("--line", required=True, help="name of the line of evolution")
    p.add_argument("--config", help="YAML file or preset name of a new line (default: the line's own; a line keeps "
                   "the configuration it started from)")
    p.add_argument("--iterations", type=int, default=1, help="iterations to add (default 1)")
    p.set_defaults(func=cmd_advance)

    p = sub.add_parser("demo", parents=[home, overrides], help="run the embedded default end to end")
    p.add_argument("--preset", default="demo", choices=preset_names())
    p.add_argument("--name")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", parents=[home, overrides], help="run self-evolution over a grid of config values (and "
                       "seeds) and compare")
    p.add_argument("--config", required=True, help="YAML file or preset name")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                   help="values of a key to sweep (repeatable: the grids multiply); k1:k2=a1:a2,b1:b2 pairs values")
    p.add_argument("--seeds", type=int, default=1, help="seeds per arm (config seed, +1, ...)")
    p.add_argument("--name", default="sweep", help="experiment name: runs are NAME-ARM-sSEED, results in "
                   "HOME/experiments/NAME")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("experiment", parents=[home, overrides], help="one of the paper's open checks, as a sweep: "
                       + ", ".join(EXPERIMENTS))
    p.add_argument("name", choices=list(EXPERIMENTS), help="; ".join(f"{k}: {v[0]}" for k, v in EXPERIMENTS.items()).replace("%", "%%"))
    p.add_argument("--config", default="demo", help="YAML file or preset name (default demo)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--bases", help="initialization, headroom: comma-separated base checkpoints (or 'base')")
    p.add_argument("--bootstrap-steps", default="1000,8000", help="initialization without --bases: bootstrap "
                   "bases for these step counts (the shipped base had 10,500, in five stages)")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("bootstrap", help="rebuild the tiny base VLM from its seed")
    p.add_argument("--output", help="checkpoint folder (default: the shipped checkpoints/tiny-base)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up, then cosine)")
    p.add_argument("--init", help="continue from this checkpoint ('base' for the shipped one) instead of a fresh "
                   "model: the control that asks whether more true-answer steps still gain")
    p.add_argument("--glance-share", type=float, default=0.35, metavar="G", help="share g of the Reasoner's "
                   "examples answered at a glance (world.glance_answer) rather than reasoned (default 0.35, the "
                   "shipped base's; 0: always reasoned)")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("eval", help="score a model on a benchmark")
    p.add_argument("--model", default="base", help="checkpoint folder, or 'base' for the shipped tiny base")
    p.add_argument("--bench", default="shapes", help=f"shapes, or real benchmarks: {', '.join(ADAPTERS)} "
                   "(comma-separated)")
    p.add_argument("--limit", type=int, help="at most N items (ShapesBench: spread over the question kinds)")
    p.add_argument("--source", help="data of the benchmark: parquet file, datasets folder or hub name "
                   "(default ./data/<name>)")
    p.add_argument("--judge-url", help="OpenAI-compatible endpoint for MM-Vet's judge (key: $VISPLAY_JUDGE_API_KEY)")
    p.add_argument("--judge-model", help="judge model name (default: the endpoint's first model)")
    p.add_argument("--votes", type=int, default=0, metavar="M", help="also sample M answers per item "
                   "and report pass@1, majority-vote accuracy and token entropy (headroom = majority - greedy)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of --votes (default 1.0)")
    p.add_argument("--split", default="test", choices=["test", "validation"],
                   help="ShapesBench items: test (claims) or validation (an independent draw to choose settings on)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inspect", help="report what a corpus holds and what would be skipped, without running")
    p.add_argument("corpus", help="image folder, parquet file, datasets folder, or datasets:NAME[:SPLIT]")
    p.add_argument("--max-pixels", type=int, default=1280 * 28 * 28)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("up", parents=[home], help="start local Prefect and MLflow servers (loopback) and wait until "
                       "they answer")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--prefect-database", metavar="URL", help="Prefect's database, e.g. "
                   "postgresql://USER:PASSWORD@HOST:5432/prefect (default: SQLite under HOME; remembered by the home)")
    p.add_argument("--mlflow-database", metavar="URL", help="MLflow's backend store, e.g. "
                   "postgresql://USER:PASSWORD@HOST:5432/mlflow (default: HOME/mlflow.db; remembered by the home)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", parents=[home], help="stop the servers `visplay up` started")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("serve", parents=[home], help="serve the line's nightly deployment, named after the line, from "
                       "this process (Ctrl-C stops it)")
    p.add_argument("--cron", default="0 2 * * *", help="schedule (default 02:00 every day)")
    p.add_argument("--timezone", default=os.environ.get("TZ", "UTC"), help="IANA time zone of the schedule "
                   "(default $TZ, else UTC)")
    p.add_argument("--line", default="nightly", help="the line of evolution each run advances (default nightly)")
    p.add_argument("--config", help="YAML file or preset name of a new line (default: the line's own)")
    p.add_argument("--iterations", type=int, default=1, help="iterations each run adds (default 1)")
    p.add_argument("--notify", default="", metavar="URL", help="webhook that a failed or crashed run posts to "
                   "(JSON: the line, the flow run, its state; 'text' for a chat)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", parents=[home], help="write one self-contained HTML page of a run")
    p.add_argument("--run", default="latest", help="run name, or 'latest'")
    p.add_argument("--output", help="HTML file (default HOME/runs/RUN/report.html)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def entry() -> int:
    """The `visplay` command: ``main`` in a process of its own, which may freeze its heap (``gc.freeze``) once
    the flows are imported and again at the end: the objects Prefect, MLflow and pydantic build at import live
    as long as the process, and each full garbage collection over them (one during a run, one at exit) costs
    about 1.5 s on two cores."""
    console.FREEZE_IMPORTS = True
    try:
        return main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(entry())
