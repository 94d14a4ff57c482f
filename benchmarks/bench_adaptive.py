"""Adaptive concurrency with default settings (no `max_concurrency` given) against simulated servers, each row
beside a hand-tuned fixed concurrency measured in the same run: issue #16's must-show rows.

Work per row: the real `autoevol evolve` command as a subprocess (`--seeds` seeds x `--rounds` rounds, the
initial method, answers on, filters off: an evol and a responder request per item and round, so 12,000 requests
at the defaults). The servers are tests/support/sim_server.py (a test double, each in its own process: slots,
lognormal service times sigma 0.6, vLLM's /metrics gauges unless the row models an API). Rows:

- 16, 64 and 256 slots (mean service time 0.125 / 0.5 / 2 s: 128 requests/s each, which this machine's client
  can drive); the 64-slot row is also the issue's "mean 0.5 s, end to end >= 0.95" row;
- 64 slots without /metrics: the latency path of the limiter;
- an API: 16 slots at 0.125 s, 429 (Retry-After 1 s) when 16 already wait, no /metrics;
- two endpoints of 16 and 128 slots at 1 s behind one role.

Reported per row, default / hand-tuned: end-to-end slot utilisation = busy slot-seconds / (slots x the command's
wall time, start-up and finish included); active = the same over the servers' first-to-last request; the
server's mean queue; 429s as a share of HTTP requests after the first `--warmup` seconds; rows lost (dataset
rows short of seeds x rounds). The hand-tuned reference is a fixed `max_concurrency` of 1.5 x the slots
(`adaptive_concurrency: false`), not a sweep. The load average is printed per row: the machine is shared.

"Ideal" is what no client can beat on that server: the same work (each item's requests one after another, at
most `max_in_flight` items at once, as the stage runs them) replayed in a discrete-event simulation with the
server's service-time distribution, by a client with no start-up, no finish and no overhead that keeps every
slot busy while any request is ready; mean and worst of `IDEAL_DRAWS` draws. With lognormal service times the
last requests of a run finish one by one (the slowest of 12,000 draws at mean 2 s takes ~15 s), so even that
client leaves slots idle at the end: the gap between a row and its ideal is what the client loses.

    python benchmarks/bench_adaptive.py [--seeds 2000] [--rounds 3] [--rows 16,64,256,64-latency,429,16+128]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the simulated server is a test double: tests/support
from tests.support.sim_server import SimServer  # noqa: E402

# name → servers as (slots, mean service time s, max_waiting, /metrics)
ROWS: dict[str, list[tuple[int, float, int | None, bool]]] = {
    "16": [(16, 0.125, None, True)],
    "64": [(64, 0.5, None, True)],
    "256": [(256, 2.0, None, True)],
    "64-latency": [(64, 0.5, None, False)],
    "429": [(16, 0.125, 16, False)],
    "16+128": [(16, 1.0, None, True), (128, 1.0, None, True)],
}
LABELS = {"16": "16 slots, mean 0.125 s", "64": "64 slots, mean 0.5 s", "256": "256 slots, mean 2 s",
          "64-latency": "64 slots, mean 0.5 s, no /metrics", "429": "API: 16 slots, 0.125 s, 429 beyond 16 waiting",
          "16+128": "two endpoints, 16 + 128 slots, mean 1 s"}


IDEAL_DRAWS = 10
SIGMA = 0.6  # SimServer's default
MAX_IN_FLIGHT = 1024  # the evolve stage's default: items at once


def ideal_utilisation(slots: int, mean_s: float, seeds: int, rounds: int, seed: int) -> float:
    """Slot utilisation of one simulated zero-overhead run (see the module doc): items of `2 * rounds` chained
    requests, at most MAX_IN_FLIGHT items at once, ready requests served first come first on `slots` slots."""
    rng = random.Random(seed)
    mu = math.log(mean_s) - SIGMA**2 / 2
    left = [2 * rounds] * seeds  # requests each item has still to make
    ready = list(range(min(seeds, MAX_IN_FLIGHT)))  # items whose next request waits for a slot, in order
    admitted, head, busy, now = len(ready), 0, 0.0, 0.0
    running: list[tuple[float, int]] = []  # (finish time, item)
    while head < len(ready) or running:
        while len(running) < slots and head < len(ready):
            service = rng.lognormvariate(mu, SIGMA)
            busy += service
            heapq.heappush(running, (now + service, ready[head]))
            head += 1
        now, item = heapq.heappop(running)
        left[item] -= 1
        if left[item]:
            ready.append(item)
        elif admitted < seeds:
            ready.append(admitted)
            admitted += 1
    return busy / (slots * now)


def write_config(directory: Path, seeds: Path, urls: list[str], rounds: int, fixed: int | None) -> Path:
    evol: dict = {"model": "sim", "base_urls": urls}
    if fixed is not None:
        evol |= {"max_concurrency": fixed, "adaptive_concurrency": False}
    config = {"seeds": {"path": str(seeds)}, "domain": "chat", "method": "initial", "rounds": rounds,
              "decontam": {"enabled": False}, "dedup": {"exact": False, "near": False},
              "failures": {"elimination": False}, "llm": {"evol": evol}}
    path = directory / "evolve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_row(servers_spec: list[tuple[int, float, int | None, bool]], seeds: Path, args: argparse.Namespace,
            fixed: int | None, workdir: Path) -> dict:
    workdir.mkdir(parents=True)
    with ExitStack() as stack:
        servers = [stack.enter_context(SimServer(slots, mean, max_waiting=waiting, metrics=metrics, seed=i))
                   for i, (slots, mean, waiting, metrics) in enumerate(servers_spec)]
        config = write_config(workdir, seeds, [s.base_url for s in servers], args.rounds, fixed)
        early: list[dict] = []
        start = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "autoevol_train.cli", "evolve", str(config),
                                    "--output-dir", str(workdir / "run")], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        timer = threading.Timer(args.warmup, lambda: early.extend(s.stats() for s in servers))
        timer.start()
        out, err = process.communicate()
        wall = time.monotonic() - start
        timer.cancel()
        if process.returncode != 0:
            raise RuntimeError(f"autoevol evolve exited {process.returncode}: {err[-2000:]}")
        stats = [s.stats() for s in servers]
    early = early or [{"answered": 0, "rate_limited": 0}] * len(stats)
    slots = sum(spec[0] for spec in servers_spec)
    busy = sum(s["busy_s"] for s in stats)
    first, last = min(s["first"] for s in stats), max(s["last"] for s in stats)
    late_ok = sum(s["answered"] - e["answered"] for s, e in zip(stats, early))
    late_429 = sum(s["rate_limited"] - e["rate_limited"] for s, e in zip(stats, early))
    dataset = json.loads((Path(out.strip().splitlines()[-1]) / "stats.json").read_text())
    lost = args.seeds * args.rounds - sum(dataset["rows"].values())
    return {"wall": wall, "utilisation": busy / (slots * wall), "active": busy / (slots * (last - first)),
            "queue": sum(s["queue_s"] for s in stats) / (last - first),
            "late_429": late_429 / max(late_ok + late_429, 1),
            "requests": sum(s["answered"] for s in stats), "lost": lost, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the late-429 share counts")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--no-reference", action="store_true", help="default settings only (while tuning)")
    args = parser.parse_args()
    print(f"`autoevol evolve`, {args.seeds} seeds x {args.rounds} rounds ({2 * args.seeds * args.rounds} requests); "
          f"default settings vs a fixed max_concurrency of 1.5 x slots; load average at start "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"| server | requests | default: wall s, end to end, active, mean queue, 429s after {args.warmup:.0f} s, rows lost "
          f"| hand-tuned: wall s, end to end, active | default ÷ hand-tuned | ideal: mean, worst of {IDEAL_DRAWS} "
          "| default ÷ ideal mean | load |")
    print("|---|---:|---|---|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"instruction": f"Write a short note about topic {i}."}) + "\n"
                                 for i in range(args.seeds)))
        for name in args.rows.split(","):
            spec = ROWS[name]
            slots = sum(s[0] for s in spec)
            ideal = [ideal_utilisation(slots, spec[0][1], args.seeds, args.rounds, seed) for seed in range(IDEAL_DRAWS)]
            ideal_mean = sum(ideal) / len(ideal)
            ideal_cells = f"{ideal_mean:.3f}, {min(ideal):.3f}"
            r = run_row(spec, seeds, args, None, Path(tmp) / name / "default")
            line = (f"| {LABELS[name]} | {r['requests']} | {r['wall']:.1f}, **{r['utilisation']:.3f}**, "
                    f"{r['active']:.3f}, {r['queue']:.1f}, {100 * r['late_429']:.2f} %, lost {r['lost']}")
            of_ideal = f"{r['utilisation'] / ideal_mean:.3f}"
            if args.no_reference:
                print(f"{line} | | | {ideal_cells} | {of_ideal} | {r['load']:.2f} |", flush=True)
                continue
            t = run_row(spec, seeds, args, round(1.5 * slots), Path(tmp) / name / "fixed")
            print(f"{line} | {t['wall']:.1f}, {t['utilisation']:.3f}, {t['active']:.3f} | "
                  f"{r['utilisation'] / t['utilisation']:.3f} | {ideal_cells} | {of_ideal} | "
                  f"{r['load']:.2f}, {t['load']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
