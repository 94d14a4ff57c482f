"""Backend for any OpenAI-compatible chat server (vLLM first), through the official `openai` client.

Several base URLs are balanced by load: each request goes to the endpoint with the most room under its own
adaptive limit (limiter.py; steered by the server's queue where it exposes vLLM's /metrics: server_metrics.py),
so a small or slow server gets less work instead of a fixed share. The client's own retries are off; the
layer above retries with backoff, and this module only sorts failures: transient (`RetryableError`; a
connection that cannot even be opened is `UnreachableError`), refused by the endpoint for every request
(`EndpointRefusedError`: 401, 403, 404) and final for this request only (`FatalRequestError`: 400, 422).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time

import openai

from autoevol_train.errors import EndpointError
from autoevol_train.llm.limiter import EndpointLimit
from autoevol_train.llm.server_metrics import QueueMonitor
from autoevol_train.llm.types import (BusyError, Completion, EndpointRefusedError, FatalRequestError, Messages,
                                      OpenAIRole, PreflightMode, RetryableError, Sampling, UnreachableError)

_RETRYABLE_STATUS = {408, 409, 425, 429}
_BUSY_STATUS = {429, 503, 504}  # the endpoint says "fewer at once": its adaptive limit is cut
_REFUSED_STATUS = {401, 402, 403, 404, 405}
PREFLIGHT_TIMEOUT_S = 10.0  # per check: a stage learns within seconds that an endpoint cannot serve it
PREFLIGHT_ATTEMPTS = 2  # a restarting server or a dropped connection gets one more quick try
CONNECT_TIMEOUT_S = 10.0  # opening a connection: a host that drops packets must not hold a slot for timeout_s


def _unreachable(exc: BaseException) -> str | None:
    """Why a connection could not be opened (refused, DNS, no route), from the exception's chain; None when
    the failure came later (a timeout, a dropped response)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 16:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for error in chain:
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, socket.gaierror):
            return f"DNS lookup failed ({error.strerror})"
        if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"no route to host ({error.strerror})"
    return None


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """The Retry-After header in seconds (HTTP dates are rare from model servers and are ignored)."""
    try:
        return max(0.0, float(exc.response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _server_answer(exc: openai.APIStatusError, limit: int = 200) -> str:
    """The server's own message (OpenAI-style ``{"error": {"message": ...}}``, else the body), on one line."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join((message if isinstance(message, str) else exc.response.text).split())[:limit]


class OpenAIBackend:
    def __init__(self, config: OpenAIRole):
        self._model = config.model
        self._extra_body = dict(config.extra_body)
        self._urls = list(config.base_urls)
        self._clients = [
            openai.AsyncOpenAI(base_url=url, api_key=config.api_key(), max_retries=0,
                               timeout=openai.Timeout(config.timeout_s, connect=CONNECT_TIMEOUT_S))
            for url in self._urls
        ]
        self._adaptive = config.adaptive_concurrency
        self.limits = [EndpointLimit(config.max_concurrency, config.adaptive_concurrency) for _ in self._urls]
        self._queues = QueueMonitor(self._urls, self.limits, config.api_key()) if self._adaptive else None
        self._freed = asyncio.Event()
        self._turn = 0

    def _pick(self) -> int:
        """Most room under its limit (with equal limits: fewest in flight); ties go round-robin so idle
        endpoints share the first requests."""
        self._turn += 1
        count = len(self._clients)
        return min(range(count), key=lambda i: (-self.limits[i].room, (i - self._turn) % count))

    async def _endpoint(self) -> int:
        """An endpoint with room under its adaptive limit, waiting while every one is full."""
        index = self._pick()
        while self.limits[index].room < 1:
            self._freed.clear()
            await self._freed.wait()
            index = self._pick()
        return index

    async def generate(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]:
        index = await self._endpoint()
        where = self._urls[index]
        limit = self.limits[index]
        ticket = limit.start()
        if self._queues is not None:
            self._queues.wake(index)
        sent = time.monotonic()
        latency: float | None = None
        congested = False
        try:
            response = await self._clients[index].chat.completions.create(
                model=self._model, messages=messages, n=n, temperature=sampling.temperature,
                top_p=sampling.top_p, max_tokens=sampling.max_tokens, seed=sampling.seed,
                stop=list(sampling.stop) or None, extra_body=self._extra_body or None,
            )
        except openai.APITimeoutError as exc:
            congested = self._adaptive
            raise (BusyError if congested else RetryableError)("APITimeoutError", where) from exc
        except openai.APIConnectionError as exc:
            unreachable = _unreachable(exc)
            if unreachable:
                raise UnreachableError(unreachable, where) from exc
            raise RetryableError("APIConnectionError", where) from exc
        except openai.APIStatusError as exc:
            reason = f"http_{exc.status_code}: {_server_answer(exc)}"
            congested = self._adaptive and exc.status_code in _BUSY_STATUS
            if congested:
                raise BusyError(reason, where, _retry_after(exc)) from exc
            if exc.status_code >= 500 or exc.status_code in _RETRYABLE_STATUS:
                raise RetryableError(reason, where, _retry_after(exc)) from exc
            if exc.status_code in _REFUSED_STATUS:
                raise EndpointRefusedError(reason, where) from exc
            raise FatalRequestError(reason, where) from exc
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
            raise RetryableError(f"malformed response: {str(exc)[:200]}", where) from exc
        else:
            latency = time.monotonic() - sent
        finally:
            limit.finish(ticket, latency, congested)
            self._freed.set()
        choices = sorted(response.choices or [], key=lambda c: c.index)
        if len(choices) != n:
            raise RetryableError(f"malformed response: {len(choices)} choices for n={n}", where)
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        completions = []
        for i, choice in enumerate(choices):
            # Usage is per response: the prompt counts once, completion tokens are shared out over samples.
            share = completion_tokens // n + (completion_tokens % n if i == 0 else 0)
            completions.append(Completion.checked(choice.message.content, choice.finish_reason,
                                                  prompt_tokens if i == 0 else 0, share))
        return completions

    async def preflight(self, mode: PreflightMode) -> None:
        """Every base URL, at once: GET /models lists the model ("full"; a server without /models answers 404
        and gets the chat check only), then a 1-token chat with the role's model and extra_body."""
        problems = await asyncio.gather(*(self._check(index, mode) for index in range(len(self._clients))))
        for problem in problems:
            if problem is not None:
                raise EndpointError(problem)

    async def _check(self, index: int, mode: PreflightMode) -> str | None:
        client = self._clients[index].with_options(timeout=PREFLIGHT_TIMEOUT_S)
        where = f"{self._urls[index]} (model {self._model!r})"
        for attempt in range(1, PREFLIGHT_ATTEMPTS + 1):
            try:
                if mode == "full":
                    served = await self._served_models(client)
                    if served is not None and self._model not in served:
                        return f"{where}: model {self._model!r} is not served (served: {', '.join(served) or 'none'})"
                await client.chat.completions.create(
                    model=self._model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                    extra_body=self._extra_body or None)
                return None
            except openai.APITimeoutError:
                problem, transient = f"no answer within {PREFLIGHT_TIMEOUT_S:.0f} s", True
            except openai.APIConnectionError as exc:
                problem, transient = _unreachable(exc) or f"connection failed ({exc})", True
            except openai.APIStatusError as exc:
                if exc.status_code == 429 and exc.code != "insufficient_quota":
                    return None  # reachable, authenticated, serving: the rate limit is the client's to respect
                problem, transient = f"HTTP {exc.status_code}: {_server_answer(exc, 300)}", exc.status_code >= 500
            if not transient or attempt == PREFLIGHT_ATTEMPTS:
                return f"{where}: {problem}"
            await asyncio.sleep(1.0)
        return None

    async def _served_models(self, client: openai.AsyncOpenAI) -> list[str] | None:
        """The model ids the server lists; None when it has no /models (404)."""
        try:
            page = await client.models.list()
        except openai.NotFoundError:
            return None
        return [model.id for model in page.data]

    async def aclose(self) -> None:
        if self._queues is not None:
            await self._queues.aclose()
        for client in self._clients:
            await client.close()
