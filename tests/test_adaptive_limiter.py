"""The adaptive concurrency limit (limiter.py), fed by a discrete-event model of a server: `slots` decoding slots,
requests beyond them queue (FIFO), optionally a 429 when more than `max_waiting` wait. Simulated time, seeded
lognormal service times: deterministic, no wall clock. The same limit against the real HTTP path is in
tests/test_llm_layer.py (scripted server)."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field

from autoevol_train.llm.limiter import (FRONT_END_GROWTH, INITIAL, PROBE_WINDOWS, QUEUE_MIN, QUEUE_SHARE, TOLERANCE,
                                        EndpointLimit)


@dataclass
class Run:
    answered: int = 0
    rejected: int = 0
    rejected_late: int = 0  # in the second half of the answers
    answered_late: int = 0
    busy_late: float = 0.0  # slot-seconds in the second half
    late_from: float = 0.0
    end: float = 0.0
    limits: list[float] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # the server's queue at each poll


def simulate(limit: EndpointLimit, slots: int, answers: int, median: float = 1.0, sigma: float = 0.6,
             max_waiting: int | None = None, outstanding: int | None = None, seed: int = 0,
             poll_s: float | None = None) -> Run:
    """Send whenever the limit has room (and fewer than `outstanding` are out: a stage with little work) until
    `answers` requests were answered. `poll_s`: the server exposes vLLM's gauges, read that often."""
    rng = random.Random(seed)
    events: list[tuple[float, int, str, int, float]] = []  # (time, order, kind, ticket, sent at)
    order = itertools.count()
    queue: deque[tuple[int, float]] = deque()
    busy, now, run = 0, 0.0, Run()
    if poll_s is not None:
        heapq.heappush(events, (poll_s, next(order), "poll", 0, 0.0))

    def serve(ticket: int, sent: float) -> None:
        service = median * rng.lognormvariate(0.0, sigma)
        if run.answered >= answers // 2:
            run.busy_late += service
        heapq.heappush(events, (now + service, next(order), "done", ticket, sent))

    while run.answered < answers:
        while limit.room >= 1 and (outstanding is None or limit.in_flight < outstanding):
            ticket = limit.start()
            if busy < slots:
                busy += 1
                serve(ticket, now)
            elif max_waiting is not None and len(queue) >= max_waiting:
                heapq.heappush(events, (now + 0.001, next(order), "429", ticket, now))
            else:
                queue.append((ticket, now))
        now, _, kind, ticket, sent = heapq.heappop(events)
        late = run.answered >= answers // 2
        if kind == "poll":
            limit.observe_queue(busy, len(queue))
            run.waiting.append(len(queue))
            heapq.heappush(events, (now + poll_s, next(order), "poll", 0, 0.0))
            continue
        if kind == "429":
            run.rejected += 1
            run.rejected_late += late
            limit.finish(ticket, None, congested=True)
        else:
            run.answered += 1
            run.answered_late += late
            if run.answered == answers // 2:
                run.late_from = now
            limit.finish(ticket, now - sent, congested=False)
            busy -= 1
            if queue:
                busy += 1
                serve(*queue.popleft())
        run.limits.append(limit.limit)
    run.end = now
    return run


def late_utilisation(run: Run, slots: int) -> float:
    return run.busy_late / (slots * (run.end - run.late_from))


def test_limit_starts_low_and_grows_to_fill_a_big_server():
    """256 slots, a ceiling of 1024: from INITIAL the limit grows past the slot count (slow start, then the
    gradient), keeps every slot busy, and stops well below the ceiling (a small queue, not 1024)."""
    limit = EndpointLimit(1024)
    run = simulate(limit, slots=256, answers=20_000)
    assert run.limits[0] <= INITIAL + 1
    assert 256 <= limit.limit <= 2 * TOLERANCE * 256
    assert late_utilisation(run, 256) >= 0.95


def test_limit_shrinks_on_latency_inflation_at_a_small_server():
    """8 slots that queue whatever they get (no 429s): slow start overshoots, latency inflates, the limit comes
    back down to a few requests beyond the slots, which stay busy."""
    limit = EndpointLimit(1024)
    run = simulate(limit, slots=8, answers=5_000)
    late = run.limits[len(run.limits) // 2:]
    assert limit.cuts == 0 and max(run.limits) > max(late)
    assert max(late) <= 2 * TOLERANCE * 8
    assert late_utilisation(run, 8) >= 0.9


def test_limit_shrinks_under_429s_and_keeps_them_rare():
    """16 slots, 429 beyond 16 waiting: the limit is cut, and in the second half of the run under 2 % of
    requests are rejected while the slots stay busy."""
    limit = EndpointLimit(1024)
    run = simulate(limit, slots=16, answers=10_000, max_waiting=16)
    assert limit.cuts > 0 and run.rejected > 0
    assert run.rejected_late / (run.rejected_late + run.answered_late) < 0.02
    assert late_utilisation(run, 16) >= 0.9


def test_limit_does_not_grow_when_the_stage_has_little_work_and_respects_the_ceiling():
    idle = EndpointLimit(1024)
    simulate(idle, slots=256, answers=2_000, outstanding=INITIAL // 2 - 1)
    assert idle.limit == INITIAL  # the endpoint was never kept busy: nothing says it can take more

    capped = EndpointLimit(24)
    simulate(capped, slots=256, answers=2_000)
    assert capped.limit == 24

    fixed = EndpointLimit(64, adaptive=False)
    run = simulate(fixed, slots=4, answers=500, max_waiting=4)
    assert run.rejected > 0 and (fixed.limit, fixed.cuts) == (64, 0)


def test_server_queue_steers_the_limit_where_metrics_exist():
    """The gauges of a vLLM server, one step at a time: nothing waits and the limit was reached → slow start
    doubles it; a queue beyond twice the target → what of ours runs plus the target; a small queue → hold;
    a limit the stage did not reach → no growth."""
    limit = EndpointLimit(1024, initial=16)
    tickets = [limit.start() for _ in range(16)]
    limit.observe_queue(running=16, waiting=0)
    assert limit.queue_steered and limit.limit == 32
    tickets += [limit.start() for _ in range(16)]  # 32 in flight, the server runs 20 of them
    limit.observe_queue(running=20, waiting=12)
    assert limit.limit == 32 - 12 + QUEUE_MIN and not limit.slow_start
    limit.observe_queue(running=20, waiting=QUEUE_MIN)  # the target queue: hold
    assert limit.limit == 32 - 12 + QUEUE_MIN
    for ticket in tickets:
        limit.finish(ticket, 0.01, congested=False)  # latency says nothing once the queue steers
    assert limit.limit == 32 - 12 + QUEUE_MIN
    limit.start()
    limit.observe_queue(running=1, waiting=0)  # free slots, but the stage sent only one request
    assert limit.limit == 32 - 12 + QUEUE_MIN


def test_server_queue_limit_grows_gently_when_the_front_end_holds_our_requests():
    """Nothing waits in the scheduler, yet the server runs few of the requests we have in flight (they sit in its
    HTTP / tokenising front end, as on real vLLM over a tiny model on a busy CPU): the limit still grows, by
    FRONT_END_GROWTH per poll, not by doubling; a queue then stops it as before."""
    limit = EndpointLimit(1024, initial=16)
    for _ in range(16):
        limit.start()
    limit.observe_queue(running=2, waiting=0)
    assert limit.limit == 16 * FRONT_END_GROWTH
    for _ in range(4):
        limit.start()
    limit.observe_queue(running=3, waiting=0)
    assert limit.limit == 16 * FRONT_END_GROWTH ** 2
    limit.observe_queue(running=3, waiting=40)  # a queue: cut to what runs plus the target
    assert limit.limit < 16 * FRONT_END_GROWTH


def test_server_queue_target_covers_what_the_front_end_holds():
    """A front end that is the bottleneck (vLLM's HTTP server and tokeniser on a busy CPU) holds ~72 of our 200
    requests poll after poll, then hands them on in a burst: the poll that sees the queue sees the front end
    empty. The queue to keep covers what the front end usually holds (a freed slot's replacement crosses it), so
    that burst cuts nothing; the earlier rule (5 % of what runs) cut to 134 and starved the front end. A queue
    that stays while the front end stays empty is cut as before, once the front end's average has faded."""
    limit = EndpointLimit(200, initial=200)
    for _ in range(200):
        limit.start()
    for _ in range(20):
        limit.observe_queue(running=128, waiting=0)  # 72 in the front end; the ceiling holds the limit at 200
    assert limit.limit == 200 and 70 < limit.front_end <= 72
    limit.observe_queue(running=128, waiting=70)  # the burst: 2 left in the front end
    assert limit.limit == 200
    for _ in range(10):
        limit.observe_queue(running=128, waiting=70)  # the front end stays empty: a real queue at the scheduler
    assert 128 + QUEUE_SHARE * 128 <= limit.limit < 200


def test_server_queue_limit_fills_the_slots_with_a_small_queue():
    """64 slots whose gauges are read every 0.5 s: from INITIAL the limit grows past the slots, then holds a
    small queue (a few % of the slots), the slots stay busy, and no latency rule pulls it below them."""
    limit = EndpointLimit(1024)
    run = simulate(limit, slots=64, answers=20_000, median=0.5, poll_s=0.5)
    late = run.limits[len(run.limits) // 2:]
    assert limit.queue_steered and run.limits[0] <= INITIAL + 1
    assert 64 <= min(late) and max(late) <= 64 * 1.25
    assert sum(run.waiting[len(run.waiting) // 2:]) / len(run.waiting[len(run.waiting) // 2:]) <= 8
    assert late_utilisation(run, 64) >= 0.97


def keep_full(limit: EndpointLimit, latency: float, answers: int, out: deque) -> list[tuple[int, float]]:
    """Keep the limit full, answer `answers` requests oldest first after `latency`; (windows since the last
    cut, limit) after each."""
    seen = []
    for _ in range(answers):
        while limit.room >= 1:
            out.append(limit.start())
        limit.finish(out.popleft(), latency, congested=False)
        seen.append((limit._since_cut, limit.limit))
    return seen


def test_after_a_cut_the_limit_approaches_its_level_slowly():
    """An API that said 429 at some level: without further 429s the limit comes back to just under that level
    quickly (concave), stays under it for PROBE_WINDOWS windows although latency says "more", then probes past
    it, by a little at first (convex), where without a cut it would grow by half per window."""
    limit, out = EndpointLimit(1024), deque()
    keep_full(limit, 1.0, 300, out)  # slow start: latency never inflates, the limit grows
    limit.finish(out.popleft(), None, congested=True)
    cut_at = limit.last_cut
    assert cut_at is not None and limit.limit == cut_at * 0.9 and limit.cuts == 1
    seen = keep_full(limit, 1.0, 12_000, out)
    before_probe = [value for windows, value in seen if windows < PROBE_WINDOWS]
    assert max(before_probe) <= cut_at - 1 and max(before_probe) >= cut_at - 2
    assert max(value for windows, value in seen if windows == PROBE_WINDOWS) <= cut_at
    assert max(value for windows, value in seen if windows < 2 * PROBE_WINDOWS) <= cut_at
    assert limit.limit > cut_at  # probing again: a server that got faster is found
