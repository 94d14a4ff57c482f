"""The circuit breaker of one role: stop a stage whose endpoint keeps failing, instead of spending every
remaining item's retry budget on it (with 7,473 seeds and a dead server, hours of back-off before an empty
result).

It opens when the role's first `first` requests all failed (a run that never worked), or when the failed share
of the last `window` requests reaches `max_failure_rate` (a server that died mid-run). Once open, every call of
the role raises `CircuitOpen` (an `EndpointError`: exit 3) naming the role, the URL, the model and the last
error. Answers completed before that are in the journal, so a re-run after the endpoint recovers resumes from
them.
"""

from __future__ import annotations

from collections import deque

from autoevol_train.errors import EndpointError
from autoevol_train.llm.types import BreakerConfig


class CircuitOpen(EndpointError):
    """A role's circuit breaker opened: its endpoint keeps failing."""


class Breaker:
    def __init__(self, role: str, model: str, config: BreakerConfig):
        self._role = role
        self._model = model
        self._config = config
        self._recent: deque[bool] = deque(maxlen=config.window or None)
        self._failed_in_window = 0
        self._seen = 0
        self._all_failed = True
        self.message: str | None = None  # set when the breaker opens

    def record(self, failure: str | None, where: str = "") -> None:
        """One finished request: `failure` is None for an answer, else its reason."""
        if self.message is not None:
            return
        self._seen += 1
        self._all_failed = self._all_failed and failure is not None
        if self._config.window:
            if len(self._recent) == self._recent.maxlen:
                self._failed_in_window -= not self._recent[0]
            self._recent.append(failure is None)
            self._failed_in_window += failure is not None
        if failure is None:
            return
        first, window = self._config.first, self._config.window
        window_full = window and len(self._recent) == window
        if first and self._seen == first and self._all_failed:
            reason = f"its first {first} requests all failed"
        elif window_full and self._failed_in_window >= self._config.max_failure_rate * window:
            reason = f"{self._failed_in_window} of its last {window} requests failed"
        else:
            return
        self.message = (
            f"{self._role}: {where or '?'} (model {self._model!r}): circuit breaker open, {reason}; last error: "
            f"{failure}. Answers so far are journaled: re-run once the endpoint serves again")

    def check(self) -> None:
        """Raise once the breaker is open (before a request, and before each retry)."""
        if self.message is not None:
            raise CircuitOpen(self.message)
