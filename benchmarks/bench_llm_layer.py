"""LLM layer throughput vs a server's capacity, next to a batch-synchronous client, in one run.

The server is the scripted OpenAI-compatible server with a latency model: lognormal service times and a
fixed number of decoding slots (requests beyond them queue), like a vLLM server at its batch limit. Its
capacity is slots / mean service time. Utilisation is measured by the server itself: slot-seconds busy ÷
(slots × wall time). The batch-synchronous client sends `in_flight` requests, waits for all of them, then
sends the next batch: the way most evolution scripts are written, and what a long-tailed latency punishes.

    python benchmarks/bench_llm_layer.py [--requests 3000] [--slots 16] [--median 0.2] [--sigma 0.6]
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


async def streaming(url: str, requests: int, in_flight: int) -> float:
    config = OpenAIRole(model="scripted", base_urls=[url], max_concurrency=in_flight)
    async with LLMPool({"evol": config}) as pool:
        async def one(i):
            return await pool["evol"].chat_one([{"role": "user", "content": f"q{i}"}])
        start = time.monotonic()
        done = [c async for _, c in stream_map(range(requests), one, max_in_flight=in_flight * 2)]
        wall = time.monotonic() - start
    assert len(done) == requests and all(c.ok for c in done)
    return wall


async def batch_synchronous(url: str, requests: int, in_flight: int) -> float:
    config = OpenAIRole(model="scripted", base_urls=[url], max_concurrency=in_flight)
    async with LLMPool({"evol": config}) as pool:
        start = time.monotonic()
        for first in range(0, requests, in_flight):
            batch = range(first, min(first + in_flight, requests))
            out = await asyncio.gather(*[pool["evol"].chat_one([{"role": "user", "content": f"q{i}"}])
                                         for i in batch])
            assert all(c.ok for c in out)
        return time.monotonic() - start


def measure(mode, args) -> dict:
    latency = LatencyModel(median_s=args.median, sigma=args.sigma, slots=args.slots, seed=args.seed)
    with ScriptedServer(latency=latency, keep_bodies=False) as server:
        wall = asyncio.run(mode(server.base_url, args.requests, args.in_flight))
        busy = server.busy_seconds
    return {"wall_s": wall, "req_per_s": args.requests / wall, "capacity": latency.capacity(),
            "utilisation": busy / (args.slots * wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--median", type=float, default=0.2, help="median service time (s)")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma of service times")
    parser.add_argument("--in-flight", type=int, default=32, help="client requests in flight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [("autoevol stream_map", measure(streaming, args)),
            ("batch-synchronous", measure(batch_synchronous, args))]
    print(f"{args.requests} requests; server: {args.slots} slots, lognormal median {args.median}s "
          f"sigma {args.sigma}; client: {args.in_flight} in flight")
    print("| client | wall (s) | req/s | capacity (req/s) | throughput / capacity | slot utilisation |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['wall_s']:.1f} | {r['req_per_s']:.1f} | {r['capacity']:.1f} | "
              f"{r['req_per_s'] / r['capacity']:.3f} | {r['utilisation']:.3f} |")


if __name__ == "__main__":
    main()
