"""The adaptive limit on the real HTTP path (OpenAIBackend → scripted OpenAI-compatible server, a test double
with decoding slots): default settings, no concurrency given. Structural checks only; throughput figures are in
benchmarks/bench_adaptive.py."""

from __future__ import annotations

import asyncio

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.limiter import INITIAL
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.types import OpenAIRole
from tests.support.scripted_server import LatencyModel


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
