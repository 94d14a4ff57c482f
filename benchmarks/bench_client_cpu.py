"""Client CPU per request, in one run: the LLM layer (journal off, and journal on) vs the bare openai SDK vs bare
aiohttp (the way vLLM's own benchmark client talks to a server), each sending the same chat requests at the same
concurrency to the scripted OpenAI-compatible server (a test double) running in a separate process, so that
the figure is the client's CPU alone (`time.process_time` of this process).

    python benchmarks/bench_client_cpu.py [--requests 3000] [--in-flight 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


async def layer(url: str, requests: int, in_flight: int, journal: Journal | None = None) -> None:
    config = OpenAIRole(model="m", base_urls=[url], max_concurrency=in_flight)
    async with LLMPool({"evol": config}, journal) as pool:
        async def one(i: int) -> str:
            return (await pool["evol"].chat_one(message(i))).text
        await bounded(requests, in_flight, one)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        rows = []
        load = os.getloadavg()
        for name, client in (("autoevol LLM layer", layer), ("autoevol LLM layer, journal on", layer_with_journal),
                             ("bare openai SDK", openai_sdk), ("bare aiohttp", bare_aiohttp)):
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


if __name__ == "__main__":
    main()
