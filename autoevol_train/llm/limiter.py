"""Adaptive concurrency per endpoint (AIMD), so one role's `max_concurrency` does not have to be tuned to each
server: an endpoint that answers "too busy" (429, 503, 504, timeouts) gets fewer requests at once, and its limit
grows back while it answers.

The limit starts at the role's `max_concurrency` (the ceiling: a fixed value remains the upper bound), is cut
to `BACKOFF` times the requests in flight on a congestion signal — at most once per round trip: only a request
sent after the last cut can cut again — and grows by one per `limit` answers. The backend's balancer sends each
request to the endpoint with the most room under its limit and waits while every endpoint is full. A request
rejected as "busy" is retried after a short flat wait, not an exponential back-off: the limit is what slows the
client down (a Retry-After from the server is honoured).
"""

from __future__ import annotations

BACKOFF = 0.9  # multiplicative decrease: gentle, as a server past its queue limit rejects only the excess


class EndpointLimit:
    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.in_flight = 0
        self.cuts = 0
        self._sent = 0
        self._sent_at_last_cut = 0

    @property
    def room(self) -> float:
        return max(self.limit, 1.0) - self.in_flight

    def start(self) -> int:
        """A request leaves for this endpoint; returns its ticket for `finish`."""
        self.in_flight += 1
        self._sent += 1
        return self._sent

    def finish(self, ticket: int, answered: bool, congested: bool) -> None:
        self.in_flight -= 1
        if congested and ticket > self._sent_at_last_cut:
            # The server said "fewer" while `in_flight + 1` requests were out: that, not a limit far above what
            # was in use (requests waiting in back-off are not in flight), is what gets cut.
            self.limit = max(1.0, min(self.limit, self.in_flight + 1) * BACKOFF)
            self._sent_at_last_cut = self._sent
            self.cuts += 1
        elif answered and self.limit < self.ceiling:
            self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)
