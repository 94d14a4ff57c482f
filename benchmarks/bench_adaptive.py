"""Adaptive concurrency against a rate-limited server, in one run: the AIMD limit vs the same client with
`adaptive_concurrency: false` (a fixed concurrency, exponential back-off on 429s), and a hand-tuned one.

The server is the scripted OpenAI-compatible server (a test double) with `slots` decoding slots and lognormal
service times; it answers 429 (no Retry-After, like many APIs) when more than `max_waiting` requests wait for a
slot. The client is a role with `max_concurrency` set far too high (256): the case adaptive concurrency is for.
Reported: 429s as a share of all HTTP requests, over the run and after its first `--warmup` seconds; requests
lost (none may be); slot utilisation (busy slot-seconds / (slots x wall)).

    python benchmarks/bench_adaptive.py [--requests 3000] [--slots 16] [--max-waiting 16] [--median 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.types import OpenAIRole

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripted server is a test double: tests/support
from tests.support.scripted_server import LatencyModel, ScriptedServer  # noqa: E402


async def run(server: ScriptedServer, requests: int, ceiling: int, adaptive: bool, warmup_s: float) -> dict:
    config = OpenAIRole(model="scripted", base_urls=[server.base_url], max_concurrency=ceiling,
                        adaptive_concurrency=adaptive)
    snapshot: dict[str, int] = {}

    async def after_warmup() -> None:
        await asyncio.sleep(warmup_s)
        snapshot.update(requests=server.counters.requests, rate_limited=server.counters.rate_limited)

    async with LLMPool({"evol": config}) as pool:
        watcher = asyncio.ensure_future(after_warmup())
        start = time.monotonic()
        done = [c async for _, c in stream_map(
            range(requests), lambda i: pool["evol"].chat_one([{"role": "user", "content": f"q{i}"}]),
            max_in_flight=2 * ceiling)]
        wall = time.monotonic() - start
        watcher.cancel()
        final_limit = pool["evol"]._backend.limits[0].limit
    total = server.counters.requests + server.counters.rate_limited
    late_ok = server.counters.requests - snapshot.get("requests", server.counters.requests)
    late_429 = server.counters.rate_limited - snapshot.get("rate_limited", server.counters.rate_limited)
    return {"wall": wall, "lost": sum(not c.ok for c in done), "share_429": server.counters.rate_limited / total,
            "late_share_429": late_429 / max(late_ok + late_429, 1), "busy": server.busy_seconds,
            "limit": final_limit}


def measure(args, ceiling: int, adaptive: bool) -> dict:
    latency = LatencyModel(median_s=args.median, sigma=args.sigma, slots=args.slots, seed=args.seed,
                           max_waiting=args.max_waiting)
    with ScriptedServer(latency=latency, keep_bodies=False) as server:
        result = asyncio.run(run(server, args.requests, ceiling, adaptive, args.warmup))
    result["utilisation"] = result["busy"] / (args.slots * result["wall"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--max-waiting", type=int, default=16, help="429 beyond this many waiting")
    parser.add_argument("--median", type=float, default=0.2, help="median service time (s)")
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--ceiling", type=int, default=256, help="the role's max_concurrency (too high)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the 'after warm-up' share")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tuned = args.slots + args.max_waiting
    rows = [(f"adaptive, max_concurrency {args.ceiling}", measure(args, args.ceiling, adaptive=True)),
            (f"fixed, max_concurrency {args.ceiling}", measure(args, args.ceiling, adaptive=False)),
            (f"fixed, hand-tuned {tuned}", measure(args, tuned, adaptive=False))]
    print(f"{args.requests} requests; server: {args.slots} slots, 429 beyond {args.max_waiting} waiting, "
          f"lognormal median {args.median}s sigma {args.sigma}")
    print(f"| client (fixed = adaptive_concurrency: false) | wall (s) | 429s / requests | after {args.warmup:.0f} s | lost | final limit | "
          "slot utilisation |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['wall']:.1f} | {r['share_429']:.3f} | {r['late_share_429']:.3f} | {r['lost']} | "
              f"{r['limit']:.0f} | {r['utilisation']:.3f} |")


if __name__ == "__main__":
    main()
