"""The one way every stage talks to an LLM: a client per role, over a shared pool of backends.

A role (evol, optimizer, responder, judge, or the model under test) is a model plus how to reach it and how
to sample from it. `LLMClient.chat` answers a chat with n samples: it reads the journal first (a resumed run
repeats no completed call), else asks the backend within the role's concurrency bound, retrying transient
failures with exponential backoff and jitter. It returns n `Completion`s; failures and truncations are
labelled in them, never passed on as good answers. The one exception it raises is `CircuitOpen` (exit 3),
when the role's requests keep failing (see breaker.py): a dead endpoint stops the stage.

`LLMPool.preflight()` checks every endpoint before a stage starts (see `Backend.preflight`).

Roles that name the same backend share it: an in-process model is loaded once even when it plays the evol
LLM and the responder.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from autoevol_train.errors import AutoevolError
from autoevol_train.llm.breaker import Breaker
from autoevol_train.llm.journal import Journal, call_key
from autoevol_train.llm.types import (Backend, BusyError, Completion, EndpointRefusedError, FatalRequestError,
                                      Messages, OpenAIRole, PreflightMode, RetryableError, RoleConfig, Sampling,
                                      TransformersRole, UnreachableError, VLLMRole)

if TYPE_CHECKING:
    from autoevol_train.llm.engines import SharedEngines

UNREACHABLE_RETRIES = 2  # connection refused / DNS: a blip gets two quick retries, a dead server fails fast
MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After means the endpoint is down for now: the breaker's business


@dataclass
class RoleStats:
    requests: int = 0
    samples: int = 0
    cached_samples: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "samples": self.samples, "cached_samples": self.cached_samples,
                "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "errors": dict(self.errors)}


class LLMClient:
    """Chat completions for one role: journal, concurrency bound, retries, accounting."""

    def __init__(self, role: str, config: RoleConfig, backend: Backend, journal: Journal | None):
        self.role = role
        self.config = config
        self._backend = backend
        self._journal = journal
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._sampling = config.sampling()  # built once: a call with overrides replaces fields of a copy
        self._breaker = Breaker(role, config.model, config.breaker)
        self._backoff = wait_exponential_jitter(multiplier=config.retry_initial_s, jitter=config.retry_initial_s,
                                                max=60.0)
        self.stats = RoleStats()

    @property
    def model(self) -> str:
        return self.config.model

    async def chat(self, messages: Messages, *, n: int = 1, **overrides: Any) -> list[Completion]:
        """n samples for `messages`; `overrides` replace the role's sampling fields for this call."""
        sampling = replace(self._sampling, **overrides) if overrides else self._sampling
        journal = self._journal
        if journal is not None:
            keys = [call_key(self.config.model, messages, sampling, i) for i in range(n)]
            results: list[Completion | None] = [journal.get(k) for k in keys]
            missing = [i for i, got in enumerate(results) if got is None]
        else:
            results, missing = [None] * n, list(range(n))
        if missing:
            self._breaker.check()
            async with self._slots:
                fresh = await self._request(messages, sampling, n)
            request = {"messages": messages, "sampling": sampling.as_dict()} if journal is not None else {}
            for i in missing:
                results[i] = fresh[i]
                failed = fresh[i].error is not None and fresh[i].error.startswith("request_failed")
                if journal is not None and not failed:
                    journal.put(keys[i], self.role, self.config.model, {**request, "index": i}, fresh[i])
        self.stats.samples += n
        self.stats.cached_samples += n - len(missing)
        for i, completion in enumerate(results):
            if completion.error:
                self.stats.errors[completion.error.split(":")[0]] += 1
            if i in missing:
                self.stats.prompt_tokens += completion.prompt_tokens
                self.stats.completion_tokens += completion.completion_tokens
        return results  # type: ignore[return-value]

    async def chat_one(self, messages: Messages, **overrides: Any) -> Completion:
        return (await self.chat(messages, n=1, **overrides))[0]

    def _out_of_budget(self, state: RetryCallState) -> bool:
        unreachable = state.outcome is not None and isinstance(state.outcome.exception(), UnreachableError)
        budget = min(self.config.max_retries, UNREACHABLE_RETRIES) if unreachable else self.config.max_retries
        return state.attempt_number > budget

    def _wait(self, state: RetryCallState) -> float:
        """Exponential back-off; for a busy endpoint a short flat wait (its adaptive limit was cut, and that
        limit slows the client down); the server's Retry-After when it asks for longer."""
        exc = state.outcome.exception() if state.outcome is not None else None
        busy = isinstance(exc, BusyError)
        own = self.config.retry_initial_s * (1 + random.random()) if busy else self._backoff(state)
        retry_after = exc.retry_after if isinstance(exc, RetryableError) and exc.retry_after else 0.0
        return max(own, min(retry_after, MAX_RETRY_AFTER_S))

    async def _request(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]:
        """n completions, or n labelled failures. Each outcome goes to the breaker, which raises `CircuitOpen`
        here (and before every retry of every request of the role) once it opens."""
        attempts = 0

        async def attempt() -> list[Completion]:
            nonlocal attempts
            self._breaker.check()
            attempts += 1
            if attempts > 1:
                self.stats.retries += 1
            self.stats.requests += 1
            return await self._backend.generate(messages, sampling, n)

        try:
            try:
                completions = await attempt()  # most requests: no retry machinery built at all
            except RetryableError as first:
                completions = await self._retry(attempt, first)
        except RetryableError as exc:
            failure = f"gave up after {attempts} attempts: {exc}"
            self._breaker.record(failure, exc.where)
        except EndpointRefusedError as exc:
            failure = str(exc)
            self._breaker.record(failure, exc.where)
        except FatalRequestError as exc:  # this request's own fault (e.g. too long): not the endpoint's
            failure = str(exc)
        else:
            if len(completions) == n:
                self._breaker.record(None)
                return completions
            failure = f"backend returned {len(completions)} samples, asked for {n}"
            self._breaker.record(failure)
        self._breaker.check()
        return [Completion.failed(failure) for _ in range(n)]

    async def _retry(self, attempt: Callable[[], Awaitable[list[Completion]]], first: RetryableError
                     ) -> list[Completion]:
        """Attempts 2, 3, ... of a request whose first attempt failed transiently, paced by tenacity: the first
        failure is replayed to it as attempt 1, so its stop and wait see the same states as if it had run
        every attempt (building the retrier costs more than a whole request through aiohttp, so it is built
        only when needed)."""
        retrying = AsyncRetrying(stop=self._out_of_budget, wait=self._wait,
                                 retry=retry_if_exception_type(RetryableError), reraise=True)
        replayed = False
        async for state in retrying:
            with state:
                if not replayed:
                    replayed = True
                    raise first
                return await attempt()
        raise AssertionError("tenacity ends by returning or raising")


def _make_backend(config: RoleConfig) -> Backend:
    # Imported here: each backend pulls in its own heavy library (openai, vllm, torch) only when used.
    match config:
        case OpenAIRole():
            from autoevol_train.llm.openai_backend import OpenAIBackend
            return OpenAIBackend(config)
        case VLLMRole():
            from autoevol_train.llm.vllm_backend import VLLMBackend
            return VLLMBackend(config)
        case TransformersRole():
            from autoevol_train.llm.hf_backend import TransformersBackend
            return TransformersBackend(config)


@contextmanager
def _named(label: str) -> Iterator[None]:
    """Prefix the roles' names to the one-line message of an error raised inside."""
    try:
        yield
    except AutoevolError as exc:
        raise type(exc)(f"{label}: {exc}") from None


class LLMPool:
    """The clients of one run, keyed by role, sharing backends and one journal.

    Built before any work: every role's cheap environment checks run first (a missing API key is an
    `InputError`, a missing in-process model directory an `EndpointError`), then the backends are built
    (in-process models load here). `await pool.preflight()` then checks that every endpoint serves."""

    def __init__(self, roles: dict[str, RoleConfig], journal: Journal | None = None,
                 engines: SharedEngines | None = None):
        sharing: dict[str, list[str]] = {}  # backend identity → the roles that use it
        for role, config in roles.items():
            with _named(role):
                config.check_environment()
            sharing.setdefault(config.backend_identity(), []).append(role)
        self._backends: list[tuple[str, Backend, PreflightMode | None]] = []
        self._owned: list[Backend] = []  # closed with the pool; borrowed engines are closed by their owner
        backend_of: dict[str, Backend] = {}
        for names in sharing.values():
            label = ", ".join(names)
            config = roles[names[0]]
            borrowed = engines is not None and not isinstance(config, OpenAIRole)  # in-process: kept for the run
            with _named(label):
                backend = engines.backend(config, _make_backend) if borrowed else _make_backend(config)
            modes = {roles[name].preflight for name in names}  # the most thorough check any of them asks for
            mode: PreflightMode | None = "full" if "full" in modes else "chat" if "chat" in modes else None
            self._backends.append((label, backend, mode))
            if not borrowed:
                self._owned.append(backend)
            backend_of.update(dict.fromkeys(names, backend))
        self.clients = {role: LLMClient(role, config, backend_of[role], journal) for role, config in roles.items()}
        self.journal = journal

    async def preflight(self) -> None:
        """Check, within seconds, that every role's endpoint serves its model (see `Backend.preflight`; a role's
        `preflight` key chooses full / chat / off). Raises `EndpointError` with one line: role, URL, model and
        the server's answer. Call it right after building the pool, before any work."""
        for label, backend, mode in self._backends:
            if mode is not None:
                with _named(label):
                    await backend.preflight(mode)

    def __getitem__(self, role: str) -> LLMClient:
        return self.clients[role]

    def usage(self) -> dict[str, dict[str, Any]]:
        return {role: client.stats.as_dict() for role, client in self.clients.items()}

    def total_tokens(self) -> int:
        return sum(c.stats.prompt_tokens + c.stats.completion_tokens for c in self.clients.values())

    async def aclose(self) -> None:
        """Close the backends it owns (not engines borrowed from `SharedEngines`) and commit the journal's batched
        writes (the journal itself stays open: its owner, e.g. `StageRun`, closes it)."""
        for backend in self._owned:
            await backend.aclose()
        if self.journal is not None:
            self.journal.flush()

    async def __aenter__(self) -> "LLMPool":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
