"""Several `results.json` side by side: one Markdown table, a column per arm (seed / Evol-Instruct / Auto
Evol-Instruct...) and one per arm's standard error, a row per benchmark metric; then, for each pair of arms,
the difference on each metric with a paired bootstrap interval (`uncertainty.py`); and the protocols
underneath, flagged where the arms differ (numbers measured under different protocols do not compare).

    python -m autoevol_train.eval.compare runs/seed/eval runs/evol/eval runs/auto/eval --labels seed evol auto
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from autoevol_train.config import InputError
from autoevol_train.eval.records import benchmark_label
from autoevol_train.eval.run import format_value
from autoevol_train.eval.uncertainty import LEVEL, RESAMPLES, arm_differences

__all__ = ["load_results", "compare_results", "main"]

_COUNTS = {"n", "samples", "failed_requests", "no_verdict", "ties", "unparsed_judgements"}


def load_results(path: str | Path) -> dict[str, Any]:
    """A results.json, given as the file or the eval run directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such results file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(results, dict) or not isinstance(results.get("benchmarks"), dict):
        raise InputError(f"{path}: not an `autoevol eval` results.json (no 'benchmarks' mapping)")
    return results


def compare_results(arms: dict[str, dict[str, Any]]) -> str:
    """Markdown comparing the arms' results (label → loaded results.json)."""
    labels = list(arms)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    errors: dict[tuple[str, str], dict[str, Any]] = {}
    for label, results in arms.items():
        for bench, block in results["benchmarks"].items():
            bench = benchmark_label(bench, block)  # the caveat of any arm's numbers shows in the row's name
            for metric, value in block["metrics"].items():
                if metric not in _COUNTS:
                    rows.setdefault((bench, metric), {})[label] = value
                    errors.setdefault((bench, metric), {})[label] = block.get("stderr", {}).get(metric, "-")
    lines = ["| benchmark | metric | " + " | ".join(labels) + " | " + " | ".join(f"s.e. {l}" for l in labels) + " |",
             "|---|---|" + "---:|" * 2 * len(labels)]
    lines += [f"| {bench} | {metric} | " + " | ".join(format_value(values.get(label, "-")) for label in labels)
              + " | " + " | ".join(format_value(errors[(bench, metric)].get(label, "-")) for label in labels) + " |"
              for (bench, metric), values in rows.items()]
    lines += ["", "Models: " + "; ".join(f"{label}: `{arms[label]['model']}`" for label in labels), ""]
    differences = arm_differences(arms)
    if differences:
        lines += [f"Differences between arms (second − first), paired over the items both answered: mean and "
                  f"{LEVEL:.0%} bootstrap interval ({RESAMPLES:,} resamples, seed 0); * = the interval excludes 0.",
                  "", "| benchmark | metric | arms | items | difference | interval |", "|---|---|---|---:|---:|---|"]
        lines += [f"| {d.benchmark} | {d.metric} | {d.second} − {d.first} | {d.items} | {d.difference:+.2f} | "
                  f"[{d.low:+.2f}, {d.high:+.2f}]{' *' if d.excludes_zero else ''} |" for d in differences]
        lines.append("")
    benches = list(dict.fromkeys(b for results in arms.values() for b in results["benchmarks"]))
    for bench in benches:
        protocols = {label: arms[label]["benchmarks"][bench]["protocol"] for label in labels
                     if bench in arms[label]["benchmarks"]}
        distinct = {json.dumps(p, sort_keys=True) for p in protocols.values()}
        if len(distinct) == 1:
            protocol = next(iter(protocols.values()))
            lines.append(f"- **{bench}** (same protocol): " + "; ".join(f"{k}: {v}" for k, v in protocol.items()))
        else:
            lines.append(f"- **{bench}**: PROTOCOLS DIFFER, the numbers do not compare:")
            lines += [f"  - {label}: " + "; ".join(f"{k}: {v}" for k, v in p.items()) for label, p in protocols.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoevol compare", description="Put several eval results side by side.")
    parser.add_argument("results", nargs="+", type=Path, help="results.json files or eval run directories")
    parser.add_argument("--labels", nargs="+", help="one column label per result (default: each run's name)")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        loaded = [load_results(path) for path in args.results]
        if args.labels and len(args.labels) != len(loaded):
            raise InputError(f"--labels: {len(args.labels)} labels for {len(loaded)} results")
        labels = args.labels or [results.get("name") or str(path) for results, path in zip(loaded, args.results)]
        if len(set(labels)) != len(labels):
            raise InputError(f"labels must be unique, got {labels}; pass --labels")
    except InputError as exc:
        print(f"autoevol compare: error: {exc}", file=sys.stderr)
        return 2
    table = compare_results(dict(zip(labels, loaded)))
    if args.output:
        args.output.write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
