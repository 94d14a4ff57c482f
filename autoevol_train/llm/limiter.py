"""Adaptive concurrency per endpoint, so nobody has to tune `max_concurrency` to each server: a gradient limiter
of the concurrency-limits family (Netflix's Gradient/Vegas), plus a multiplicative cut on "too busy".

Why latency: a server with free decoding slots answers a request in its service time whatever else is in
flight; once every slot is busy, further requests queue and their latency grows. So the limit
- starts low (`INITIAL`, below a small server's slots) until the first window of answers has measured the
  baseline, then, in slow start, grows by one per answered request (doubling per round trip, as TCP does; at
  most `SLOW_START_GROWTH` times per window) until a window's latency exceeds `TOLERANCE` times the baseline;
- then, once per window (the next `max(MIN_WINDOW, limit / 2)` requests sent after the last change, averaged
  once `WINDOW_SHARE` of them are back: a window measures the current limit, and mostly not just its fastest
  answers), is multiplied by `TOLERANCE * baseline / window mean`, within [0.5, 1.5]: it grows while latency
  stays near the baseline (free slots) and settles where latency is `TOLERANCE` times the baseline, i.e. a small
  queue at the server that keeps every slot busy;
- is cut to `BACKOFF` times the requests in flight on 429/503/504 or a timeout, at most once per round trip
  (only a request sent after the last cut can cut again), which also ends slow start;
- does not change after a window where the endpoint was not kept busy (the stage had fewer requests to give:
  the window says nothing about the endpoint's capacity), and never exceeds the role's `max_concurrency`, the
  ceiling.

The baseline is the endpoint's latency without a queue: an average of the window means that are not inflated,
moving down fast and up slowly. Not their minimum: window means are noisy (a lognormal service time of sigma 0.6
has a coefficient of variation of 0.66), and a minimum over many windows falls so far below the typical mean
that noise alone would read as a queue.

The backend's balancer sends each request to the endpoint with the most room under its limit, so endpoints of
different capacity each get what they can take, and waits while every endpoint is full. A request rejected as
"busy" is retried after a short flat wait (the limit is what slows the client down; a Retry-After from the
server is honoured).
"""

from __future__ import annotations

import math

INITIAL = 8  # the first limit: below a small server's slots, so the baseline is measured without a queue
TOLERANCE = 1.5  # settle where latency is this times the baseline: about half a service time of queue
MIN_WINDOW = 16  # requests per window at least (more as the limit grows: half of it)
SLOW_START_GROWTH = 4
WINDOW_SHARE = 0.9  # a window ends when this share of its requests is back: not waiting for the slowest tail
NEAR = 1.2  # only windows below this times the baseline move it (an EWMA: down fast, up slowly)
BASELINE_DOWN = 0.5
BASELINE_UP = 0.1
BACKOFF = 0.9  # multiplicative decrease on "too busy": gentle, a server past its queue limit rejects only the excess


class EndpointLimit:
    """The concurrency limit of one endpoint. `adaptive=False` keeps it at the ceiling."""

    def __init__(self, ceiling: int, adaptive: bool = True):
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.limit = float(min(INITIAL, ceiling) if adaptive else ceiling)
        self.in_flight = 0
        self.cuts = 0
        self.slow_start = adaptive
        self.baseline = math.inf  # seconds: the endpoint's latency without a queue
        self._sent = 0
        self._sent_at_last_cut = 0
        self._new_window()

    @property
    def room(self) -> float:
        return max(self.limit, 1.0) - self.in_flight

    def start(self) -> int:
        """A request leaves for this endpoint; returns its ticket for `finish`."""
        self.in_flight += 1
        self._sent += 1
        self._window_peak = max(self._window_peak, self.in_flight)
        return self._sent

    def finish(self, ticket: int, latency_s: float | None, congested: bool) -> None:
        """A request is back: answered after `latency_s` seconds (None: not answered), or `congested` (the
        endpoint said "fewer at once")."""
        self.in_flight -= 1
        if not self.adaptive:
            return
        if congested and ticket > self._sent_at_last_cut:
            # The server said "fewer" while `in_flight + 1` requests were out: that, not a limit far above what
            # was in use (requests waiting in back-off are not in flight), is what gets cut.
            self.limit = max(1.0, min(self.limit, self.in_flight + 1) * BACKOFF)
            self._sent_at_last_cut = self._sent
            self.cuts += 1
            self.slow_start = False
        elif (self.slow_start and latency_s is not None and self.baseline < math.inf and self._busy()
              and self.limit < SLOW_START_GROWTH * self._window_limit):  # a window's signal lags: bound overshoot
            self.limit = min(float(self.ceiling), self.limit + 1.0)
        if not self._window_from < ticket <= self._window_from + self._window_size:
            return
        self._window_returned += 1
        if latency_s is not None:
            self._window_sum += latency_s
            self._window_count += 1
        if self._window_returned == math.ceil(WINDOW_SHARE * self._window_size):
            if self._window_count:
                self._end_window(self._window_sum / self._window_count)
            self._new_window()

    def _busy(self) -> bool:
        """The endpoint had at least half its limit in flight: the limit, not the stage, bounded the load."""
        return self._window_peak >= self.limit / 2

    def _end_window(self, mean: float) -> None:
        if self.baseline == math.inf:
            self.baseline = mean
        elif mean < NEAR * self.baseline:
            weight = BASELINE_DOWN if mean < self.baseline else BASELINE_UP
            self.baseline += weight * (mean - self.baseline)
        ratio = mean / self.baseline
        if ratio > TOLERANCE:
            self.slow_start = False
        if not self.slow_start and self._busy():
            factor = min(max(TOLERANCE / ratio, 0.5), 1.5)
            self.limit = min(float(self.ceiling), max(1.0, self.limit * factor))

    def _new_window(self) -> None:
        self._window_from = self._sent
        self._window_limit = self.limit
        self._window_size = max(MIN_WINDOW, round(self.limit / 2))
        self._window_returned = 0
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = self.in_flight
