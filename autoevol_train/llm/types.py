"""The vocabulary every stage shares with the LLM layer: sampling parameters and completions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
        return asdict(self)


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


class RetryableError(Exception):
    """A transient backend failure (429, 5xx, timeout, dropped connection, malformed body): worth retrying."""


class FatalRequestError(Exception):
    """A request the backend will never answer (400, 404, context too long): recorded, not retried."""
