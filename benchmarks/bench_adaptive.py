"""Adaptive concurrency with default settings (no `max_concurrency` given), in one run, against simulated
servers of different capacity: 16, 64 and 256 slots (mean service time chosen so each serves 128 requests/s,
which this machine's client can drive); a server that answers 429 when more than 16 requests wait for its 16
slots; and two endpoints of 16 and 128 slots behind one role.

The servers are the scripted OpenAI-compatible server (a test double) with `slots` decoding slots and lognormal
service times (sigma 0.6). Reported per row: slot utilisation over the whole run (busy slot-seconds /
(slots x wall), start and drain included), the limit each endpoint ends at, 429s as a share of HTTP requests
over the run and after its first `--warmup` seconds, requests lost (none may be).

    python benchmarks/bench_adaptive.py [--requests 6000] [--warmup 10]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.types import OpenAIRole

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripted server is a test double: tests/support
from tests.support.scripted_server import LatencyModel, ScriptedServer  # noqa: E402

SIGMA = 0.6


def server_model(slots: int, mean_s: float, max_waiting: int | None = None, seed: int = 0) -> LatencyModel:
    return LatencyModel(median_s=mean_s / math.exp(SIGMA**2 / 2), sigma=SIGMA, slots=slots, seed=seed,
                        max_waiting=max_waiting)


async def drive(servers: list[ScriptedServer], requests: int, warmup_s: float, fixed: int | None) -> dict:
    config = OpenAIRole(model="scripted", base_urls=[s.base_url for s in servers], preflight="off")
    if fixed is not None:
        config = config.model_copy(update={"max_concurrency": fixed, "adaptive_concurrency": False})
    snapshot: dict[str, int] = {}

    def counts() -> tuple[int, int]:
        return (sum(s.counters.requests for s in servers), sum(s.counters.rate_limited for s in servers))

    async def after_warmup() -> None:
        await asyncio.sleep(warmup_s)
        snapshot["requests"], snapshot["rate_limited"] = counts()

    async with LLMPool({"evol": config}) as pool:
        watcher = asyncio.ensure_future(after_warmup())
        start = time.monotonic()
        done = [c async for _, c in stream_map(
            range(requests), lambda i: pool["evol"].chat_one([{"role": "user", "content": f"q{i}"}]),
            max_in_flight=2048)]
        wall = time.monotonic() - start
        watcher.cancel()
        limits = [limit.limit for limit in pool["evol"]._backend.limits]
    ok, rate_limited = counts()
    late_ok = ok - snapshot.get("requests", ok)
    late_429 = rate_limited - snapshot.get("rate_limited", rate_limited)
    return {"wall": wall, "lost": sum(not c.ok for c in done), "share_429": rate_limited / (ok + rate_limited),
            "late_share_429": late_429 / max(late_ok + late_429, 1), "limits": limits}


def measure(models: list[LatencyModel], requests: int, warmup_s: float, fixed: int | None = None) -> dict:
    with ExitStack() as stack:
        servers = [stack.enter_context(ScriptedServer(latency=m, keep_bodies=False)) for m in models]
        result = asyncio.run(drive(servers, requests, warmup_s, fixed))
        busy = sum(s.busy_seconds for s in servers)
    result["utilisation"] = busy / (sum(m.slots for m in models) * result["wall"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the 'after warm-up' share")
    args = parser.parse_args()
    scenarios = [
        ("16 slots, mean 0.125 s", [server_model(16, 0.125)]),
        ("64 slots, mean 0.5 s", [server_model(64, 0.5)]),
        ("256 slots, mean 2 s", [server_model(256, 2.0)]),
        ("16 slots, mean 0.24 s, 429 beyond 16 waiting", [server_model(16, 0.24, max_waiting=16)]),
        ("two endpoints: 16 + 128 slots, mean 1 s", [server_model(16, 1.0), server_model(128, 1.0, seed=1)]),
    ]
    print(f"{args.requests} requests per row; default settings (adaptive, max_concurrency 1024), then, as the "
          f"reference on the same machine right after, a hand-tuned fixed concurrency of 1.5 x the slots "
          f"(adaptive_concurrency: false); lognormal service times, sigma {SIGMA}")
    print(f"| server | wall (s) | slot utilisation | final limit(s) | 429s / requests | after {args.warmup:.0f} s "
          "| lost | hand-tuned: wall, utilisation | default ÷ hand-tuned |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, models in scenarios:
        r = measure(models, args.requests, args.warmup)
        tuned = measure(models, args.requests, args.warmup, fixed=round(1.5 * sum(m.slots for m in models)))
        limits = " + ".join(f"{limit:.0f}" for limit in r["limits"])
        print(f"| {name} | {r['wall']:.1f} | {r['utilisation']:.3f} | {limits} | {r['share_429']:.3f} | "
              f"{r['late_share_429']:.3f} | {r['lost']} | {tuned['wall']:.1f}, {tuned['utilisation']:.3f} | "
              f"{r['utilisation'] / tuned['utilisation']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
