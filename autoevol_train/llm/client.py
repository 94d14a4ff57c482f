"""The one way every stage talks to an LLM: a client per role, over a shared pool of backends.

A role (evol, optimizer, responder, judge, or the model under test) is a model plus how to reach it and how
to sample from it. `LLMClient.chat` answers a chat with n samples: it reads the journal first (a resumed run
repeats no completed call), else asks the backend within the role's concurrency bound, retrying transient
failures with exponential backoff and jitter. Whatever happens, it returns n `Completion`s; failures and
truncations are labelled in them, never raised into the stage and never passed on as good answers.

Roles that name the same backend share it: an in-process model is loaded once even when it plays the evol
LLM and the responder.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from autoevol_train.llm.journal import Journal, call_key
from autoevol_train.llm.types import (Backend, Completion, FatalRequestError, Messages, OpenAIRole, RetryableError,
                                      RoleConfig, Sampling, TransformersRole, VLLMRole)


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
        self.stats = RoleStats()

    @property
    def model(self) -> str:
        return self.config.model

    async def chat(self, messages: Messages, *, n: int = 1, **overrides: Any) -> list[Completion]:
        """n samples for `messages`; `overrides` replace the role's sampling fields for this call."""
        sampling = replace(self.config.sampling(), **overrides)
        keys = [call_key(self.config.model, messages, sampling, i) for i in range(n)]
        results = [self._journal.get(k) if self._journal is not None else None for k in keys]
        missing = [i for i, got in enumerate(results) if got is None]
        if missing:
            async with self._slots:
                fresh = await self._request(messages, sampling, n)
            request = {"messages": messages, "sampling": sampling.as_dict()}
            for i in missing:
                results[i] = fresh[i]
                failed = fresh[i].error is not None and fresh[i].error.startswith("request_failed")
                if self._journal is not None and not failed:
                    self._journal.put(keys[i], self.role, self.config.model, {**request, "index": i}, fresh[i])
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

    async def _request(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=wait_exponential_jitter(multiplier=self.config.retry_initial_s, jitter=self.config.retry_initial_s,
                                        max=60.0),
            retry=retry_if_exception_type(RetryableError),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.stats.retries += 1
                    self.stats.requests += 1
                    completions = await self._backend.generate(messages, sampling, n)
        except RetryableError as exc:
            return [Completion.failed(f"gave up after {self.config.max_retries + 1} attempts: {exc}") for _ in range(n)]
        except FatalRequestError as exc:
            return [Completion.failed(str(exc)) for _ in range(n)]
        if len(completions) != n:
            return [Completion.failed(f"backend returned {len(completions)} samples, asked for {n}") for _ in range(n)]
        return completions


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


class LLMPool:
    """The clients of one run, keyed by role, sharing backends and one journal."""

    def __init__(self, roles: dict[str, RoleConfig], journal: Journal | None = None):
        backends: dict[str, Backend] = {}
        self.clients: dict[str, LLMClient] = {}
        for role, config in roles.items():
            identity = config.backend_identity()
            if identity not in backends:
                backends[identity] = _make_backend(config)
            self.clients[role] = LLMClient(role, config, backends[identity], journal)
        self._backends = list(backends.values())
        self.journal = journal

    def __getitem__(self, role: str) -> LLMClient:
        return self.clients[role]

    def usage(self) -> dict[str, dict[str, Any]]:
        return {role: client.stats.as_dict() for role, client in self.clients.items()}

    def total_tokens(self) -> int:
        return sum(c.stats.prompt_tokens + c.stats.completion_tokens for c in self.clients.values())

    async def aclose(self) -> None:
        for backend in self._backends:
            await backend.aclose()

    async def __aenter__(self) -> "LLMPool":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
