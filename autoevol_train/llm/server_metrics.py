"""The server's own queue, from vLLM's Prometheus `/metrics`, for the adaptive limit (limiter.py).

A vLLM server says how many requests it runs and how many wait (`vllm:num_requests_running`,
`vllm:num_requests_waiting`, summed over its engines): a far better signal of spare capacity than latency. The
monitor reads them from the endpoint the user configured (its base URL without `/v1`, plus `/metrics`, asked over
the endpoint's own session: the same headers and proxy as its chat requests): one
task per endpoint, started with its first request, one GET every `POLL_S` (five times as often during slow
start, which doubles the limit per poll, so a big server is filled within about a second) and only while
requests to it are in flight. An endpoint without those gauges (an API answering 404, a server of another kind) is asked once and
then never again; a poll that fails on the network is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from autoevol_train.llm.limiter import EndpointLimit

POLL_S = 0.5
POLL_TIMEOUT_S = 2.0
RUNNING, WAITING = "vllm:num_requests_running", "vllm:num_requests_waiting"


def metrics_url(base_url: str) -> str:
    """vLLM serves /metrics at the root, beside /v1."""
    return base_url.rstrip("/").removesuffix("/v1") + "/metrics"


def parse_queue(text: str) -> tuple[float, float] | None:
    """(running, waiting) summed over every sample of the two gauges, None when either is absent."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:num_requests_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in (RUNNING, WAITING):
            try:
                sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                return None
    if RUNNING not in sums or WAITING not in sums:
        return None
    return sums[RUNNING], sums[WAITING]


class QueueMonitor:
    """Feeds each endpoint's `EndpointLimit.observe_queue` from its /metrics (see the module doc). `fetches[i]`
    GETs endpoint i's /metrics: its text, None for an answer other than 200 (no gauges there); it raises
    aiohttp's errors for a failed poll. `changed` is called after each observation: requests waiting for room go
    the moment a limit grows, not at the next answer (seconds away while every request in flight is long)."""

    def __init__(self, fetches: list[Callable[[], Awaitable[str | None]]], limits: list[EndpointLimit],
                 changed: Callable[[], None]):
        self._fetches = fetches
        self._limits = limits
        self._changed = changed
        self._active = [asyncio.Event() for _ in fetches]
        self._tasks: list[asyncio.Task | None] = [None] * len(fetches)

    def wake(self, index: int) -> None:
        """A request left for endpoint `index`: poll it (from its first request on, while any is in flight)."""
        self._active[index].set()
        if self._tasks[index] is None:
            self._tasks[index] = asyncio.get_running_loop().create_task(self._poll(index))

    async def _poll(self, index: int) -> None:
        limit, active = self._limits[index], self._active[index]
        while True:
            await asyncio.sleep(POLL_S / 5 if limit.slow_start else POLL_S)  # slow start doubles per poll
            if limit.in_flight == 0:
                active.clear()
                await active.wait()
                continue
            try:
                text = await self._fetches[index]()
            except (aiohttp.ClientError, asyncio.TimeoutError, UnicodeDecodeError):
                continue  # the server is busy or restarting: the next poll will tell
            queue = parse_queue(text) if text is not None else None
            if queue is None:  # no vLLM gauges here: latency steers, and this endpoint is not asked again
                limit.stop_queue_steering()
                return
            limit.observe_queue(*queue)
            self._changed()

    async def aclose(self) -> None:
        for task in self._tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not None), return_exceptions=True)
