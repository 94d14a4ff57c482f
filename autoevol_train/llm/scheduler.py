"""Item-level streaming: keep a bounded number of items in flight, no barrier between them.

A stage describes what happens to one item (evolve it, answer it, evolve it again...) as a coroutine; this
runs those coroutines over an iterable of items, starting a new one as soon as any finishes, and yields the
results in completion order. An item's round 2 therefore starts the moment its round 1 is back, however slow
the other items are, and the servers behind the LLM clients stay saturated. The items iterable is consumed
lazily, so memory stays bounded by `max_in_flight` whatever the dataset size.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def stream_map(items: Iterable[T], fn: Callable[[T], Awaitable[R]], max_in_flight: int
                     ) -> AsyncIterator[tuple[T, R]]:
    """Yield ``(item, await fn(item))`` in completion order with at most `max_in_flight` items running.

    An exception raised by `fn` is a bug in the stage, not an LLM failure (those come back as labelled
    completions): it cancels the items still running and propagates.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    iterator = iter(items)
    running: dict[asyncio.Task, T] = {}
    # Each task puts itself here when done: O(1) per item. `asyncio.wait(running, FIRST_COMPLETED)` instead adds
    # and removes a callback on every running task at every call: with a stage's 1,024 items in flight that cost
    # 0.26 CPU-s per 1,000 items (this queue: 0.05; benchmarks/bench_client_cpu.py), most of what a request costs.
    finished: asyncio.Queue[asyncio.Task] = asyncio.Queue()

    def top_up() -> None:
        while len(running) < max_in_flight:
            try:
                item = next(iterator)
            except StopIteration:
                return
            task = asyncio.ensure_future(fn(item))
            task.add_done_callback(finished.put_nowait)
            running[task] = item

    top_up()
    try:
        while running:
            task = await finished.get()
            item = running.pop(task)
            yield item, task.result()
            top_up()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


async def map_in_order(items: Sequence[T], fn: Callable[[T], Awaitable[R]], max_in_flight: int,
                       on_result: Callable[[], None] | None = None) -> list[R]:
    """``[await fn(item) for item in items]``, streamed like `stream_map` (at most `max_in_flight` running, no
    barrier), returned in item order; `on_result` is called as each one finishes (a progress bar)."""
    results: list[R] = [None] * len(items)  # type: ignore[list-item]
    async for index, result in stream_map(range(len(items)), lambda i: fn(items[i]), max_in_flight):
        results[index] = result
        if on_result is not None:
            on_result()
    return results
