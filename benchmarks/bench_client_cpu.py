"""Client CPU per request, in one run: the LLM layer (journal off, and journal on) vs the bare openai SDK vs bare
aiohttp (the way vLLM's own benchmark client talks to a server), each sending the same chat requests at the same
concurrency to the scripted OpenAI-compatible server (a test double) running in a separate process, so that
the figure is the client's CPU alone (`time.process_time` of this process). One more row runs the layer as
`autoevol evolve` does: `--stage-items` items handed to it at once (the stage's default `max_in_flight`), the
layer's limit still `--in-flight`.

A second table isolates the stage's item scheduler (`stream_map`, no I/O: each item an asyncio sleep) at
`--stage-items` in flight, against the usual idiom it replaced, `asyncio.wait(FIRST_COMPLETED)` over every running
task in a loop, which touches every task at every call.

    python benchmarks/bench_client_cpu.py [--requests 3000] [--in-flight 64] [--stage-items 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.journal import Journal
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.types import OpenAIRole

REPO = Path(__file__).resolve().parents[1]
SERVER = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
          "from tests.support.scripted_server import ScriptedServer;"
          "server = ScriptedServer(keep_bodies=False).start(); print(server.base_url, flush=True); time.sleep(1e9)")


def message(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question number {i}"}]


async def bounded(requests: int, in_flight: int, one: Callable[[int], Awaitable[str]]) -> None:
    texts = [text async for _, text in stream_map(range(requests), one, max_in_flight=in_flight)]
    assert len(texts) == requests and all(texts)


async def layer(url: str, requests: int, in_flight: int, journal: Journal | None = None, items: int = 0) -> None:
    """`items` (when set) handed to the layer at once, as a stage does; the layer's limit is `in_flight`."""
    config = OpenAIRole(model="m", base_urls=[url], max_concurrency=in_flight)
    async with LLMPool({"evol": config}, journal) as pool:
        async def one(i: int) -> str:
            return (await pool["evol"].chat_one(message(i))).text
        await bounded(requests, items or in_flight, one)


async def layer_with_journal(url: str, requests: int, in_flight: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "calls.sqlite")
        await layer(url, requests, in_flight, journal)
        journal.close()


async def openai_sdk(url: str, requests: int, in_flight: int) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)

    async def one(i: int) -> str:
        response = await client.chat.completions.create(model="m", messages=message(i), max_tokens=64)
        return response.choices[0].message.content
    await bounded(requests, in_flight, one)
    await client.close()


async def bare_aiohttp(url: str, requests: int, in_flight: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:
        async def one(i: int) -> str:
            body = {"model": "m", "messages": message(i), "max_tokens": 64}
            async with session.post(f"{url}/chat/completions", json=body) as response:
                response.raise_for_status()
                return (await response.json())["choices"][0]["message"]["content"]
        await bounded(requests, in_flight, one)


async def wait_loop(items: range, fn: Callable[[int], Awaitable[int]], max_in_flight: int):
    """The usual idiom (stream_map's own loop before 2026-12): `asyncio.wait(FIRST_COMPLETED)` over the running
    tasks, which adds and removes a callback on every one of them at every call."""
    iterator, running = iter(items), set()
    for item in iterator:
        running.add(asyncio.ensure_future(fn(item)))
        if len(running) == max_in_flight:
            break
    while running:
        done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            yield task.result()
        for item in iterator:
            running.add(asyncio.ensure_future(fn(item)))
            if len(running) == max_in_flight:
                break


async def scheduled(scheduler, count: int, in_flight: int) -> None:
    """`count` items of a seeded random sleep (0-0.5 s), `in_flight` at once, through `scheduler`."""
    rng = random.Random(0)
    delays = [rng.random() * 0.5 for _ in range(count)]

    async def item(i: int) -> int:
        await asyncio.sleep(delays[i])
        return i
    assert len([r async for r in scheduler(range(count), item, in_flight)]) == count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--stage-items", type=int, default=1024, help="items a stage hands the layer at once")
    parser.add_argument("--items", type=int, default=20000, help="items for the scheduler's own table")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        rows = []
        load = os.getloadavg()
        in_a_stage = (f"autoevol LLM layer, {args.stage_items} items handed to it at once (a stage)",
                      lambda url, requests, in_flight: layer(url, requests, in_flight, items=args.stage_items))
        for name, client in (("autoevol LLM layer", layer), ("autoevol LLM layer, journal on", layer_with_journal),
                             in_a_stage, ("bare openai SDK", openai_sdk), ("bare aiohttp", bare_aiohttp)):
            cpu, wall = time.process_time(), time.monotonic()
            asyncio.run(client(url, args.requests, args.in_flight))
            rows.append((name, time.process_time() - cpu, time.monotonic() - wall))
    finally:
        server.terminate()
        server.wait()
    print(f"{args.requests} chat requests, {args.in_flight} in flight, scripted server in another process; "
          f"load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print("| client | CPU-s per 1,000 requests | wall (s) | vs aiohttp |")
    print("|---|---:|---:|---:|")
    floor = rows[-1][1]
    for name, cpu, wall in rows:
        print(f"| {name} | {cpu / args.requests * 1000:.2f} | {wall:.1f} | {cpu / floor:.2f} × |")
    print(f"\nThe stage's item scheduler alone: {args.items} items (a random sleep of 0-0.5 s each), "
          f"{args.stage_items} in flight")
    print("| scheduler | CPU-s per 1,000 items | wall (s) |")
    print("|---|---:|---:|")
    for name, scheduler in (("stream_map", stream_map), ("asyncio.wait(FIRST_COMPLETED) loop", wait_loop)):
        cpu, wall = time.process_time(), time.monotonic()
        asyncio.run(scheduled(scheduler, args.items, args.stage_items))
        print(f"| {name} | {(time.process_time() - cpu) / args.items * 1000:.3f} | {time.monotonic() - wall:.1f} |")


if __name__ == "__main__":
    main()
