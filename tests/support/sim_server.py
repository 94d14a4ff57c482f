"""A test double for benchmarks: a simulated OpenAI-compatible chat server in its OWN process. NOT a model.

Why its own process: a server thread inside the benchmark's process fights the client for the GIL (and, on a
small machine, for one core), so utilisation figures would measure the simulator. This one is an asyncio
(aiohttp.web) process that only sleeps, so its cost per request is a fraction of a millisecond.

What it models, as a vLLM server looks to a client:
- `slots` decoding slots; a request beyond them waits (FIFO) for one; its service time is lognormal with mean
  `mean_s` and sigma `sigma` (seeded), but at most `max_tokens` x `TOKEN_S`: like a real server, it stops
  decoding at max_tokens, so a 1-token request (the client's preflight) is answered at once, not after a full
  service time (at 50 tokens/s the cap of a 1,024-token request, 20 s, is beyond any draw of the benchmarks);
- `max_waiting`: like a rate-limited API, a 429 (with `Retry-After: retry_after_s`) when that many already wait;
- `GET /metrics`: vLLM's Prometheus gauges `vllm:num_requests_running` / `vllm:num_requests_waiting` (the
  names of vllm/v1/metrics/loggers.py), or 404 with `--no-metrics` (an API without them);
- `GET /v1/models` lists the model `sim`;
- `GET /sim/stats`: busy slot-seconds (the service times of answered requests), counts, first and last request
  times (wall clock), the mean queue, and a timeline of running / waiting every 0.5 s, for the parent's figures.

Answers follow `bench_evolve.py`'s rule, so `autoevol evolve` runs against it: an evol prompt gets a labelled
rewrite with one more constraint, a responder prompt (system first) an answer, anything else "ok".

    python -m tests.support.sim_server --slots 64 --mean 0.5   # prints "port N" on its first line

`SimServer` starts one from a parent process: ``with SimServer(slots=64, mean_s=0.5) as s: s.base_url``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aiohttp import web

MODEL = "sim"
TOKEN_S = 0.02  # seconds per generated token, for the max_tokens cap: 50 tokens/s per sequence


def answer(messages: list[dict]) -> str:
    last = str(messages[-1].get("content", ""))
    if messages[0].get("role") == "system":
        return f"Here is a careful answer to the request ({len(last)} characters)."
    if "#Instruction#:\n" in last:
        instruction = last.rsplit("#Instruction#:\n", 1)[1]
        return ("Step 1 #Methods List#: more constraints\nStep 4 #Finally Rewritten Instruction#: "
                f"{instruction} Keep it under 200 words.")
    return "ok"


class Simulation:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.median = args.mean / math.exp(args.sigma**2 / 2)
        self.free = args.slots
        self.queue: asyncio.Queue[asyncio.Future[None]] | None = None
        self.waiting = 0
        self.stats = {"busy_s": 0.0, "answered": 0, "rate_limited": 0, "first": None, "last": None, "queue_s": 0.0}
        self._counted_at = time.monotonic()  # queue_s: the integral of the waiting count over time

    async def chat(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        now = time.time()
        self.stats["first"] = self.stats["first"] or now
        if self.args.max_waiting is not None and self.free == 0 and self.waiting >= self.args.max_waiting:
            self.stats["rate_limited"] += 1
            return web.json_response({"error": {"message": "too many requests waiting", "type": "rate_limit"}},
                                     status=429, headers={"Retry-After": str(self.args.retry_after)})
        await self._acquire()
        service = self.median * self.rng.lognormvariate(0.0, self.args.sigma)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens:
            service = min(service, TOKEN_S * max_tokens)
        try:
            await asyncio.sleep(service)
        finally:
            self._release()
        self.stats["busy_s"] += service
        self.stats["answered"] += 1
        self.stats["last"] = time.time()
        n = int(body.get("n") or 1)
        content = answer(body["messages"])
        words = len(content.split())
        return web.json_response({
            "id": f"chatcmpl-sim-{self.stats['answered']}", "object": "chat.completion", "created": int(now),
            "model": body.get("model", MODEL),
            "choices": [{"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                        for i in range(n)],
            "usage": {"prompt_tokens": 10, "completion_tokens": words * n, "total_tokens": 10 + words * n}})

    async def _acquire(self) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count_queue()
        self.waiting += 1
        assert self.queue is not None
        self.queue.put_nowait(turn)
        await turn  # the slot is handed over by _release (never cancelled: aiohttp finishes handlers)

    def _release(self) -> None:
        assert self.queue is not None
        if self.waiting:
            self._count_queue()
            self.waiting -= 1
            self.queue.get_nowait().set_result(None)  # the slot passes straight to the first waiter
        else:
            self.free += 1

    def _count_queue(self) -> None:
        now = time.monotonic()
        self.stats["queue_s"] += self.waiting * (now - self._counted_at)
        self._counted_at = now

    async def metrics(self, request: web.Request) -> web.Response:
        if self.args.no_metrics:
            raise web.HTTPNotFound()
        running = self.args.slots - self.free
        labels = f'{{engine="0",model_name="{MODEL}"}}'
        text = (f"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{labels} {float(running)}\n"
                f"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
                f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{labels} {float(self.waiting)}\n")
        return web.Response(text=text, content_type="text/plain")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def sim_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)


async def sample(simulation: Simulation) -> None:
    """stats["timeline"]: (seconds since the first request, running, waiting) every 0.5 s."""
    timeline = simulation.stats["timeline"] = []
    while True:
        await asyncio.sleep(0.5)
        if simulation.stats["first"] is not None:
            timeline.append((round(time.time() - simulation.stats["first"], 1),
                             simulation.args.slots - simulation.free, simulation.waiting))


async def serve(args: argparse.Namespace) -> None:
    simulation = Simulation(args)
    simulation.queue = asyncio.Queue()
    sampler = asyncio.ensure_future(sample(simulation))  # noqa: F841 (runs until the process ends)
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/chat/completions", simulation.chat)
    app.router.add_get("/v1/models", simulation.models)
    app.router.add_get("/metrics", simulation.metrics)
    app.router.add_get("/sim/stats", simulation.sim_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", args.port))
    await web.SockSite(runner, sock, backlog=4096).start()
    print(f"port {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()  # until the parent terminates the process


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="simulated OpenAI-compatible server (a test double)")
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--mean", type=float, required=True, help="mean service time (s)")
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--max-waiting", type=int, default=None, help="429 when this many already wait")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of those 429s (s)")
    parser.add_argument("--no-metrics", action="store_true", help="/metrics answers 404 (an API)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    return parser.parse_args(argv)


class SimServer:
    """Starts `python -m tests.support.sim_server` as a child process; `stats()` reads its counters."""

    def __init__(self, slots: int, mean_s: float, sigma: float = 0.6, max_waiting: int | None = None,
                 retry_after_s: float = 1.0, metrics: bool = True, seed: int = 0):
        self.slots = slots
        self.argv = [sys.executable, "-m", "tests.support.sim_server", "--slots", str(slots), "--mean",
                     str(mean_s), "--sigma", str(sigma), "--retry-after", str(retry_after_s), "--seed", str(seed)]
        self.argv += ["--max-waiting", str(max_waiting)] if max_waiting is not None else []
        self.argv += [] if metrics else ["--no-metrics"]
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> "SimServer":
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(self.argv, cwd=root, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONPATH": str(root)})
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"sim_server did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
        return self

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/sim/stats", timeout=10) as response:
            return json.loads(response.read())

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(serve(parse()))
