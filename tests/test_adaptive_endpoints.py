"""The adaptive limit on the real HTTP path (OpenAIBackend → the scripted OpenAI-compatible server, or the
simulated one in its own process with vLLM's /metrics; both test doubles with decoding slots): default
settings, no concurrency given. Structural checks only; throughput figures are in
benchmarks/bench_adaptive.py."""

from __future__ import annotations

import asyncio

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.limiter import INITIAL
from autoevol_train.llm.openai_backend import OpenAIBackend
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.server_metrics import metrics_url, parse_queue
from autoevol_train.llm.types import OpenAIRole
from tests.support.scripted_server import LatencyModel
from tests.support.sim_server import SimServer


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"q{i}"}]


def run(config: OpenAIRole, requests: int):
    async def main():
        async with LLMPool({"evol": config}) as pool:
            done = [c async for _, c in stream_map(range(requests), lambda i: pool["evol"].chat_one(ask(i)),
                                                   max_in_flight=256)]
            return done, pool["evol"]._backend.limits

    return asyncio.run(main())


def test_default_limit_grows_past_its_start_under_a_server_with_spare_capacity(scripted_server):
    """A server with 64 slots: the limit starts at INITIAL, grows (the role gives no max_concurrency: the
    default ceiling is far above the slots), and nothing is lost."""
    server = scripted_server(latency=LatencyModel(median_s=0.5, sigma=0.3, slots=64))
    config = OpenAIRole(model="m", base_urls=[server.base_url], preflight="off")
    assert config.max_concurrency == 1024
    done, (limit,) = run(config, 1000)
    assert len(done) == 1000 and all(c.ok for c in done)
    assert limit.limit > 2 * INITIAL and limit.ceiling == 1024 and limit.cuts == 0


def test_two_endpoints_of_different_capacity_each_get_their_own_limit(scripted_server):
    """4 and 64 slots behind one role: each base URL learns its own limit, the bigger endpoint a larger one, and
    the balancer gives it most of the work."""
    small = scripted_server(latency=LatencyModel(median_s=0.5, sigma=0.3, slots=4))
    big = scripted_server(latency=LatencyModel(median_s=0.5, sigma=0.3, slots=64))
    config = OpenAIRole(model="m", base_urls=[small.base_url, big.base_url], preflight="off")
    done, (small_limit, big_limit) = run(config, 1000)
    assert len(done) == 1000 and all(c.ok for c in done)
    assert big_limit.limit > 2 * small_limit.limit
    assert big.counters.requests > 3 * small.counters.requests


VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 30.0
vllm:num_requests_running{engine="1",model_name="m"} 34.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 2.0
"""


def test_server_queue_is_read_from_vllm_gauges():
    assert metrics_url("http://h:8000/v1") == metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"
    assert parse_queue(VLLM_METRICS) == (64.0, 3.0)  # summed over engines; the by-reason gauge is not counted
    assert parse_queue("# an exporter of something else\nhttp_requests_total 5\n") is None


def test_limit_steers_on_the_queue_of_a_server_with_metrics():
    """A simulated vLLM-like server (its own process) with 16 slots and /metrics: the limit is steered by its
    queue, grows past the slots (doubling from INITIAL), and ends within a small queue of them; nothing lost."""
    with SimServer(slots=16, mean_s=0.15, sigma=0.3) as server:
        config = OpenAIRole(model="sim", base_urls=[server.base_url], preflight="off")
        done, (limit,) = run(config, 600)
        stats = server.stats()
    assert len(done) == 600 and all(c.ok for c in done)
    assert limit.queue_steered and limit.cuts == 0
    assert 16 <= limit.limit <= 16 + 8
    assert stats["answered"] == 600


def test_requests_waiting_for_room_leave_when_a_poll_grows_the_limit_not_at_the_next_answer():
    """Answers that take 20 s (a long generation): the queue-steered limit doubles per /metrics poll, and the
    requests waiting in line for room must leave at once. Before, only an answer woke them, so the client sat at
    INITIAL requests in flight for a whole service time. Structural: no request is answered while it grows."""
    async def main(server: SimServer) -> tuple[int, float]:
        config = OpenAIRole(model="sim", base_urls=[server.base_url], preflight="off")
        async with LLMPool({"evol": config}) as pool:
            limit = pool["evol"]._backend.limits[0]
            tasks = [asyncio.ensure_future(pool["evol"].chat_one(ask(i))) for i in range(64)]
            for _ in range(100):  # a bound for a failure, not a timing: with the fix ~5 polls, 0.1 s apart
                if limit.in_flight == 64:
                    break
                await asyncio.sleep(0.1)
            in_flight = limit.in_flight
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return in_flight, limit.limit

    with SimServer(slots=128, mean_s=60.0, sigma=0.01) as server:  # served max_tokens x 20 ms: 20.5 s each
        in_flight, grown_to = asyncio.run(main(server))
        answered = server.stats()["answered"]
    assert answered == 0
    assert in_flight == 64 and grown_to >= 64 > INITIAL


def test_a_server_without_metrics_is_asked_once_and_latency_steers():
    """An API without /metrics (404): the monitor stops after its first poll, the latency gradient steers."""
    with SimServer(slots=16, mean_s=0.15, sigma=0.3, metrics=False) as server:
        config = OpenAIRole(model="sim", base_urls=[server.base_url], preflight="off")
        done, (limit,) = run(config, 400)
    assert len(done) == 400 and all(c.ok for c in done)
    assert not limit.queue_steered and limit.baseline < 1.0 and limit.limit > INITIAL


def test_waiting_line_is_first_come_first_served():
    """Room freed by an answer goes to the head of the line, not to the answered item's next request, sent in
    the same step before the woken head runs; structural, on the backend's line alone (no server needed)."""
    async def main():
        backend = OpenAIBackend(OpenAIRole(model="m", base_urls=["http://127.0.0.1:9/v1"], max_concurrency=1,
                                           adaptive_concurrency=False))
        order: list[str] = []

        async def item(name: str, requests: int) -> None:
            for round_ in range(requests):
                index = await backend._endpoint()
                ticket = backend.limits[index].start()
                order.append(f"{name}{round_}")
                await asyncio.sleep(0)
                backend.limits[index].finish(ticket, 0.01, False)
                backend._wake()  # and straight on to the item's next request, as a stage's chain does

        await asyncio.gather(item("a", 2), item("b", 2), item("c", 2))
        return order

    assert asyncio.run(main()) == ["a0", "b0", "c0", "a1", "b1", "c1"]
