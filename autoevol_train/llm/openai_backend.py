"""Backend for any OpenAI-compatible chat server (vLLM first), spoken over one aiohttp session per endpoint.

Why not the `openai` SDK on this path: it cost ~2.5 ms of CPU per request (httpx, then pydantic models of every
response), ten times what the bytes cost through aiohttp, and on a small machine that CPU, not the server,
capped throughput (benchmarks/bench_client_cpu.py). So this module carries the request the way vLLM's own
benchmark client does: one `aiohttp.ClientSession` per base URL (a keep-alive pool sized to the role's
ceiling, URLs, headers and proxy worked out once), the JSON body parsed once into `Completion`s. It keeps the
SDK's semantics: the same request body (`extra_body` merged at the top level), n samples, usage, the server's
own error message, a connect timeout apart from the request timeout, the proxy the environment names.

Several base URLs are balanced by load: each request goes to the endpoint with the most room under its own
adaptive limit (limiter.py; steered by the server's queue where it exposes vLLM's /metrics: server_metrics.py),
so a small or slow server gets less work instead of a fixed share. Nothing is
retried here; the layer above retries with backoff, and this module only sorts failures: transient
(`RetryableError`; a connection that cannot even be opened is `UnreachableError`; 429/503/504 and timeouts are
`BusyError` when the limit is adaptive), refused by the endpoint for every request (`EndpointRefusedError`: 401,
403, 404) and final for this request only (`FatalRequestError`: 400, 422).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time
import urllib.request
from collections import deque
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from autoevol_train.errors import EndpointError
from autoevol_train.llm.limiter import EndpointLimit
from autoevol_train.llm.server_metrics import POLL_TIMEOUT_S, QueueMonitor, metrics_url
from autoevol_train.llm.types import (BusyError, Completion, EndpointRefusedError, FatalRequestError, Messages,
                                      OpenAIRole, PreflightMode, RetryableError, Sampling, UnreachableError)

_RETRYABLE_STATUS = {408, 409, 425, 429}
_BUSY_STATUS = {429, 503, 504}  # the endpoint says "fewer at once": its adaptive limit is cut
_REFUSED_STATUS = {401, 402, 403, 404, 405}
PREFLIGHT_TIMEOUT_S = 10.0  # per check: a stage learns within seconds that an endpoint cannot serve it
PREFLIGHT_ATTEMPTS = 2  # a restarting server or a dropped connection gets one more quick try
CONNECT_TIMEOUT_S = 10.0  # opening a connection: a host that drops packets must not hold a slot for timeout_s


class HTTPStatusError(Exception):
    """An HTTP error answer: its status, the server's own message on one line, its error `code` (OpenAI-style
    bodies) and Retry-After in seconds."""

    def __init__(self, status: int, answer: str, code: Any, retry_after: float | None):
        super().__init__(f"HTTP {status}: {answer}")
        self.status = status
        self.answer = answer
        self.code = code
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The Retry-After header in seconds (HTTP dates are rare from model servers and are ignored)."""
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


def _status_error(status: int, raw: bytes, headers: Mapping[str, str]) -> HTTPStatusError:
    """Read an error body as the openai SDK does: ``{"error": {"message", "code"}}`` (vLLM's older flat
    ``{"message", "code"}`` too), else the body's text."""
    text = raw.decode(errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    data = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    message = data.get("message") if isinstance(data, dict) else None
    code = data.get("code") if isinstance(data, dict) else None
    answer = " ".join((message if isinstance(message, str) else text).split())
    return HTTPStatusError(status, answer, code, _retry_after(headers))


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
    for error in chain:  # aiohttp's own resolvers may leave no socket.gaierror in the chain
        if isinstance(error, aiohttp.ClientConnectorDNSError):
            return f"DNS lookup failed ({error.os_error.strerror or error.os_error})"
        if isinstance(error, aiohttp.ClientConnectorError) and error.os_error.errno == errno.ECONNREFUSED:
            return "connection refused"
    return None


def _env_proxy(url: URL) -> str | None:
    """The proxy the environment names for this endpoint (HTTP(S)_PROXY, NO_PROXY), as httpx and so the openai
    SDK would use it: looked up once per endpoint, not on every request as aiohttp's `trust_env` does."""
    if url.host is None or urllib.request.proxy_bypass(url.host):
        return None
    return urllib.request.getproxies().get(url.scheme)


def _completions(raw: bytes, n: int) -> list[Completion]:
    """n labelled completions from a chat completion body; ValueError / KeyError / TypeError when malformed.
    Usage is per response: the prompt counts once, completion tokens are shared out over the samples."""
    payload = json.loads(raw)
    choices = payload["choices"] or []
    if len(choices) != n:
        raise ValueError(f"{len(choices)} choices for n={n}")
    if n > 1:
        choices = sorted(choices, key=lambda c: c["index"])
    usage = payload.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens") or 0
    completion_tokens = usage.get("completion_tokens") or 0
    completions = []
    for i, choice in enumerate(choices):
        share = completion_tokens // n + (completion_tokens % n if i == 0 else 0)
        completions.append(Completion.checked((choice.get("message") or {}).get("content"),
                                              choice.get("finish_reason"), prompt_tokens if i == 0 else 0, share))
    return completions


class _Endpoint:
    """One base URL: its URLs, headers and proxy worked out once, and its session, opened on first use (a
    session belongs to the event loop that opened it)."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float, pool_size: int):
        self.base_url = base_url
        base = URL(base_url.rstrip("/"))
        self.chat_url = URL(f"{base}/chat/completions")
        self.models_url = URL(f"{base}/models")
        self.metrics_url = URL(metrics_url(base_url))
        self.proxy = _env_proxy(base)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                         "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(  # a connection beyond the ceiling for the /metrics poll
                connector=aiohttp.TCPConnector(limit=self._pool_size + 1), headers=self._headers,
                timeout=self._timeout)
        return self._session

    async def post(self, body: dict[str, Any], timeout: aiohttp.ClientTimeout | None = None) -> bytes:
        """POST a chat completion; the answer's bytes, or `HTTPStatusError` for an error status."""
        async with self.session.post(self.chat_url, data=json.dumps(body).encode(), proxy=self.proxy,
                                     timeout=timeout or self._timeout) as response:
            raw = await response.read()
            if response.status >= 400:
                raise _status_error(response.status, raw, response.headers)
            return raw

    async def served_models(self, timeout: aiohttp.ClientTimeout) -> list[str] | None:
        """The model ids the server lists; None when it has no /models (404)."""
        async with self.session.get(self.models_url, proxy=self.proxy, timeout=timeout) as response:
            raw = await response.read()
            if response.status == 404:
                return None
            if response.status >= 400:
                raise _status_error(response.status, raw, response.headers)
        return [model["id"] for model in json.loads(raw)["data"]]

    async def metrics_text(self) -> str | None:
        """The server's Prometheus text (vLLM's /metrics, beside /v1); None for an answer other than 200."""
        async with self.session.get(self.metrics_url, proxy=self.proxy,
                                    timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT_S)) as response:
            return await response.text() if response.status == 200 else None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class OpenAIBackend:
    def __init__(self, config: OpenAIRole):
        self._model = config.model
        self._extra_body = dict(config.extra_body)
        api_key = config.api_key()
        self._endpoints = [_Endpoint(url, api_key, config.timeout_s, config.max_concurrency)
                           for url in config.base_urls]
        self._adaptive = config.adaptive_concurrency
        self.limits = [EndpointLimit(config.max_concurrency, config.adaptive_concurrency) for _ in self._endpoints]
        self._queues = (QueueMonitor([e.metrics_text for e in self._endpoints], self.limits, self._wake)
                        if self._adaptive else None)
        self._waiting: deque[asyncio.Future[None]] = deque()  # requests waiting for room, first come first
        self._woken = 0  # requests woken for room that have not taken it yet
        self._turn = 0

    def _pick(self) -> int:
        """Most room under its limit (with equal limits: fewest in flight); ties go round-robin so idle
        endpoints share the first requests."""
        count = len(self._endpoints)
        if count == 1:
            return 0
        self._turn += 1
        return min(range(count), key=lambda i: (-self.limits[i].room, (i - self._turn) % count))

    async def _endpoint(self) -> int:
        """An endpoint with room under its adaptive limit, waiting in line while every one is full. The line is
        first come first served: a request does not pass those already waiting or woken (an item's next request,
        sent the moment its last one is answered, would otherwise take the room just freed for the head of the
        line, again and again, and starved items would run their rounds alone at the end of the run), and one
        woken for room that another endpoint's limit took meanwhile keeps its place at the front."""
        index = self._pick()
        if not self._waiting and self._free() - self._woken >= 1:
            return index
        front = False
        while True:
            turn = asyncio.get_running_loop().create_future()
            (self._waiting.appendleft if front else self._waiting.append)(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._woken -= 1
                    self._wake()  # woken, then cancelled: the room it was woken for goes to the next in line
                raise
            self._woken -= 1
            index = self._pick()
            if self.limits[index].room >= 1:
                return index
            front = True

    def _free(self) -> int:
        return sum(max(0, int(limit.room)) for limit in self.limits)

    def _wake(self) -> None:
        """Wake as many waiting requests as there is room now not yet promised, in order: not every one of them
        (with a stage's 1,024 items in flight and a limit of 64, waking all on every answer cost more CPU than the
        requests)."""
        room = self._free() - self._woken
        while room > 0 and self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                self._woken += 1
                room -= 1

    def _body(self, messages: Messages, sampling: Sampling, n: int) -> dict[str, Any]:
        """The request body the openai SDK would send (its unset fields left out, `extra_body` on top)."""
        body: dict[str, Any] = {"model": self._model, "messages": messages, "n": n,
                                "temperature": sampling.temperature, "top_p": sampling.top_p,
                                "max_tokens": sampling.max_tokens}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if self._extra_body:
            body.update(self._extra_body)
        return body

    async def generate(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]:
        index = await self._endpoint()
        endpoint = self._endpoints[index]
        where = endpoint.base_url
        limit = self.limits[index]
        ticket = limit.start()
        if self._queues is not None:
            self._queues.wake(index)
        sent = time.monotonic()
        latency: float | None = None
        congested = False
        try:
            raw = await endpoint.post(self._body(messages, sampling, n))
        except asyncio.TimeoutError as exc:  # connect or total timeout (before OSError: TimeoutError is one)
            congested = self._adaptive
            raise (BusyError if congested else RetryableError)("timeout", where) from exc
        except HTTPStatusError as exc:
            reason = f"http_{exc.status}: {exc.answer[:200]}"
            congested = self._adaptive and exc.status in _BUSY_STATUS
            if congested:
                raise BusyError(reason, where, exc.retry_after) from exc
            if exc.status >= 500 or exc.status in _RETRYABLE_STATUS:
                raise RetryableError(reason, where, exc.retry_after) from exc
            if exc.status in _REFUSED_STATUS:
                raise EndpointRefusedError(reason, where) from exc
            raise FatalRequestError(reason, where) from exc
        except (aiohttp.ClientError, OSError) as exc:
            unreachable = _unreachable(exc)
            if unreachable:
                raise UnreachableError(unreachable, where) from exc
            raise RetryableError(f"connection error ({type(exc).__name__})", where) from exc
        else:
            latency = time.monotonic() - sent
        finally:
            limit.finish(ticket, latency, congested)
            self._wake()
        try:
            return _completions(raw, n)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RetryableError(f"malformed response: {str(exc)[:200]}", where) from exc

    async def preflight(self, mode: PreflightMode) -> None:
        """Every base URL, at once: GET /models lists the model ("full"; a server without /models answers 404
        and gets the chat check only), then a 1-token chat with the role's model and extra_body."""
        problems = await asyncio.gather(*(self._check(endpoint, mode) for endpoint in self._endpoints))
        for problem in problems:
            if problem is not None:
                raise EndpointError(problem)

    async def _check(self, endpoint: _Endpoint, mode: PreflightMode) -> str | None:
        timeout = aiohttp.ClientTimeout(total=PREFLIGHT_TIMEOUT_S)
        where = f"{endpoint.base_url} (model {self._model!r})"
        for attempt in range(1, PREFLIGHT_ATTEMPTS + 1):
            try:
                if mode == "full":
                    served = await endpoint.served_models(timeout)
                    if served is not None and self._model not in served:
                        return f"{where}: model {self._model!r} is not served (served: {', '.join(served) or 'none'})"
                await endpoint.post({"model": self._model, "messages": [{"role": "user", "content": "Hi"}],
                                     "max_tokens": 1, **self._extra_body}, timeout)
                return None
            except asyncio.TimeoutError:
                problem, transient = f"no answer within {PREFLIGHT_TIMEOUT_S:.0f} s", True
            except HTTPStatusError as exc:
                if exc.status == 429 and exc.code != "insufficient_quota":
                    return None  # reachable, authenticated, serving: the rate limit is the client's to respect
                problem, transient = f"HTTP {exc.status}: {exc.answer[:300]}", exc.status >= 500
            except (aiohttp.ClientError, OSError) as exc:
                problem, transient = _unreachable(exc) or f"connection failed ({exc})", True
            except (ValueError, KeyError, TypeError) as exc:  # a /models answer that is no model list
                problem, transient = f"malformed answer ({str(exc)[:200]})", True
            if not transient or attempt == PREFLIGHT_ATTEMPTS:
                return f"{where}: {problem}"
            await asyncio.sleep(1.0)
        return None

    async def aclose(self) -> None:
        if self._queues is not None:
            await self._queues.aclose()
        for endpoint in self._endpoints:
            await endpoint.aclose()
