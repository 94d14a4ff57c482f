"""`autoevol optimize`: the Auto Evol-Instruct loop that optimises the evolving method.

Per step t (paper §3): the evol LLM evolves a mini-batch l rounds with the incumbent method e_{t-1} (the
trajectory) → the optimizer LLM says which cases failed and why (m analyses sampled in one request) and, in
the same conversation, rewrites the method (m rewrites in parallel) → the incumbent and every candidate
evolve the development set once and the evol LLM answers each evolved instruction → the failure rate λ
(failures / |D|). As in Eq. 2 the step's best candidate becomes e_t even when it only ties (ties broken by
fewer request errors, then the lower candidate index); the output is the best method so far, which changes
only on a strict improvement. The loop runs `steps` steps, or stops after `patience` steps in a row without
a strict improvement (a single tie never ends it) or at λ = 0.

All calls of a phase go through the LLM layer at once, and the incumbent's dev evaluation runs beside the
trajectory, so a step lasts about its critical path: l evolutions → analysis → rewrite → evolution + answer.

Resuming: every step ends by rewriting `history.jsonl` atomically; a re-run replays the finished steps from
it and continues, and the call journal answers every call the killed run had completed, so the result equals
an uninterrupted run's. The pool, dev set and mini-batches come from seeded generators, never from state.

Official-code deviations are named options: `trajectory_rounds: 1`, `llm.optimizer.temperature: 0`,
`selection: length_weighted`, `dev_sampling: per_step`.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt

from autoevol_train.config import InputError, StrictModel
from autoevol_train.errors import ResultError
from autoevol_train.evol.attempt import Attempt, evolve_once, evolve_text, tokens
from autoevol_train.evol.failures import REQUEST_ERRORS, FailureRules, format_counts
from autoevol_train.data.reader import load_prompt
from autoevol_train.evol.methods import INSTRUCTION_LABEL, EvolvingMethod, fill, starting_method
from autoevol_train.evol.records import DevRow, HistoryRow, best_so_far
from autoevol_train.data.formats import SeedSource, iter_seed_rows
from autoevol_train.llm.client import LLMClient, LLMPool
from autoevol_train.llm.engines import SharedEngines
from autoevol_train.llm.scheduler import map_in_order
from autoevol_train.llm.types import Completion, RoleConfig, role_with_defaults
from autoevol_train.progress import Progress
from autoevol_train.rundir import write_atomic
from autoevol_train.stage import StageRun
from autoevol_train.tracking import REPORT_TO_HELP, ReportTo, TrackerRun, optimize_step_metrics

__all__ = ["OptimizeConfig", "run_optimize", "load_seed_instructions", "extract_optimized_method"]

# The optimizer role, with the paper's sampling as defaults (the official code decodes greedily).
OptimizerRoleConfig = role_with_defaults(temperature=0.6, top_p=0.95, max_tokens=4096, timeout_s=600.0)


class OptimizeLLMConfig(StrictModel):
    evol: RoleConfig = Field(description="rewrites instructions and answers them (paper: temperature 0)")
    optimizer: OptimizerRoleConfig = Field(description="analyses trajectories and rewrites the method "
                                           "(defaults: temperature 0.6, top_p 0.95, max_tokens 4096, timeout_s 600)")


class OptimizeConfig(StrictModel):
    """The optimisation loop. Defaults are the paper's settings (App. F.2)."""

    seeds: SeedSource = Field(description="seed data in any supported format (first user turn of each row)")
    llm: OptimizeLLMConfig
    initial_method: str = Field("initial", description="'initial' (universal four-step method), 'weak' "
                                "(ablation) or the path of a method text file")
    pool_size: PositiveInt = Field(2000, description="seed instructions sampled for the optimisation")
    dev_size: PositiveInt = Field(50, description="development set D, disjoint from the mini-batches")
    batch_size: PositiveInt = Field(10, description="mini-batch evolved into a trajectory each step")
    trajectory_rounds: PositiveInt = Field(3, description="l: evolutions per trajectory (official code: 1)")
    candidates: PositiveInt = Field(5, description="m: optimisations sampled per step")
    steps: PositiveInt = Field(10, description="T: maximum number of steps")
    early_stopping: bool = Field(True, description="stop early when the best λ stops decreasing (or reaches 0); "
                                 "false runs all T steps, as the paper's steps ablation (Fig. 5b)")
    patience: PositiveInt = Field(3, description="steps in a row without a strict improvement of the best "
                                  "method before stopping (1 would let a single tie end the run)")
    selection: Literal["failure_rate", "length_weighted"] = Field(
        "failure_rate", description="failure_rate: lowest λ; length_weighted (official code): highest "
        "success rate × mean response words / mean evolved-instruction words")
    dev_sampling: Literal["fixed", "per_step"] = Field(
        "fixed", description="fixed: one disjoint dev set; per_step (official code): a new dev sample of the "
        "whole pool each step, overlapping the mini-batches")
    failures: FailureRules = Field(default_factory=lambda: FailureRules(elimination=False),
                                   description="what counts as a failed evolution (paper: F alone)")
    seed: int = Field(0, ge=0, description="seeds the pool, dev and mini-batch sampling")
    max_in_flight: PositiveInt = Field(512, description="dev items evaluated at once (calls are further "
                                       "bounded by each role's max_concurrency)")
    report_to: ReportTo = Field("none", description=REPORT_TO_HELP)


# --- seeds -------------------------------------------------------------------------------------------------

def load_seed_instructions(seeds: SeedSource) -> tuple[list[str], str]:
    """Distinct seed instructions (file order): each row's first user turn, through the data module's reader
    (every seed format, local files or hub datasets, errors naming file, row and field)."""
    instructions: dict[str, None] = {}
    for row in iter_seed_rows(seeds):
        first_user = next(m["content"] for m in row["messages"] if m["role"] == "user")
        instructions.setdefault(first_user.strip(), None)
    return list(instructions), seeds.path


# --- the optimizer's answer --------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)\n[ \t]*```", re.DOTALL)
_UNNAMED_FENCES = ("", "text", "markdown", "md", "plaintext")
_OPTIMIZED = re.compile(r"optimi[sz]ed[ \t_-]*method", re.IGNORECASE)
_TRAILING_SLOT = re.compile(rf"\n\s*{re.escape(INSTRUCTION_LABEL)}\s*(?:\{{instruction\}}|<[^>\n]*>)?\s*$")


def extract_optimized_method(reply: str) -> str | None:
    """The method in the last fenced block labelled "Optimized Method" (in the fence's info string or on the
    line just before it), without a trailing empty "#Instruction#:" slot; None when there is none."""
    found = None
    for match in _FENCE.finditer(reply):
        info = match.group(1).strip()
        line_before = reply[:match.start()].rstrip().rpartition("\n")[2]
        if _OPTIMIZED.search(info) or (info.lower() in _UNNAMED_FENCES and _OPTIMIZED.search(line_before)):
            found = match.group(2)
    if found is None:
        return None
    return _TRAILING_SLOT.sub("", found.strip()).strip() or None


# --- one step's pieces -------------------------------------------------------------------------------------

async def _trajectory(client: LLMClient, method: EvolvingMethod, batch: list[str], rounds: int,
                      max_in_flight: int) -> tuple[list[dict[str, Any]], list[list[str]], int]:
    """The mini-batch evolved `rounds` times: what the optimizer sees ({id, stage0, stage1, ...}), the raw
    evol outputs per item, and the tokens spent. An item stops evolving at its first unusable rewrite."""

    async def evolve_item(index: int) -> tuple[dict[str, Any], list[str], int]:
        record: dict[str, Any] = {"id": index + 1, "stage0": batch[index]}
        raw, spent, current = [], 0, batch[index]
        for stage in range(1, rounds + 1):
            completion, evolved, reason = await evolve_text(client, method, current)
            raw.append(completion.text)
            spent += tokens(completion)
            if evolved is None:
                record[f"stage{stage}"] = f"[no usable rewrite: {reason}]"
                break
            record[f"stage{stage}"] = current = evolved
        return record, raw, spent

    results = await map_in_order(range(len(batch)), evolve_item, max_in_flight)
    return [r[0] for r in results], [r[1] for r in results], sum(r[2] for r in results)


@dataclass
class Proposal:
    """One of the m optimisations: the analysis (feedback), the rewrite, and the method it yielded."""

    index: int
    feedback: str
    reply: str
    method: EvolvingMethod | None
    status: str  # ok | analysis_failed: <error> | optimization_failed: <error> | no_method_block
    tokens: int


async def _propose(client: LLMClient, method: EvolvingMethod, trajectory: list[dict[str, Any]], m: int,
                   step: int) -> list[Proposal]:
    """m analyses in one request (n=m), then each one's optimisation turn, all in parallel."""
    analysis_prompt = fill(load_prompt("evol", "optimizer_analysis.txt"),
                           trajectory=json.dumps(trajectory, ensure_ascii=False, indent=1))
    conversation = [{"role": "user", "content": analysis_prompt}]
    analyses = await client.chat(conversation, n=m)
    request = fill(load_prompt("evol", "optimizer_optimize.txt"), method=method.text)

    async def optimise(index: int, analysis: Completion) -> Proposal:
        if not analysis.ok:
            return Proposal(index, analysis.text, "", None, f"analysis_failed: {analysis.error}", tokens(analysis))
        reply = await client.chat_one(conversation + [{"role": "assistant", "content": analysis.text},
                                                      {"role": "user", "content": request}])
        spent = tokens(analysis, reply)
        if not reply.ok:
            return Proposal(index, analysis.text, reply.text, None, f"optimization_failed: {reply.error}", spent)
        text = extract_optimized_method(reply.text)
        if text is None:
            return Proposal(index, analysis.text, reply.text, None, "no_method_block", spent)
        candidate = EvolvingMethod(f"step{step}/cand{index}", text, method.format)
        return Proposal(index, analysis.text, reply.text, candidate, "ok", spent)

    return list(await asyncio.gather(*(optimise(i, a) for i, a in enumerate(analyses))))


@dataclass
class Evaluation:
    """One method on the dev set."""

    method: EvolvingMethod
    results: list[Attempt] = field(default_factory=list)

    @property
    def failures(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.results if r.reason).items()))

    @property
    def request_errors(self) -> int:
        """Failures caused by failed requests, not by the method: the first tie-break between equal scores."""
        return sum(r.reason in REQUEST_ERRORS for r in self.results)

    @property
    def failure_rate(self) -> float:
        return sum(r.reason is not None for r in self.results) / len(self.results)

    def score(self, selection: str) -> float:
        """Lower is better. length_weighted is the official code's success × length ratio, negated."""
        if selection == "failure_rate":
            return self.failure_rate
        good = [r for r in self.results if r.reason is None]
        if not good:
            return 0.0
        response_words = sum(len(r.response.text.split()) for r in good if r.response) / len(good)
        instruction_words = max(sum(len((r.evolved or "").split()) for r in good) / len(good), 1.0)
        return -(len(good) / len(self.results)) * response_words / instruction_words


async def _evaluate(client: LLMClient, methods: list[EvolvingMethod], dev: list[str], rules: FailureRules,
                    max_in_flight: int, desc: str, pool: LLMPool) -> list[Evaluation]:
    """Every method evolves every dev item once; the evol LLM answers each usable evolution with no system
    prompt (the paper's λ); the same `evolve_once` as the evolve stage's filter decides."""

    async def run(pair: tuple[int, int]) -> Attempt:
        return await evolve_once(client, methods[pair[0]], dev[pair[1]], rules, responder=client, context=[])

    pairs = [(mi, di) for mi in range(len(methods)) for di in range(len(dev))]
    with Progress(len(pairs), desc, pool) as bar:
        results = await map_in_order(pairs, run, max_in_flight, lambda: bar.update(1))
    return [Evaluation(m, results[mi * len(dev):(mi + 1) * len(dev)]) for mi, m in enumerate(methods)]


# --- the loop ----------------------------------------------------------------------------------------------

@dataclass
class LoopState:
    """Where the loop stands, derived from history.jsonl alone (a resumed run continues like an uninterrupted one)."""

    current: EvolvingMethod   # e_t: the next step starts from it
    best: EvolvingMethod      # the best method so far: the output (best_method.txt)
    best_row: HistoryRow | None
    steps_done: int
    stop_reason: str | None


def _read_history(path: Path) -> list[HistoryRow]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _method(row: HistoryRow, start: EvolvingMethod, run_path: Path) -> EvolvingMethod:
    """A row's method read back from its file (so a resumed run continues from the very same text)."""
    if row["method_file"] is None:
        return start
    text = (run_path / row["method_file"]).read_text(encoding="utf-8").strip()
    return EvolvingMethod(row["name"], text, start.format)


def _state(history: list[HistoryRow], start: EvolvingMethod, config: OptimizeConfig, run_path: Path) -> LoopState:
    """e_t is each step's selected row (Eq. 2: its best candidate, even on a tie or a loss; the method it
    started from when the step had no candidate); the best so far changes only on a strict improvement.
    Stopping: `patience` steps in a row without a strict improvement (so one tie never stops the loop),
    λ = 0, or T steps."""
    if not history:
        return LoopState(start, start, None, 0, None)
    current = start
    steps = sorted({r["step"] for r in history})
    for step in steps:
        selected = next(r for r in history if r["step"] == step and r["selected"])
        current = current if selected["candidate"] == "incumbent" else _method(selected, start, run_path)
    bests = best_so_far(history)
    stall = 0  # steps since the best so far last improved
    while stall < len(steps) and bests[-1 - stall] is bests[-2 - stall]:
        stall += 1
    best = bests[-1]
    stop = None
    if config.early_stopping and stall >= config.patience:
        stop = "no_improvement"
    elif config.early_stopping and config.selection == "failure_rate" and best["lambda"] == 0:
        stop = "no_failures_left"
    elif steps[-1] >= config.steps:
        stop = "max_steps"
    return LoopState(current, _method(best, start, run_path), best, steps[-1], stop)


def _step_samples(config: OptimizeConfig, step: int, train: list[str], pool: list[str], dev: list[str]
                  ) -> tuple[list[str], list[str]]:
    """The step's mini-batch (and dev set under per_step sampling) from a generator seeded by (seed, step)."""
    rng = random.Random(f"{config.seed}:step:{step}")
    batch = rng.sample(train, min(config.batch_size, len(train)))
    if config.dev_sampling == "per_step":
        dev = rng.sample(pool, min(config.dev_size, len(pool)))
    return batch, dev


def _dev_rows(label: str, evaluation: Evaluation) -> list[DevRow]:
    return [DevRow(candidate=label, method_id=evaluation.method.id, index=i, original=r.original,
                   evol_output=r.evol_call.text, evolved=r.evolved,
                   response=r.response.text if r.response else None, reason=r.reason)
            for i, r in enumerate(evaluation.results)]


def _jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


async def _run_step(config: OptimizeConfig, pool: LLMPool, state: LoopState, step: int, batch: list[str],
                    dev: list[str], run_path: Path) -> list[HistoryRow]:
    """One step: writes the trajectory, the candidates and the dev details; returns the history rows."""
    started = time.monotonic()
    evol, incumbent = pool["evol"], state.current
    incumbent_eval = asyncio.ensure_future(
        _evaluate(evol, [incumbent], dev, config.failures, config.max_in_flight, f"step {step}: incumbent on dev",
                  pool))
    shown, raw, trajectory_tokens = await _trajectory(evol, incumbent, batch, config.trajectory_rounds,
                                                      config.max_in_flight)
    trajectory_s = time.monotonic() - started
    proposals = await _propose(pool["optimizer"], incumbent, shown, config.candidates, step)
    optimizer_s = time.monotonic() - started - trajectory_s
    candidates = [p.method for p in proposals if p.method is not None]
    candidate_evals = await _evaluate(evol, candidates, dev, config.failures, config.max_in_flight,
                                      f"step {step}: {len(candidates)} candidates on dev", pool)
    incumbent_eval_done = (await incumbent_eval)[0]
    dev_s = time.monotonic() - started - trajectory_s - optimizer_s
    wall_s = time.monotonic() - started

    by_index = {p.index: e for p, e in zip([p for p in proposals if p.method is not None], candidate_evals)}
    winner = min(by_index, key=lambda i: (by_index[i].score(config.selection), by_index[i].request_errors, i),
                 default=None)

    prefix = f"step{step:02d}"
    write_atomic(run_path / "trajectories" / f"{prefix}.json", json.dumps(
        {"step": step, "method_id": incumbent.id, "batch": batch, "shown_to_optimizer": shown, "evol_outputs": raw},
        ensure_ascii=False, indent=1) + "\n")
    dev_rows = _dev_rows("incumbent", incumbent_eval_done)
    for index, evaluation in by_index.items():
        dev_rows += _dev_rows(str(index), evaluation)
    write_atomic(run_path / "dev" / f"{prefix}.jsonl", _jsonl(dev_rows))
    phases = {"trajectory": round(trajectory_s, 3), "optimizer": round(optimizer_s, 3), "dev": round(dev_s, 3)}

    def row(candidate: int | str, name: str, method_id: str | None, status: str, feedback: str | None,
            evaluation: Evaluation | None, method_file: str | None, spent: dict[str, int]) -> HistoryRow:
        return {"step": step, "candidate": candidate, "name": name, "method_id": method_id,
                "parent_id": incumbent.id, "status": status, "feedback": feedback,
                "lambda": evaluation.failure_rate if evaluation else None,
                "score": evaluation.score(config.selection) if evaluation else None, "n_dev": len(dev),
                "failures": evaluation.failures if evaluation else {},
                "selected": candidate == ("incumbent" if winner is None else winner), "method_file": method_file,
                "tokens": {**spent, "dev": sum(a.tokens for a in evaluation.results) if evaluation else 0},
                "wall_s": round(wall_s, 3), "phase_s": phases}

    rows = [row("incumbent", incumbent.name, incumbent.id, "ok", None, incumbent_eval_done, None,
                {"trajectory": trajectory_tokens, "optimizer": 0})]
    for proposal in proposals:
        method_file = None
        if proposal.method is not None:
            method_file = f"methods/{prefix}_cand{proposal.index}.txt"
            write_atomic(run_path / method_file, proposal.method.text + "\n")
        write_atomic(run_path / "optimizer" / f"{prefix}_cand{proposal.index}.md",
                     f"# Analysis (feedback)\n\n{proposal.feedback}\n\n# Optimisation reply\n\n{proposal.reply}\n")
        rows.append(row(proposal.index, f"step{step}/cand{proposal.index}",
                        proposal.method.id if proposal.method else None, proposal.status, proposal.feedback,
                        by_index.get(proposal.index), method_file, {"trajectory": 0, "optimizer": proposal.tokens}))
    return rows


@dataclass
class Seeds:
    """The sampled pool split into the disjoint dev set and the mini-batch source."""

    source: str
    distinct: int
    pool: list[str]
    dev: list[str]
    train: list[str]


def _split_seeds(config: OptimizeConfig) -> Seeds:
    instructions, source = load_seed_instructions(config.seeds)
    sampled = random.Random(config.seed).sample(instructions, min(config.pool_size, len(instructions)))
    needed = config.dev_size + config.batch_size
    if len(sampled) < needed:
        raise InputError(f"{source}: {len(sampled)} distinct instructions, but dev_size + batch_size = {needed} "
                         "are needed")
    return Seeds(source, len(instructions), sampled, sampled[:config.dev_size], sampled[config.dev_size:])


def _check_not_request_failures(rows: list[HistoryRow]) -> None:
    """ResultError when the step's incumbent, or every candidate, failed for request errors (a failed optimizer
    request, or no dev success with request errors behind most failures): λ would measure the endpoint, not a
    method, and crown the start method at λ = 1. Raised before the step is committed, so a re-run after the
    endpoint recovers redoes it (the journal keeps every answered call)."""
    def failed(row: HistoryRow) -> bool:
        if row["status"] != "ok":
            return "request_failed" in row["status"]
        request_errors = sum(row["failures"].get(reason, 0) for reason in REQUEST_ERRORS)
        return row["lambda"] == 1 and 2 * request_errors > row["n_dev"]

    if failed(rows[0]) or all(failed(row) for row in rows[1:]):
        candidates = Counter(": ".join(row["status"].split(": ")[:3]) if row["status"] != "ok" else
                             format_counts(row["failures"]) for row in rows[1:])
        incumbent, listed = rows[0], "; ".join(f"{what} ×{n}" for what, n in candidates.items())
        raise ResultError(f"optimize step {incumbent['step']}: the {'incumbent' if failed(incumbent) else 'candidates'}"
                          f" failed for request errors only (incumbent {incumbent['name']}: "
                          f"{format_counts(incumbent['failures'])}; candidates: {listed}); check the endpoints "
                          "and re-run")


async def _optimize(config: OptimizeConfig, stage: StageRun, seeds: Seeds, start: EvolvingMethod) -> LoopState:
    from autoevol_train.evol.optimize_report import write_report

    run_path = stage.path
    write_atomic(run_path / "split.json", json.dumps(
        {"source": seeds.source, "distinct_seeds": seeds.distinct, "pool": len(seeds.pool), "dev": seeds.dev,
         "train": seeds.train}, ensure_ascii=False, indent=1) + "\n")
    write_atomic(run_path / "methods" / "initial.txt", start.text + "\n")
    history_path = run_path / "history.jsonl"
    history = _read_history(history_path)
    state = _state(history, start, config, run_path)

    async with stage.pool({"evol": config.llm.evol, "optimizer": config.llm.optimizer}) as pool:
        while state.stop_reason is None:
            step = state.steps_done + 1
            batch, step_dev = _step_samples(config, step, seeds.train, seeds.pool, seeds.dev)
            rows = await _run_step(config, pool, state, step, batch, step_dev, run_path)
            _check_not_request_failures(rows)
            history += rows
            write_atomic(history_path, _jsonl(history))  # the step's commit point
            state = _state(history, start, config, run_path)
            stage.tracker.log(optimize_step_metrics(rows, state.best_row["lambda"] if state.best_row else None),
                              step=step)
            write_atomic(run_path / "best_method.txt", state.best.text + "\n")
            write_atomic(run_path / "final_method.txt", state.current.text + "\n")  # e_t (Fig. 5b uses e_T)
            write_report(run_path)
        usage = pool.usage()
    stage.run_dir.finish(llm_usage=usage, stop_reason=state.stop_reason, steps_run=state.steps_done,
                         best_method_id=state.best.id, best_method_name=state.best.name,
                         best_lambda=state.best_row["lambda"] if state.best_row else None,
                         final_method_id=state.current.id, final_method_name=state.current.name)
    write_report(run_path)  # again, now that the manifest holds the stop reason
    return state


def run_optimize(config: OptimizeConfig, output_dir: Path, tracker_run: TrackerRun | None = None,
                 engines: SharedEngines | None = None) -> Path:
    """Run (or resume) the loop in `output_dir`; returns the path of best_method.txt.

    Seeds and the starting method are checked before anything is written: bad input raises InputError."""
    seeds = _split_seeds(config)
    start = starting_method(config.initial_method)
    with StageRun(output_dir, "optimize", config, tracker_run or TrackerRun(config.report_to),
                  engines) as stage:
        asyncio.run(_optimize(config, stage, seeds, start))
    return stage.path / "best_method.txt"
