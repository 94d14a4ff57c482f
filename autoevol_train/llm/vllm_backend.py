"""vLLM's offline engine in this process, fed in micro-batches.

Requests queue up while the engine works; each time it is free it takes everything queued (up to the role's
`max_concurrency`) as one `LLM.chat` batch. vLLM schedules inside the batch continuously, so the only
barrier is between micro-batches, and under load they are full. Use it on a machine with a GPU and no
server; for sharing a model between processes or machines, run `vllm serve` and use the openai backend.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from autoevol_train.llm.types import (Completion, FatalRequestError, Messages, PreflightMode, Sampling, VLLMRole,
                                      answer_one_token)


_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"


class VLLMBackend:
    def __init__(self, config: VLLMRole):
        from vllm import LLM  # heavy: only imported when a role asks for this backend

        # vLLM reads its engine-process switch from the environment while it builds the engine: set for the build
        # alone, it changes this engine and nothing else in the process.
        previous = os.environ.get(_MULTIPROCESSING)
        if not config.engine_process:
            os.environ[_MULTIPROCESSING] = "0"
        try:
            self._llm = LLM(model=config.model, dtype=config.dtype, **config.engine_kwargs)
        finally:
            if previous is None:
                os.environ.pop(_MULTIPROCESSING, None)
            else:
                os.environ[_MULTIPROCESSING] = previous
        # vLLM applies the model's generation_config.json only to requests without SamplingParams; its repetition
        # penalty (e.g. the fetched SmolLM2's, against greedy loops) is kept here, the role decides the rest.
        self._repetition_penalty = self._llm.get_default_sampling_params().repetition_penalty
        self._where = config.model
        self._max_batch = config.max_concurrency
        # Bound to the event loop that feeds them; a pipeline that keeps the engine (llm/engines.py) feeds it
        # from each stage's own loop, so they are made anew when the loop changes.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._drainer: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-engine")

    async def generate(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]:
        if self._loop is not asyncio.get_running_loop():
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._drainer = asyncio.create_task(self._drain())
        future: asyncio.Future = self._loop.create_future()
        await self._queue.put((messages, sampling, n, future))
        return await future

    async def _drain(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self._max_batch:
                batch.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._worker, self._run_batch, batch)
            except Exception:  # one bad request (e.g. too long) fails a whole vLLM batch: retry them alone
                results = [await loop.run_in_executor(self._worker, self._run_alone, item) for item in batch]
            for (*_, future), completions in zip(batch, results):
                if future.done():
                    continue
                if isinstance(completions, Exception):
                    future.set_exception(completions)
                else:
                    future.set_result(completions)

    def _run_alone(self, item: tuple[Messages, Sampling, int, Any]) -> list[Completion] | Exception:
        try:
            return self._run_batch([item])[0]
        except Exception as exc:
            return FatalRequestError(f"vLLM engine: {type(exc).__name__}: {str(exc)[:200]}", self._where)

    def _run_batch(self, batch: list[tuple[Messages, Sampling, int, Any]]) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = [
            SamplingParams(n=n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed,
                           stop=list(s.stop) or None, repetition_penalty=self._repetition_penalty)
            for _, s, n, _ in batch
        ]
        outputs = self._llm.chat([m for m, *_ in batch], sampling_params=params, use_tqdm=False)
        results = []
        for output in outputs:
            prompt_tokens = len(output.prompt_token_ids or [])
            results.append([
                Completion.checked(o.text, o.finish_reason, prompt_tokens if i == 0 else 0, len(o.token_ids))
                for i, o in enumerate(sorted(output.outputs, key=lambda o: o.index))
            ])
        return results

    async def preflight(self, mode: PreflightMode) -> None:
        await answer_one_token(self, self._where)

    async def aclose(self) -> None:
        """Also stops the engine's core process: a pipeline builds one engine per stage, and each would keep its
        weights and KV cache in memory until the pipeline ends."""
        if self._drainer is not None:
            self._drainer.cancel()
        self._worker.shutdown(wait=True)
        self._llm.llm_engine.engine_core.shutdown()
