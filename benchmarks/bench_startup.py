"""Start-up and finish of `autoevol evolve` as a share of the run: the command in its own process, default
settings (no concurrency given), against the scripted OpenAI-compatible server (a test double) running in
this process with a latency model (lognormal service times, a fixed number of slots).

- start-up: from just before the command is started to the arrival of its first request at the server (the
  endpoint preflight's), and to its first evolution request;
- finish: from the server's last answer to the command's exit (parquet, rejects, statistics, card, plot);
- the run: from the start to the exit. Utilisation = busy slot-seconds ÷ (slots × wall), over the whole command.

    python benchmarks/bench_startup.py [--seeds 2000] [--rounds 3] [--slots 64] [--mean 0.5] [--sigma 0.6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the scripted server is a test double: tests/support
from benchmarks.bench_evolve import rule as evolve_rule  # noqa: E402
from tests.support.scripted_server import LatencyModel, ScriptedServer  # noqa: E402


def rule(body: dict, index: int) -> str:
    """bench_evolve's answers, and one for the endpoint preflight's 1-token chat."""
    return "Hello" if body["messages"][-1]["content"] == "Hi" else evolve_rule(body, index)


class TimedServer(ScriptedServer):
    """The scripted server, noting when the first request and the first evolution request arrive (wall clock)
    and when the last answer was made."""

    first_request: float | None = None
    first_work: float | None = None
    last_answer: float = 0.0

    def _handle(self, body: dict[str, Any]) -> tuple[int | None, bytes]:
        now = time.time()
        self.first_request = self.first_request or now
        if self.first_work is None and body["messages"][-1]["content"] != "Hi":  # not the preflight's chat
            self.first_work = now
        try:
            return super()._handle(body)
        finally:
            self.last_answer = time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--mean", type=float, default=0.5, help="mean service time (s)")
    parser.add_argument("--sigma", type=float, default=0.6)
    args = parser.parse_args()
    latency = LatencyModel(median_s=args.mean / math.exp(args.sigma ** 2 / 2), sigma=args.sigma, slots=args.slots)
    with tempfile.TemporaryDirectory() as tmp, TimedServer(rule, latency=latency, keep_bodies=False) as server:
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"instruction": f"Write a short note about topic {i}."}) + "\n"
                                 for i in range(args.seeds)))
        config = Path(tmp) / "evolve.yaml"
        config.write_text(yaml.safe_dump({
            "seeds": {"path": str(seeds)}, "domain": "chat", "method": "initial", "rounds": args.rounds,
            "decontam": {"enabled": False}, "dedup": {"exact": False, "near": False},  # filters off
            "llm": {"evol": {"model": "scripted", "base_urls": [server.base_url]}},
        }))
        load = os.getloadavg()
        start = time.time()
        command = subprocess.run([sys.executable, "-m", "autoevol_train.cli", "evolve", str(config), "--output-dir",
                                  str(Path(tmp) / "run")], cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        end = time.time()
        if command.returncode != 0:
            sys.exit(f"autoevol evolve failed ({command.returncode}): {command.stderr[-2000:]}")
        rows = len(json.loads((Path(tmp) / "run" / "dataset" / "stats.json").read_text())["statistics"])
    wall = end - start
    startup, first_work, finish = server.first_request - start, server.first_work - start, end - server.last_answer
    print(f"`autoevol evolve`, {args.seeds} seeds × {args.rounds} rounds ({server.counters.requests} requests, "
          f"{rows} statistics sets), default settings; server: {args.slots} slots, mean {args.mean} s, "
          f"sigma {args.sigma} (capacity {latency.capacity():.0f} req/s); load average before {load[0]:.1f}, "
          f"after {os.getloadavg()[0]:.1f}")
    print("| run (s) | start → first request (s) | start → first evolution request (s) | last answer → exit (s) | "
          "start-up + finish, share of the run | utilisation end to end |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {wall:.1f} | {startup:.2f} | {first_work:.2f} | {finish:.2f} | {(first_work + finish) / wall:.1%} | "
          f"{server.busy_seconds / (args.slots * wall):.3f} |")


if __name__ == "__main__":
    main()
