"""The vocabulary every stage shares with the LLM layer: role configs, the backend interface, sampling
parameters and completions.

A role's config is one of three models, chosen by its `backend` key (a discriminated union; "openai" when the
key is absent, so a recipe names only what differs from an OpenAI-compatible server). Each backend module
imports its own config model from here and implements `Backend`; `client.py` picks the backend for a config.
Nothing here imports a backend, so the layer has no import cycle.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union

from pydantic import (BeforeValidator, Discriminator, Field, PositiveFloat, PositiveInt, Tag, ValidationError,
                      ValidatorFunctionWrapHandler, WrapValidator)
from pydantic_core import InitErrorDetails

from autoevol_train.config import StrictModel
from autoevol_train.errors import EndpointError, InputError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters of one request (n samples are asked for separately, see `LLMClient.chat`)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The fields as `dataclasses.asdict` gives them, without its recursive deep copy (on every call's key)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed, "stop": self.stop}


@dataclass
class Completion:
    """One sample of a chat completion.

    `error` is None only for a usable answer. A truncated answer (`finish_reason == "length"`) or an empty
    one keeps its text but carries ``error="truncated"`` / ``error="empty"``, and a request that failed after
    every retry carries ``error="request_failed: <reason>"`` with empty text: a stage has to decide what to do
    with each, nothing is passed on silently as a good answer.
    """

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def checked(cls, text: str | None, finish_reason: str | None, prompt_tokens: int = 0,
                completion_tokens: int = 0) -> "Completion":
        """Build a completion from a backend's raw answer, labelling truncated and empty ones."""
        text = text or ""
        reason = finish_reason or "unknown"
        error = None
        if reason == "length":
            error = "truncated"
        elif not text.strip():
            error = "empty"
        return cls(text, reason, prompt_tokens, completion_tokens, error)

    @classmethod
    def failed(cls, reason: str) -> "Completion":
        return cls("", "error", error=f"request_failed: {reason}")


class RequestError(Exception):
    """A failed request. `where` names the endpoint (URL, or the model path of an in-process backend), so a
    circuit breaker can say which one is down."""

    def __init__(self, reason: str, where: str = ""):
        super().__init__(reason)
        self.where = where


class RetryableError(RequestError):
    """A transient backend failure (429, 5xx, timeout, dropped connection, malformed body): worth retrying;
    `retry_after` is the server's Retry-After in seconds, when it sent one."""

    def __init__(self, reason: str, where: str = "", retry_after: float | None = None):
        super().__init__(reason, where)
        self.retry_after = retry_after


class BusyError(RetryableError):
    """The endpoint is saturated (429, 503, 504, a timeout): its adaptive limit was cut, and the retry waits
    only `retry_initial_s` (or the server's Retry-After): the lower limit is the back-off."""


class UnreachableError(RetryableError):
    """The endpoint cannot be reached (connection refused, DNS failure): retried only a couple of times, quickly,
    so a dead server does not hold concurrency slots through minutes of back-off."""


class FatalRequestError(RequestError):
    """A request the backend will never answer (400, context too long): recorded, not retried. Says nothing
    about the endpoint's health, so the circuit breaker does not count it."""


class EndpointRefusedError(FatalRequestError):
    """The endpoint refuses every request of this role (401, 403, 404: auth, wrong model or path): not retried,
    and counted by the circuit breaker."""


PreflightMode = Literal["full", "chat"]


class Backend(Protocol):
    """What the client needs from a backend. Backends raise the `RequestError`s above for a failed request;
    the client turns them into labelled completions."""

    async def generate(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]: ...

    async def preflight(self, mode: PreflightMode) -> None:
        """Check, within seconds, that the backend can serve: raise `EndpointError` with one line naming the
        URL (or model path), the model and the server's answer. "full" also checks the served model names."""
        ...

    async def aclose(self) -> None: ...


# --- role configs --------------------------------------------------------------------------------------------

class BreakerConfig(StrictModel):
    """When a role's requests keep failing, the circuit breaker stops the stage (`CircuitOpen`, exit 3) instead
    of spending every remaining item's retry budget. A request counts as failed when it ended without an answer
    after its retries (or was refused: 401/403/404); a 400 (e.g. a prompt too long) says nothing about the
    endpoint and is not counted."""

    first: int = Field(20, ge=0, description="open when the role's first `first` requests all failed (0: off)")
    window: int = Field(200, ge=0, description="sliding window of the last requests (0: off)")
    max_failure_rate: float = Field(0.5, gt=0, le=1, description="open when the failed share of a full "
                                    "window reaches this")


class RoleBase(StrictModel):
    """What every role has, whatever its backend: the model, its sampling, and the client's limits."""

    model: str = Field(description="served model name (openai) or a local path / hub id (vllm, transformers)")
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: PositiveInt = 1024
    seed: int | None = None
    stop: list[str] = []
    max_concurrency: PositiveInt = Field(64, description="requests of this role in flight at once")
    max_retries: int = Field(6, ge=0, description="retries of a transient failure (429, 5xx, timeout, bad body)")
    retry_initial_s: PositiveFloat = Field(1.0, description="first backoff; doubles per retry, with jitter")
    # YAML 1.1 reads a bare `off` as false: `preflight: off` means what it says.
    preflight: Annotated[Literal["full", "chat", "off"], BeforeValidator(lambda v: "off" if v is False else v)] = Field(
        "full", description="check at stage start: full = the server lists the model (GET /models; a 404 there "
        "falls back to chat) and answers a 1-token chat; chat = only the chat; off = no check")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig,
                                   description="stop the stage when this role's requests keep failing")

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_tokens, self.seed, tuple(self.stop))

    def check_environment(self) -> None:
        """Cheap checks before any backend is built (no network, nothing slow): a role that cannot work fails
        here, before another role's model is loaded."""

    def backend_identity(self) -> str:
        """Roles with equal identities share one backend instance: everything but the role-side fields
        (sampling, limits) must match."""
        return json.dumps(self.model_dump(exclude=set(RoleBase.model_fields) - {"model"}), sort_keys=True)


class OpenAIRole(RoleBase):
    """Any OpenAI-compatible chat server (vLLM's first), over HTTP."""

    backend: Literal["openai"] = Field("openai", description="openai: any OpenAI-compatible server")
    base_urls: list[str] = Field(["http://127.0.0.1:8000/v1"], min_length=1,
                                 description="endpoints, balanced by requests in flight")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    timeout_s: PositiveFloat = Field(300.0, description="per-request timeout")
    max_concurrency: PositiveInt = Field(1024, description="ceiling of each endpoint's adaptive limit (with "
                                         "adaptive_concurrency: false, the requests of this role in flight at once)")
    adaptive_concurrency: bool = Field(True, description="each endpoint's concurrency starts low and adapts: to the "
                                       "server's queue where it exposes vLLM's /metrics, else to its latency; cut when "
                                       "it answers 429/503/504 or times out; max_concurrency is the ceiling")
    extra_body: dict[str, Any] = Field({}, description="extra request fields (e.g. top_k)")

    def api_key(self) -> str:
        if not self.api_key_env:
            return "EMPTY"  # local vLLM servers accept any key
        key = os.environ.get(self.api_key_env)
        if not key:
            raise InputError(f"api_key_env: environment variable {self.api_key_env} is not set")
        return key

    def check_environment(self) -> None:
        self.api_key()


class VLLMRole(RoleBase):
    """vLLM's offline engine in this process (a GPU machine without a server)."""

    backend: Literal["vllm"] = Field("vllm", description="vllm: vLLM's offline engine in this process")
    dtype: str = Field("auto", description="weight dtype")
    engine_kwargs: dict[str, Any] = Field({}, description="extra vllm.LLM(...) arguments")
    engine_process: bool = Field(True, description="vLLM's engine core in a process of its own (vLLM's default); "
                                 "false: in this process (vLLM's VLLM_ENABLE_V1_MULTIPROCESSING=0), which starts an "
                                 "engine ~5x faster on CPU (SmolLM2-135M: 3.7 s instead of 18 s), at the same "
                                 "tokens/s there")

    def check_environment(self) -> None:
        require_local_model(self.model)


class TransformersRole(RoleBase):
    """In-process generation with transformers, for small models and no server (the CPU quickstart)."""

    backend: Literal["transformers"] = Field("transformers",
                                             description="transformers: in-process generation, no server")
    dtype: str = Field("auto", description="weight dtype")

    def check_environment(self) -> None:
        require_local_model(self.model)


def require_local_model(model: str) -> None:
    """An in-process model must be a directory, or a hub id that can be had (in the local cache, or online)."""
    if Path(model).expanduser().exists():
        return
    hub_id = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", model) is not None
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        if not constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(model, "config.json"), str):
            return
    where = ", nor a hub model in the local cache (HF_HUB_OFFLINE is set)" if hub_id else ""
    raise EndpointError(f"{model}: no such model directory{where}")


async def answer_one_token(backend: Backend, where: str) -> None:
    """Preflight of an in-process backend (its model loaded when it was built): one 1-token chat."""
    try:
        await backend.generate([{"role": "user", "content": "Hi"}], Sampling(max_tokens=1), 1)
    except RequestError as exc:
        raise EndpointError(f"{where}: {exc}") from None


def _backend_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("backend", "openai")
    if isinstance(value, RoleBase):
        return value.backend  # type: ignore[attr-defined]
    return None


def _errors_without_tag(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validation errors of a role name its keys as the YAML does (``llm.evol.max_tokens``): pydantic puts the
    union's tag into the path (``llm.evol.openai.max_tokens``); this takes it out, and words a bad tag."""
    try:
        return handler(value)
    except ValidationError as exc:
        details: list[InitErrorDetails] = []
        for error in exc.errors():
            if error["type"] == "union_tag_invalid":
                *first, last = error["ctx"]["expected_tags"].split(", ")
                details.append(InitErrorDetails(type="literal_error", loc=("backend",), input=error["ctx"]["tag"],
                                                ctx={"expected": f"{', '.join(first)} or {last}"}))
            elif error["type"] == "union_tag_not_found":
                details.append(InitErrorDetails(type="model_type", loc=(), input=error["input"],
                                                ctx={"class_name": "role"}))
            else:
                details.append(InitErrorDetails(type=error["type"], loc=error["loc"][1:], input=error["input"],
                                                ctx=error.get("ctx", {})))
        raise ValidationError.from_exception_data(exc.title, details) from None


RoleConfig = Annotated[
    Union[Annotated[OpenAIRole, Tag("openai")], Annotated[VLLMRole, Tag("vllm")],
          Annotated[TransformersRole, Tag("transformers")]],
    Discriminator(_backend_tag),
    WrapValidator(_errors_without_tag),
]
"""How one role reaches its model and samples from it: one of the backend config models."""


def role_with_defaults(**defaults: Any) -> Any:
    """A role config type whose missing keys take these defaults (only keys the chosen backend has: e.g.
    `timeout_s` only for openai). Stages use it for roles whose paper defaults differ from the plain role's."""

    def fill(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        backend = {"openai": OpenAIRole, "vllm": VLLMRole, "transformers": TransformersRole}.get(
            value.get("backend", "openai"))
        known = backend.model_fields if backend is not None else {}
        return {**{k: v for k, v in defaults.items() if k in known}, **value}

    return Annotated[RoleConfig, BeforeValidator(fill)]
