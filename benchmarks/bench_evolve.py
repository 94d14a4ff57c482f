"""Dataset evolution throughput: streaming (`autoevol evolve`) vs batch-synchronous, same work, one run.

Work: `--seeds` seeds × `--rounds` rounds; every round of every item is one evol call (initial method) and
one responder call, so 2 × seeds × rounds requests. The server is the scripted OpenAI-compatible server with
a latency model (lognormal service times, a fixed number of decoding slots; requests beyond them queue), whose
capacity is slots / mean service time: the ceiling any client can reach.

- streaming: the evolve stage's own LLM phase (`evolve_shard`: stream_map over items, each item runs its
  rounds back to back, parts store and journal written as in a real run);
- batch-synchronous: the same `ItemEvolver` driven the way most evolution scripts are written: round 1 for a
  batch of items, wait for the whole batch, next batch, ... then round 2 for everyone, and so on.

Utilisation = achieved requests/s ÷ capacity (the brief's figure); the server's own slot-busy fraction is
printed beside it. The openai client on a small machine tops out near 200 req/s, so the default capacity
(16 slots × 0.11 s mean ≈ 142 req/s) stays well below that.

    python benchmarks/bench_evolve.py [--seeds 2000] [--rounds 3] [--slots 16] [--median 0.1] [--sigma 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from autoevol_train.evol.evolve import EvolveConfig, ItemEvolver, evolve_shard
from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.journal import Journal
from autoevol_train.stage import StageRun

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripted server is a test double: tests/support
from tests.support.scripted_server import LatencyModel, ScriptedServer  # noqa: E402


def rule(body: dict, index: int) -> str:
    """Evol prompts get a labelled answer with one more constraint; responder prompts (system first) an answer."""
    messages = body["messages"]
    last = messages[-1]["content"]
    if messages[0]["role"] == "system":
        return f"Here is a careful answer to the request ({len(last)} characters)."
    instruction = last.rsplit("#Instruction#:\n", 1)[1]
    return f"Step 1 #Methods List#: more constraints\nStep 4 #Finally Rewritten Instruction#: {instruction} " \
           "Keep it under 200 words."


def make_config(seeds: Path, url: str, args: argparse.Namespace) -> EvolveConfig:
    return EvolveConfig.model_validate({
        "seeds": {"path": str(seeds)}, "domain": "chat", "method": "initial", "rounds": args.rounds,
        "max_in_flight": args.in_flight, "decontam": {"enabled": False},
        "llm": {"evol": {"model": "scripted", "base_urls": [url], "max_concurrency": args.in_flight}},
    })


def streaming(config: EvolveConfig, out: Path) -> tuple[float, int]:
    with StageRun(out, "evolve", config) as stage:
        start = time.monotonic()
        summary, _ = asyncio.run(evolve_shard(config, stage))
        wall = time.monotonic() - start
    assert summary["rejected"] == 0, summary
    return wall, summary["rows"]


async def _batch_synchronous(config: EvolveConfig, seeds: list[dict], journal_path: Path) -> int:
    journal = Journal(journal_path)
    rows = 0
    async with LLMPool({"evol": config.llm.evol, "responder": config.llm.evol}, journal) as pool:
        evolver = ItemEvolver(config, pool["evol"], pool["responder"])
        current = {index: seed["messages"] for index, seed in enumerate(seeds)}
        for round_number in range(1, config.rounds + 1):
            indices = sorted(current)
            for first in range(0, len(indices), config.max_in_flight):
                batch = indices[first:first + config.max_in_flight]
                results = await asyncio.gather(*[evolver.evolve_round(seeds[i], i, round_number, current[i])
                                                  for i in batch])
                for index, (row, reject) in zip(batch, results):
                    assert reject is None, reject
                    current[index] = row["messages"]
                    rows += 1
    journal.close()
    return rows


def batch_synchronous(config: EvolveConfig, seeds: list[dict], out: Path) -> tuple[float, int]:
    start = time.monotonic()
    rows = asyncio.run(_batch_synchronous(config, seeds, out / "calls.sqlite"))
    return time.monotonic() - start, rows


def measure(mode: str, args: argparse.Namespace, seeds_path: Path, seeds: list[dict], out: Path) -> dict:
    latency = LatencyModel(median_s=args.median, sigma=args.sigma, slots=args.slots, seed=args.seed)
    with ScriptedServer(rule, latency=latency, keep_bodies=False) as server:
        config = make_config(seeds_path, server.base_url, args)
        out.mkdir(parents=True)
        wall, rows = streaming(config, out) if mode == "streaming" else batch_synchronous(config, seeds, out)
        requests, busy = server.counters.requests, server.busy_seconds
    return {"wall_s": wall, "rows": rows, "requests": requests, "req_per_s": requests / wall,
            "capacity": latency.capacity(), "utilisation": requests / wall / latency.capacity(),
            "slot_busy": busy / (args.slots * wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--median", type=float, default=0.1, help="median service time (s)")
    parser.add_argument("--sigma", type=float, default=0.5, help="lognormal sigma of service times")
    parser.add_argument("--in-flight", type=int, default=64, help="items (streaming) / batch size (batch-sync)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds_path = Path(tmp) / "seeds.jsonl"
        seeds = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"Write a short note about topic {i}."}]}
                 for i in range(args.seeds)]
        seeds_path.write_text("".join(json.dumps({"instruction": s["messages"][0]["content"]}) + "\n"
                                      for s in seeds))
        seeds = [{**s, "id": f"seeds-{i + 1}", "source": "seeds.jsonl"} for i, s in enumerate(seeds)]
        results = {mode: measure(mode, args, seeds_path, seeds, Path(tmp) / mode)
                   for mode in ("streaming", "batch-synchronous")}
    capacity = results["streaming"]["capacity"]
    print(f"{args.seeds} seeds × {args.rounds} rounds, evol + responder call per round "
          f"({2 * args.seeds * args.rounds} requests); server: {args.slots} slots, lognormal median {args.median}s "
          f"sigma {args.sigma}, capacity {capacity:.1f} req/s; {args.in_flight} items in flight / per batch")
    print("| evolution | wall (s) | rows | requests | req/s | utilisation (req/s ÷ capacity) | slot busy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['wall_s']:.1f} | {r['rows']} | {r['requests']} | {r['req_per_s']:.1f} | "
              f"{r['utilisation']:.3f} | {r['slot_busy']:.3f} |")


if __name__ == "__main__":
    main()
