"""The circuit breaker: a role whose requests keep failing stops the stage with one line (`CircuitOpen`, an
`EndpointError`, exit 3) instead of spending every remaining item's retry budget; answers completed before are
journaled, so a re-run after the endpoint recovers resumes from them. The scripted server (a test double) makes
the fault patterns exact."""

from __future__ import annotations

import asyncio
import threading

import pytest

from autoevol_train.errors import EndpointError
from autoevol_train.llm.breaker import CircuitOpen
from autoevol_train.llm.client import UNREACHABLE_RETRIES, LLMPool
from autoevol_train.llm.journal import Journal
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.types import BreakerConfig, OpenAIRole
from tests.support.scripted_server import Reply


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}"}]


class FailsAfter:
    """A rule: answers the first `good` requests, then HTTP 500 for every request until `recover()`."""

    def __init__(self, good: int):
        self.good = good
        self.answered = 0
        self.recovered = False
        self._lock = threading.Lock()

    def __call__(self, body, index):
        with self._lock:
            if self.answered < self.good or self.recovered:
                self.answered += 1
                return Reply(content=f"answer to {body['messages'][-1]['content']}")
        return Reply(status=500, content="engine dead")

    def recover(self) -> None:
        self.recovered = True


def test_server_failing_after_200_answers_stops_within_the_window_and_the_rerun_resumes(scripted_server, tmp_path):
    rule = FailsAfter(good=200)
    server = scripted_server(rule)
    config = OpenAIRole(model="m", base_urls=[server.base_url], max_concurrency=8, max_retries=2,
                        retry_initial_s=0.01)  # defaults: breaker first 20, window 200, rate 0.5

    async def run(items: int):
        async with LLMPool({"evol": config}, Journal(tmp_path / "calls.sqlite")) as pool:
            async def one(i):
                return (await pool["evol"].chat_one(ask(i))).text
            answers = {i: text async for i, text in stream_map(range(items), one, max_in_flight=16)}
            return answers, pool.usage()["evol"]

    with pytest.raises(CircuitOpen) as info:
        asyncio.run(run(1000))
    message = str(info.value)
    assert isinstance(info.value, EndpointError) and "\n" not in message
    assert message.startswith(f"evol: {server.base_url} (model 'm'): circuit breaker open, 100 of its last 200 "
                              "requests failed; last error: gave up after 3 attempts: http_500: engine dead")
    # Stopped within the window: 100 failed requests to open it, plus those already in flight, 3 attempts each.
    failed_attempts = server.counters.requests - 200
    assert failed_attempts <= (100 + 8) * 3
    assert len(Journal(tmp_path / "calls.sqlite")) == 200

    rule.recover()
    sent_before = server.counters.requests
    answers, usage = asyncio.run(run(1000))
    assert answers == {i: f"answer to question {i}" for i in range(1000)}
    assert usage["cached_samples"] == 200 and server.counters.requests - sent_before == 800


def test_a_role_that_never_worked_stops_after_its_first_requests(scripted_server):
    server = scripted_server(lambda body, i: Reply(status=401, content="invalid api key"))
    config = OpenAIRole(model="m", base_urls=[server.base_url], breaker=BreakerConfig(first=5))

    async def main():
        async with LLMPool({"judge": config}) as pool:
            return [await pool["judge"].chat_one(ask(i)) for i in range(4)], await pool["judge"].chat_one(ask(4))

    with pytest.raises(CircuitOpen, match=r"^judge: http://127\.0\.0\.1:\d+/v1 \(model 'm'\): circuit breaker open, "
                       r"its first 5 requests all failed; last error: http_401: invalid api key\."):
        asyncio.run(main())
    assert server.counters.requests == 5  # refusals are not retried; the 5th opened the breaker


def test_request_specific_rejections_do_not_open_it(scripted_server):
    """A 400 (e.g. a prompt too long for the model) is the request's fault, not the endpoint's."""
    server = scripted_server(lambda body, i: Reply(status=400, content="prompt too long"))
    config = OpenAIRole(model="m", base_urls=[server.base_url], breaker=BreakerConfig(first=5, window=10))

    async def main():
        async with LLMPool({"evol": config}) as pool:
            return await asyncio.gather(*[pool["evol"].chat_one(ask(i)) for i in range(30)])

    completions = asyncio.run(main())
    assert [c.error for c in completions] == ["request_failed: http_400: prompt too long"] * 30


def test_connection_refused_gets_a_short_retry_budget_and_opens_it(scripted_server):
    server = scripted_server()
    url = server.base_url
    config = OpenAIRole(model="m", base_urls=[url], max_retries=6, retry_initial_s=0.01, max_concurrency=4,
                        breaker=BreakerConfig(first=20, window=40))

    async def main():
        async with LLMPool({"evol": config}) as pool:
            client = pool["evol"]
            assert all(c.ok for c in await asyncio.gather(*[client.chat_one(ask(i)) for i in range(30)]))
            server.stop()  # the server dies mid-run: its port refuses connections
            refused = await client.chat_one(ask(30))
            attempts = UNREACHABLE_RETRIES + 1  # not max_retries + 1
            assert refused.error == f"request_failed: gave up after {attempts} attempts: connection refused"
            await asyncio.gather(*[client.chat_one(ask(i)) for i in range(31, 200)])

    with pytest.raises(CircuitOpen, match=rf"^evol: {url} \(model 'm'\): circuit breaker open, 20 of its last 40 "
                                          r"requests failed; last error: gave up after 3 attempts: connection refused"):
        asyncio.run(main())
