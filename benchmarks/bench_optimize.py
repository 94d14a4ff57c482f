"""One optimisation step against its critical path: how close the step's wall time comes to the chain of
calls no parallelism can shorten.

Every call to the scripted server takes `--latency` seconds (no slot limit), so the step's critical path is
known: `trajectory_rounds` evolutions → the analyses (one request, n = m) → the rewrites → one dev evolution →
one answer. A serial loop would pay for every call; the table prints the step's calls, its wall time per
phase, the critical path and the serial time, from one run.

    python benchmarks/bench_optimize.py [--latency 0.25] [--candidates 5] [--dev-size 16] [--batch-size 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from autoevol_train.evol.optimize import OptimizeConfig, run_optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripted server is a test double: tests/support
from tests.support.scripted_server import LatencyModel, ScriptedServer  # noqa: E402

ROUNDS = 2


def rule(body: dict, index: int) -> str:
    """The evol LLM appends a constraint; answers are plain; the optimizer returns the method plus one line."""
    content = body["messages"][-1]["content"]
    if body["model"] == "optimizer":
        if len(body["messages"]) == 1:
            return f"Analysis {index}: the rewrites add too little."
        method = content.split("```Current Method\n", 1)[1].split("\n```", 1)[0]
        return f"```Optimized Method\n{method}\nAdd one more constraint.\n#Instruction#:\n```"
    if "#Instruction#:\n" not in content:
        return "Step 1: read the problem. Step 2: solve it. The answer is 7."
    instruction = content.rsplit("#Instruction#:\n", 1)[1]
    return f"Step 1 #Methods List#: add units\nStep 4 #Finally Rewritten Instruction#: {instruction} Give units."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--dev-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(rule, latency=LatencyModel(args.latency)) as server:
        seeds, pool_size = Path(tmp) / "seeds.jsonl", args.dev_size + 4 * args.batch_size
        seeds.write_text("".join(json.dumps({"instruction": f"A farmer has {i} sheep and buys {i + 3} more. "
                                                            "How many sheep does he have?"}) + "\n"
                                 for i in range(pool_size)))
        config = OptimizeConfig.model_validate({
            "seeds": {"path": str(seeds)}, "steps": 1, "candidates": args.candidates, "dev_size": args.dev_size,
            "batch_size": args.batch_size, "pool_size": pool_size,
            "trajectory_rounds": ROUNDS,
            "llm": {"evol": {"model": "evol", "base_urls": [server.base_url], "max_concurrency": 256},
                    "optimizer": {"model": "optimizer", "base_urls": [server.base_url]}},
        })
        run_optimize(config, Path(tmp) / "run")
        step = [json.loads(line) for line in (Path(tmp) / "run" / "history.jsonl").read_text().splitlines()][0]
        calls = server.counters.requests

    critical = (ROUNDS + 1 + 1 + 2) * args.latency
    print("| calls | trajectory s | optimizer s | dev s | step wall s | critical path s | serial s | wall / critical |")
    print("|---|---|---|---|---|---|---|---|")
    phases = step["phase_s"]
    print(f"| {calls} | {phases['trajectory']:.2f} | {phases['optimizer']:.2f} | {phases['dev']:.2f} | "
          f"{step['wall_s']:.2f} | {critical:.2f} | {calls * args.latency:.1f} | {step['wall_s'] / critical:.2f} |")


if __name__ == "__main__":
    main()
