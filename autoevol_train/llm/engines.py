"""In-process engines (vLLM's offline engine, transformers) kept for the whole of one `autoevol run`.

Why: each stage builds its own LLM pool, and an in-process backend loads its model when the pool is built. On the
CPU quickstart one vLLM engine costs seconds to build, and the same base model serves the optimize stage, every
arm's evolution and every arm's judge: kept, it is built once instead of six times. The cost: a kept engine holds
its memory (weights and KV cache) until the run ends, through the training stages too, so the pipeline shares
engines only when asked (`share_engines: true`), which suits a CPU run or one whose training has devices of its
own. Servers (the openai backend) are not kept: a client is cheap, and its connections belong to one stage's
event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from autoevol_train.llm.types import Backend, RoleConfig

__all__ = ["SharedEngines"]


class SharedEngines:
    """Engines by backend identity (`RoleConfig.backend_identity`: model, dtype, engine arguments); `close()` ends
    them all. Each stage's pool borrows them (`LLMPool(..., engines=...)`) and does not close them."""

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}

    def backend(self, config: RoleConfig, build: Callable[[RoleConfig], Backend]) -> Backend:
        key = config.backend_identity()
        if key not in self._backends:
            self._backends[key] = build(config)
        return self._backends[key]

    def close(self) -> None:
        backends, self._backends = list(self._backends.values()), {}

        async def close_all() -> None:
            for backend in backends:
                await backend.aclose()

        asyncio.run(close_all())

    def __enter__(self) -> "SharedEngines":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
