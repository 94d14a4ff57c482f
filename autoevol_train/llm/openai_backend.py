"""Backend for any OpenAI-compatible chat server (vLLM first), through the official `openai` client.

Several base URLs are balanced by load: each request goes to the endpoint with the fewest requests in
flight, so a slow server gets less work instead of a fixed share. The client's own retries are off; the
layer above retries with backoff, and this module only sorts failures into transient (`RetryableError`) and
final (`FatalRequestError`).
"""

from __future__ import annotations

import json
import os

import openai

from autoevol_train.llm.types import Completion, FatalRequestError, Messages, OpenAIRole, RetryableError, Sampling

_RETRYABLE_STATUS = {408, 409, 425, 429}


class OpenAIBackend:
    def __init__(self, config: OpenAIRole):
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env)
            if not api_key:
                raise ValueError(f"role model {config.model!r}: environment variable {config.api_key_env} "
                                 "(api_key_env) is not set")
        else:
            api_key = "EMPTY"  # local vLLM servers accept any key
        self._model = config.model
        self._extra_body = dict(config.extra_body)
        self._clients = [
            openai.AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=config.timeout_s)
            for url in config.base_urls
        ]
        self._in_flight = [0] * len(self._clients)
        self._turn = 0

    def _pick(self) -> int:
        """Least requests in flight; ties go round-robin so idle endpoints share the first requests."""
        self._turn += 1
        count = len(self._clients)
        return min(range(count), key=lambda i: (self._in_flight[i], (i - self._turn) % count))

    async def generate(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]:
        index = self._pick()
        self._in_flight[index] += 1
        try:
            response = await self._clients[index].chat.completions.create(
                model=self._model, messages=messages, n=n, temperature=sampling.temperature,
                top_p=sampling.top_p, max_tokens=sampling.max_tokens, seed=sampling.seed,
                stop=list(sampling.stop) or None, extra_body=self._extra_body or None,
            )
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise RetryableError(type(exc).__name__) from exc
        except openai.APIStatusError as exc:
            reason = f"http_{exc.status_code}: {exc.message[:200]}"
            if exc.status_code >= 500 or exc.status_code in _RETRYABLE_STATUS:
                raise RetryableError(reason) from exc
            raise FatalRequestError(reason) from exc
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
            raise RetryableError(f"malformed response: {str(exc)[:200]}") from exc
        finally:
            self._in_flight[index] -= 1
        choices = sorted(response.choices or [], key=lambda c: c.index)
        if len(choices) != n:
            raise RetryableError(f"malformed response: {len(choices)} choices for n={n}")
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

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()
