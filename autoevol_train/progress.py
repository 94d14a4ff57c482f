"""A progress bar over a stage's items that also shows the LLM pool's token throughput."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from autoevol_train.llm.client import LLMPool


class Progress:
    """A progress bar over items with the pool's token throughput: items/s, ETA, tokens/s, failures."""

    def __init__(self, total: int | None, desc: str, pool: LLMPool | None = None, unit: str = "item"):
        self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)
        self._pool = pool
        self._start = time.monotonic()
        self._tokens0 = pool.total_tokens() if pool else 0

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self._pool is not None:
            elapsed = max(time.monotonic() - self._start, 1e-9)
            postfix["tok/s"] = f"{(self._pool.total_tokens() - self._tokens0) / elapsed:.0f}"
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
