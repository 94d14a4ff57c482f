"""Adaptive concurrency per endpoint, so nobody has to tune `max_concurrency` to each server.

Two signals, the better one first:

**The server's own queue** (vLLM's `/metrics`, read by server_metrics.py every `POLL_S` while requests are in
flight). vLLM's scheduler runs what fits (decoding slots, KV cache) and queues the rest, so `num_requests_waiting`
says directly whether the server has room. While nothing waits, the limit was reached and the server runs most of
what we sent (`ARRIVED`), the limit doubles per poll until the first queue is seen (slow start), later grows by the
target queue per poll; while nothing waits but the server runs far fewer than we sent (its HTTP / tokenising front
end is the bottleneck, as for a tiny model on a busy CPU, or the client is too slow to deliver them) it grows by
`FRONT_END_GROWTH` per poll: throughput still rises with concurrency there; once more than twice the target queue
waits, it is set to what of ours runs plus that target plus what of ours the front end holds (the queue counted in
proportion to our share of the server's requests: nearly the same answer at every poll while the excess drains,
lower only as the front end's average fades, so it cannot overshoot downwards). The target queue is `QUEUE_SHARE` of
what runs, at least `QUEUE_MIN`, and at least what of ours the front end holds (averaged over polls,
`FRONT_END_AVERAGE`): a slot freed is refilled from the queue at once, but the queue only by answers that have
crossed the front end twice, so it must hold what is in transit or it runs dry between the front end's bursts. On a
GPU server the front end holds almost nothing; on a front end that is the bottleneck (vLLM's HTTP server and
tokeniser on a busy CPU) it holds many, and hands them on in bursts, so the poll that sees the queue is the one poll
where the front end is empty: read at that poll, with a 5 % target, the cut starved the front end (on real vLLM over
the tiny model the limit swung between ~134 and ~330 while the best fixed concurrency was 256). Latency is not used
here: a batching server's latency grows with its batch even while its throughput does, so latency would stop the
limit short of a full server.

**Latency** (any other server; a gradient limiter of the concurrency-limits family, Netflix's Gradient/Vegas).
A server with free slots answers in its service time whatever else is in flight; once every slot is busy,
further requests queue and their latency grows. So the limit
- starts at `initial`, grows by one per answered request in slow start (doubling per round trip, as TCP does;
  at most `SLOW_START_GROWTH` times per window) until a window's latency exceeds `TOLERANCE` times the baseline;
- then, once per window (the next `max(MIN_WINDOW, limit / 2)` requests sent after the last change, averaged
  once `WINDOW_SHARE` of them are back), is multiplied by `TOLERANCE * baseline / window mean`, within
  [0.5, 1.5]: it grows while latency stays near the baseline and settles where latency is `TOLERANCE` times
  the baseline, a small queue at the server that keeps every slot busy.
The baseline is the latency without a queue: an average of the window means that are not inflated, moving down
fast and up slowly (not their minimum: window means are noisy, and a minimum over many windows falls so far
below the typical mean that noise alone would read as a queue).

**Both**: on 429/503/504 or a timeout the limit is cut to `BACKOFF` times the requests in flight, at most once
per round trip (only a request sent after the last cut can cut again); that level is remembered, and growth
afterwards approaches it slowly, CUBIC-like: each step goes at most half-way to just below it (concave), and
only after `PROBE_WINDOWS` windows (or polls) without a cut may it pass it, by 1, then 4, 9... (convex) — an API
that rate-limits at a fixed level sees a probe now and then, not a 429 storm every few round trips, and a server
that got faster is found again. The limit never changes
after an interval where it was not reached (the stage had fewer requests to give: that says nothing about the
endpoint's capacity), and never exceeds the role's `max_concurrency`, the ceiling.

The backend's balancer sends each request to the endpoint with the most room under its limit, so endpoints of
different capacity each get what they can take, and waits while every endpoint is full. A request rejected as
"busy" is retried after a short flat wait, or after the server's Retry-After when it asks for longer.
"""

from __future__ import annotations

import math

INITIAL = 8  # the first limit: below a small server's slots, so the first window measures latency without a queue
TOLERANCE = 1.5  # settle where latency is this times the baseline: about half a service time of queue
MIN_WINDOW = 16  # requests per window at least (more as the limit grows: half of it)
SLOW_START_GROWTH = 4
WINDOW_SHARE = 0.9  # a window ends when this share of its requests is back: not waiting for the slowest tail
NEAR = 1.2  # only windows below this times the baseline move it (an EWMA: down fast, up slowly)
BASELINE_DOWN = 0.5
BASELINE_UP = 0.1
BACKOFF = 0.9  # multiplicative decrease on "too busy": gentle, a server past its queue limit rejects only the excess
PROBE_WINDOWS = 8  # after a cut, the limit stays below its level for this many windows or polls
QUEUE_SHARE = 0.05  # the server queue to keep (metrics path): this share of the requests it runs...
QUEUE_MIN = 2  # ...and at least this many, so a slot freed while the client answers is refilled at once
ARRIVED = 0.75  # grow at full speed only while the server runs at least this share of our requests in flight...
FRONT_END_GROWTH = 1.25  # ...else by this factor per poll (a front-end-bound server, or a slow client)
FRONT_END_AVERAGE = 0.2  # weight of each poll in the average of our requests the front end holds (~2.5 s)


class EndpointLimit:
    """The concurrency limit of one endpoint. `adaptive=False` keeps it at the ceiling."""

    def __init__(self, ceiling: int, adaptive: bool = True, initial: int = INITIAL):
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.limit = float(min(initial, ceiling) if adaptive else ceiling)
        self.in_flight = 0
        self.cuts = 0
        self.slow_start = adaptive
        self.baseline = math.inf  # seconds: the endpoint's latency without a queue
        self.queue_steered = False  # the endpoint's /metrics answers: its queue, not latency, steers the limit
        self.front_end = 0.0  # ours in flight but neither running nor waiting at the server, averaged over polls
        self.last_cut: float | None = None  # requests in flight when the endpoint last said "too busy"
        self._since_cut = 0  # windows or polls since then
        self._sent = 0
        self._sent_at_last_cut = 0
        self._poll_peak = 0
        self._new_window()

    @property
    def room(self) -> float:
        return max(self.limit, 1.0) - self.in_flight

    def start(self) -> int:
        """A request leaves for this endpoint; returns its ticket for `finish`."""
        self.in_flight += 1
        self._sent += 1
        self._window_peak = max(self._window_peak, self.in_flight)
        self._poll_peak = max(self._poll_peak, self.in_flight)
        return self._sent

    def finish(self, ticket: int, latency_s: float | None, congested: bool) -> None:
        """A request is back: answered after `latency_s` seconds (None: not answered), or `congested` (the
        endpoint said "fewer at once")."""
        self.in_flight -= 1
        if not self.in_flight:
            self._poll_peak = 0  # idle: what was reached before says nothing about the next poll's interval
        if not self.adaptive:
            return
        if congested and ticket > self._sent_at_last_cut:
            # The server said "fewer" while `in_flight + 1` requests were out: that, not a limit far above what
            # was in use (requests waiting in back-off are not in flight), is what gets cut.
            self.last_cut = min(self.limit, self.in_flight + 1.0)
            self.limit = max(1.0, self.last_cut * BACKOFF)
            self._since_cut = 0
            self._sent_at_last_cut = self._sent
            self.cuts += 1
            self.slow_start = False
        elif (self.slow_start and not self.queue_steered and latency_s is not None and self._busy()
              and self.limit < SLOW_START_GROWTH * self._window_limit):  # a window's signal lags: bound overshoot
            self.limit = self._grown(self.limit + 1.0)
        if self.queue_steered or not self._window_from < ticket <= self._window_from + self._window_size:
            return
        self._window_returned += 1
        if latency_s is not None:
            self._window_sum += latency_s
            self._window_count += 1
        if self._window_returned == math.ceil(WINDOW_SHARE * self._window_size):
            if self._window_count:
                self._end_window(self._window_sum / self._window_count)
            self._new_window()

    def observe_queue(self, running: float, waiting: float) -> None:
        """The endpoint's own gauges (vLLM's num_requests_running / num_requests_waiting), read every poll while
        requests are in flight: from now on they, not latency, steer the limit."""
        self.queue_steered = True
        reached = self._poll_peak >= self.limit - 1  # the limit, not the stage, bounded the load
        self._poll_peak = self.in_flight
        if not self.adaptive:
            return
        self._since_cut += 1
        # Ours in the server's HTTP / tokenising front end or on the wire (none seen while others' requests fill it).
        self.front_end += FRONT_END_AVERAGE * (max(0.0, self.in_flight - running - waiting) - self.front_end)
        # A slot freed is refilled from the queue at once, but the queue itself only by answers that crossed the
        # front end twice: it must hold at least what is in transit, or it runs dry between the front end's bursts.
        target = max(QUEUE_MIN, QUEUE_SHARE * running, self.front_end)
        if waiting:
            self.slow_start = False  # a queue: the server's capacity is found, no more doubling
        if waiting > 2 * target:  # every slot is busy and more than the target waits: keep what runs + target + front
            ours = min(1.0, self.in_flight / max(running + waiting, 1.0))  # other clients' queue is not ours to cut
            keep = ours * (running + target) + self.front_end
            self.limit = max(1.0, self.limit / 2, min(self.limit, keep))
        elif waiting == 0 and reached:  # free slots
            if running >= ARRIVED * self.in_flight:  # and our requests reach the server's scheduler
                self.limit = self._grown(2 * self.limit if self.slow_start else self.limit + target)
            else:
                # Most of ours are elsewhere: in the server's HTTP / tokenising front end (a small model on a busy
                # CPU answers faster than its front end feeds it: its gauges read ~0 running while throughput still
                # rises with concurrency) or on a client too slow to deliver them. Grow, but gently, so a slow
                # client does not run the limit to its ceiling within seconds.
                self.limit = self._grown(self.limit * FRONT_END_GROWTH)

    def stop_queue_steering(self) -> None:
        """The endpoint's /metrics stopped answering: back to latency (a fresh window, slow start over)."""
        if self.queue_steered:
            self.queue_steered = False
            self._new_window()

    def _grown(self, wanted: float) -> float:
        """`wanted`, within the ceiling, and after a cut approaching its level slowly (see the module doc)."""
        if self.last_cut is not None:
            below = self.last_cut - 1 + (self._since_cut // PROBE_WINDOWS) ** 2  # probing past it: convex
            step = min(below, max(self.limit + 1, (self.limit + below) / 2))  # approaching it: concave
            wanted = min(wanted, max(self.limit, step))
        return min(float(self.ceiling), max(1.0, wanted))

    def _busy(self) -> bool:
        """The endpoint had at least half its limit in flight: the limit, not the stage, bounded the load."""
        return self._window_peak >= self.limit / 2

    def _end_window(self, mean: float) -> None:
        self._since_cut += 1
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
            wanted = self.limit * factor
            self.limit = self._grown(wanted) if factor > 1 else max(1.0, wanted)

    def _new_window(self) -> None:
        self._window_from = self._sent
        self._window_limit = self.limit
        self._window_size = max(MIN_WINDOW, round(self.limit / 2))
        self._window_returned = 0
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = self.in_flight
