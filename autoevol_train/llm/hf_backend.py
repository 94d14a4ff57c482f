"""In-process generation with `transformers`, for small models and no server: the CPU quickstart's default.

One worker thread owns the model and answers requests one by one (a tiny model answers in milliseconds;
anything bigger belongs on vLLM). Sampling is seeded per request, so a re-run reproduces its answers.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from autoevol_train.errors import EndpointError
from autoevol_train.llm.types import (Completion, FatalRequestError, Messages, PreflightMode, Sampling,
                                      TransformersRole, answer_one_token)


class TransformersBackend:
    def __init__(self, config: TransformersRole):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self._where = config.model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
            dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
            self.model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype).eval()
        except OSError as exc:  # a directory without weights, a hub id that cannot be fetched
            raise EndpointError(f"{config.model}: cannot load the model: {str(exc).splitlines()[0]}") from None
        if self.tokenizer.chat_template is None:
            raise EndpointError(f"{config.model}: the tokenizer has no chat template; the transformers backend "
                                "needs one to format chats")
        self._max_positions = self.model.config.max_position_embeddings
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")

    async def generate(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._generate, messages, sampling, n)

    def _generate(self, messages: Messages, sampling: Sampling, n: int) -> list[Completion]:
        torch = self._torch
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        prompt_len = inputs["input_ids"].shape[1]
        if prompt_len >= self._max_positions:
            raise FatalRequestError(f"prompt of {prompt_len} tokens exceeds the model's {self._max_positions}",
                                    self._where)
        max_new = min(sampling.max_tokens, self._max_positions - prompt_len)
        sample = sampling.temperature > 0
        torch.manual_seed(sampling.seed if sampling.seed is not None else 0)
        with torch.no_grad():
            output = self.model.generate(
                **inputs, max_new_tokens=max_new, do_sample=sample, num_return_sequences=n,
                temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
                stop_strings=list(sampling.stop) or None, tokenizer=self.tokenizer if sampling.stop else None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        completions = []
        eos = self.tokenizer.eos_token_id
        for row in output[:, prompt_len:]:
            tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
            ended = bool(tokens) and tokens[-1] == eos
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for stop in sampling.stop:  # OpenAI semantics: the stop string itself is not returned
                if stop in text:
                    text, ended = text.split(stop, 1)[0], True
            reason = "length" if not ended and len(tokens) >= max_new else "stop"
            completions.append(Completion.checked(text, reason, prompt_len if not completions else 0, len(tokens)))
        return completions

    async def preflight(self, mode: PreflightMode) -> None:
        await answer_one_token(self, self._where)

    async def aclose(self) -> None:
        self._worker.shutdown(wait=True)
