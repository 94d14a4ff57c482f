"""`autoevol evolve`: evolve every seed with a method for R rounds, answer it, filter it, write a dataset.

Each seed is one item streamed through the LLM layer (`stream_map`): its round 1 evolution, the responder's
answer, its round 2 evolution... run back to back, with no barrier between items or rounds, so the servers
stay saturated whatever the latency tail. Multi-turn seeds are evolved turn by turn, and every turn's answer
is regenerated against the evolved conversation so far. A failed round (evol call failed, no final label,
failure detector F or an elimination rule) ends that item's chain; the reason goes to the rejects file.

The methods: ``file`` (an optimised ``best_method.txt``), ``initial`` (the universal method), ``weak``,
``evol-instruct`` (the domain's human baseline, WizardLM / WizardMath / WizardCoder: one of its methods drawn
per item and round from a seeded generator, so a re-run draws the same), or ``none`` (the seed arm: the seeds
as they are, answered only where a seed has no answer or `respond_seeds` asks for it).

Crash safety and scale: each finished item is appended as one JSON line to ``parts/`` (append-only, one file
set per attempt) and every LLM call is in the journal; a re-run skips finished items and gets the calls of
unfinished ones back from the journal, so after a kill -9 the final dataset is identical to an uninterrupted
run. Memory is bounded by `max_in_flight` items; the dataset is assembled at the end in seed order from the
parts (`autoevol_train.data.assemble`). ``num_shards``/``shard_index`` run a slice of the seeds (every
N-th) on one node; a run with ``merge_from`` (the shard run directories) assembles them into one dataset.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from autoevol_train.config import InputError, StrictModel, dump_config
from autoevol_train.errors import EndpointError, ResultError
from autoevol_train.data.decontam import DecontamConfig, Decontaminator
from autoevol_train.data.dedup import DedupConfig
from autoevol_train.data.formats import LoadReport, SeedSource, iter_seed_rows
from autoevol_train.data.parts import PartWriter, completed_keys
from autoevol_train.data.reader import load_prompt
from autoevol_train.evol.attempt import evolve_once
from autoevol_train.evol.failures import REQUEST_ERRORS, FailureRules, format_counts
from autoevol_train.evol.methods import (EvolvingMethod, evol_instruct_methods, load_method,
                                         starting_method)
from autoevol_train.evol.records import EvolvedRow, ItemRecord, Reject
from autoevol_train.hub import HubTarget, check_can_push, push_folder
from autoevol_train.llm.client import LLMClient, LLMPool
from autoevol_train.llm.engines import SharedEngines
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.types import Completion, RoleConfig
from autoevol_train.progress import Progress
from autoevol_train.rundir import write_atomic
from autoevol_train.stage import StageRun
from autoevol_train.tracking import REPORT_TO_HELP, ReportTo, TrackerRun, dataset_metrics, evolve_metrics

__all__ = ["EvolveConfig", "EvolveLLM", "ItemEvolver", "run_evolve", "evolve_shard", "build_methods"]

Messages = list[dict[str, str]]


class EvolveLLM(StrictModel):
    evol: RoleConfig = Field(description="the evol LLM: rewrites instructions (paper: temperature 0)")
    responder: RoleConfig | None = Field(
        None, description="answers every evolved instruction; default: the evol LLM (as in the paper)")


class EvolveConfig(StrictModel):
    """One dataset evolution. Paper defaults: 1 round, the optimised method, answers by the evol LLM."""

    seeds: SeedSource
    domain: Literal["chat", "math", "code"] = Field(
        description="picks the responder's system prompt and the evol-instruct baseline (chat: WizardLM's, "
        "math: WizardMath's, code: WizardCoder's methods)")
    method: Literal["file", "initial", "weak", "evol-instruct", "none"] = Field(
        "file", description="file: method_file (an optimised best_method.txt); initial: the universal method; "
        "weak: the ablation method; evol-instruct: the domain's human baseline; none: the seed arm")
    method_file: str | None = Field(None, description="the method text file when method is 'file'")
    rounds: int = Field(1, ge=1, description="evolution rounds R; round r evolves round r-1's instruction")
    repool_failed: bool = Field(
        False, description="WizardLM's re-pooling: a failed round leaves the item in the pool, so the next "
        "round evolves the same instruction again (with a new draw); false: a failure ends the item's chain")
    round_output: Literal["mixed", "separate", "last"] = Field(
        "mixed", description="mixed: rounds 1..R together in split 'train' (the paper's round mixing); "
        "separate: one split 'round_<r>' per round; last: only round R in 'train'")
    respond_seeds: bool = Field(
        False, description="method none: answer every seed with the responder instead of keeping its answer")
    system_prompt: str | None = Field(
        None, description="the responder's system prompt; default: prompts/responder_<domain>.txt (math answers "
        "end with 'The answer is: N'); a seed's own system message takes precedence")
    failures: FailureRules = Field(default_factory=FailureRules)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    llm: EvolveLLM
    seed: int = Field(42, description="draws of Evol-Instruct's per-item, per-round method")
    allow_empty: bool = Field(False, description="an empty dataset is a result (the pipeline reports such an "
                              "arm instead of training it); false: the stage fails with exit 4")
    max_request_error_share: float = Field(
        0.5, ge=0, le=1, description="the stage fails (exit 4) when more than this share of the seeds was lost "
        "to request errors: the endpoint failed, not the method")
    max_in_flight: int = Field(1024, ge=1, description="seeds being evolved at once (bounds memory; above a big "
                               "server's slots, so the adaptive limit, not this, bounds the requests in flight)")
    records_per_part: int = Field(10000, ge=1, description="finished items per append-only part file")
    rows_per_shard: int = Field(50000, ge=1, description="rows per output parquet file")
    diversity_rows: int = Field(20000, ge=1, description="rows per set used for distinct-n statistics")
    shard_index: int = Field(0, ge=0, description="this run's slice: seeds whose index % num_shards == it")
    num_shards: int = Field(1, ge=1, description="slices the seeds are split into (one node each)")
    merge_from: list[str] = Field(
        [], description="shard run directories to assemble into one dataset (no LLM calls are made)")
    report_to: ReportTo = Field("none", description=REPORT_TO_HELP)
    hub: HubTarget | None = Field(None, description="push the dataset (parquet, card, statistics, plots) to this "
                                  "Hub dataset repository with HF_TOKEN; nothing is pushed without it")

    @model_validator(mode="after")
    def _check(self) -> "EvolveConfig":
        if self.method == "file" and not self.method_file:
            raise ValueError("method 'file' needs method_file (e.g. runs/x/optimize/best_method.txt)")
        if self.method != "file" and self.method_file:
            raise ValueError(f"method_file is set but method is {self.method!r}; set method: file")
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index {self.shard_index} must be < num_shards {self.num_shards}")
        return self


def build_methods(config: EvolveConfig) -> list[EvolvingMethod]:
    """The methods an item can be evolved with (one drawn per item and round when there are several)."""
    if config.method == "evol-instruct":
        return evol_instruct_methods(config.domain)
    if config.method == "file":
        return [load_method(config.method_file)]  # type: ignore[arg-type]
    return [starting_method(config.method)] if config.method != "none" else []


def _user_turns(messages: Messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def _system(messages: Messages) -> Messages:
    return [m for m in messages if m["role"] == "system"]


class ItemEvolver:
    """What happens to one seed: R rounds of turn-by-turn evolution, each turn answered and checked."""

    def __init__(self, config: EvolveConfig, evol: LLMClient, responder: LLMClient):
        self.config = config
        self.evol = evol
        self.responder = responder
        self.methods = build_methods(config)
        self.system_prompt = config.system_prompt or load_prompt("evol", f"responder_{config.domain}.txt").strip()

    def method_for(self, seed_index: int, round_number: int) -> EvolvingMethod:
        if len(self.methods) == 1:
            return self.methods[0]
        return random.Random(f"{self.config.seed}:{seed_index}:{round_number}").choice(self.methods)

    def context(self, conversation: Messages) -> Messages:
        """What the responder sees before an instruction: the seed's system prompt (else ours) and the turns so far."""
        system = _system(conversation) or [{"role": "system", "content": self.system_prompt}]
        return system + [m for m in conversation if m["role"] != "system"]

    def _row(self, seed: dict[str, Any], seed_index: int, round_number: int, method: EvolvingMethod | None,
             messages: Messages, evolved_from: list[str], evol_calls: list[Completion],
             responses: list[Completion]) -> EvolvedRow:
        return {
            "id": f"{seed['id']}/r{round_number}", "messages": messages, "seed_id": seed["id"],
            "seed_index": seed_index, "source": seed["source"], "round": round_number,
            "method_id": method.id if method else "none", "method_name": method.name if method else "none",
            "evolved_from": evolved_from, "evol_model": self.evol.model if evol_calls else "",
            "responder_model": self.responder.model if responses else "",
            "evol_finish_reasons": [c.finish_reason for c in evol_calls],
            "response_finish_reasons": [c.finish_reason for c in responses],
            "evol_prompt_tokens": sum(c.prompt_tokens for c in evol_calls),
            "evol_completion_tokens": sum(c.completion_tokens for c in evol_calls),
            "response_prompt_tokens": sum(c.prompt_tokens for c in responses),
            "response_completion_tokens": sum(c.completion_tokens for c in responses),
        }

    async def evolve_round(self, seed: dict[str, Any], seed_index: int, round_number: int, previous: Messages
                           ) -> tuple[EvolvedRow | None, Reject | None]:
        """Evolve `previous` (round r-1's conversation) once: (row, None) on success, (None, reject) else."""
        method = self.method_for(seed_index, round_number)
        conversation = _system(previous)
        evol_calls: list[Completion] = []
        responses: list[Completion] = []
        originals = _user_turns(previous)
        for turn, instruction in enumerate(originals, start=1):
            attempt = await evolve_once(self.evol, method, instruction, self.config.failures,
                                        responder=self.responder, context=self.context(conversation))
            if attempt.reason is not None:
                return None, _reject(seed, seed_index, round_number, turn, method, attempt.reason, instruction,
                                     attempt.evol_call.text, attempt.evolved, attempt.response, attempt.error)
            assert attempt.evolved is not None and attempt.response is not None
            evol_calls.append(attempt.evol_call)
            responses.append(attempt.response)
            conversation += [{"role": "user", "content": attempt.evolved},
                             {"role": "assistant", "content": attempt.response.text}]
        row = self._row(seed, seed_index, round_number, method, conversation, originals, evol_calls, responses)
        return row, None

    async def seed_row(self, seed: dict[str, Any], seed_index: int) -> tuple[EvolvedRow | None, Reject | None]:
        """The seed arm: the seed as it is, or answered turn by turn where it has no answer (or when asked)."""
        messages = seed["messages"]
        answered = sum(m["role"] == "assistant" for m in messages) == len(_user_turns(messages))
        if answered and not self.config.respond_seeds:
            return self._row(seed, seed_index, 0, None, messages, [], [], []), None
        conversation = _system(messages)
        responses = []
        for turn, instruction in enumerate(_user_turns(messages), start=1):
            response = await self.responder.chat_one(self.context(conversation)
                                                     + [{"role": "user", "content": instruction}])
            responses.append(response)
            if not response.ok:
                reason = ("response_request_failed" if response.error.startswith("request_failed")
                          else f"response_{response.error}")
                return None, _reject(seed, seed_index, 0, turn, None, reason, instruction, None, None, response,
                                     response.error)
            conversation += [{"role": "user", "content": instruction},
                             {"role": "assistant", "content": response.text}]
        return self._row(seed, seed_index, 0, None, conversation, [], [], responses), None

    async def item(self, indexed: tuple[int, dict[str, Any]]) -> ItemRecord:
        """One seed through every round: the record written to the parts store."""
        seed_index, seed = indexed
        rows: list[EvolvedRow] = []
        rejects: list[Reject] = []
        if not self.methods:
            row, reject = await self.seed_row(seed, seed_index)
            rows, rejects = [row] if row else [], [reject] if reject else []
        else:
            previous = seed["messages"]
            for round_number in range(1, self.config.rounds + 1):
                row, reject = await self.evolve_round(seed, seed_index, round_number, previous)
                if reject is not None:
                    rejects.append(reject)
                    if self.config.repool_failed:
                        continue
                    break
                rows.append(row)
                previous = row["messages"]  # type: ignore[index]
        return ItemRecord(seed_index=seed_index, seed_id=seed["id"], seed=seed["messages"], rows=rows,
                          rejects=rejects)


def _reject(seed: dict[str, Any], seed_index: int, round_number: int, turn: int, method: EvolvingMethod | None,
            reason: str, instruction: str, evol_output: str | None, evolved: str | None,
            response: Completion | None, error: str | None) -> Reject:
    return Reject(seed_id=seed["id"], seed_index=seed_index, round=round_number, turn=turn, reason=reason,
                  method_id=method.id if method else "none", method_name=method.name if method else "none",
                  instruction=instruction, evol_output=evol_output, evolved=evolved,
                  response=response.text if response is not None else None, error=error)


def _roles(config: EvolveConfig) -> dict[str, RoleConfig]:
    return {"evol": config.llm.evol, "responder": config.llm.responder or config.llm.evol}


def _my_seeds(config: EvolveConfig, report: LoadReport, skip: set[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, row in enumerate(iter_seed_rows(config.seeds, report)):
        if index % config.num_shards == config.shard_index and index not in skip:
            yield index, row


def _count_my_seeds(config: EvolveConfig) -> tuple[int, LoadReport]:
    """Read (and validate) every seed row once before any work request (`evolve_shard` runs it beside the
    endpoints' preflight): a bad row at row 900,000 fails now, not after hours of paid calls. Hub datasets are
    streamed, so they are not pre-read (no total)."""
    report = LoadReport()
    count = sum(1 for _ in _my_seeds(config, report, set()))
    return count, report


_EVOLUTION_KEYS = {"seeds", "domain", "method", "method_file", "rounds", "repool_failed", "respond_seeds",
                   "system_prompt", "failures", "seed", "shard_index", "num_shards"}
_SAMPLING_KEYS = {"model", "temperature", "top_p", "max_tokens", "seed", "stop", "extra_body"}


def _evolution_settings(config: EvolveConfig) -> dict[str, Any]:
    """What the finished items in parts/ depend on (filters, output layout and concurrency may change freely
    between attempts: the dataset is assembled again from the parts)."""
    settings = config.model_dump(mode="json", include=_EVOLUTION_KEYS)
    for role, role_config in _roles(config).items():
        settings[f"llm.{role}"] = role_config.model_dump(mode="json", include=_SAMPLING_KEYS)
    return settings


def _check_resumable(parts: Path, config: EvolveConfig) -> None:
    """Refuse to mix items of two different evolutions in one parts store."""
    settings = _evolution_settings(config)
    path = parts / "evolution.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(key for key in settings.keys() | previous.keys() if settings.get(key) != previous.get(key))
        if changed:
            raise InputError(f"{parts.parent}: holds items of a different evolution (changed: {', '.join(changed)});"
                             " use another --output-dir, or delete its parts/ and calls.sqlite to start over")


def _record_evolution(parts: Path, config: EvolveConfig) -> None:
    """What the items in parts/ depend on, written with the first attempt (see `_check_resumable`)."""
    path = parts / "evolution.json"
    if not path.is_file():
        write_atomic(path, json.dumps(_evolution_settings(config), indent=2) + "\n")


async def evolve_shard(config: EvolveConfig, stage: StageRun, first_item: Callable[[], None] | None = None
                       ) -> tuple[dict[str, Any], LoadReport]:
    """The LLM phase of `run_evolve`: stream this shard's unfinished seeds through `ItemEvolver.item` into the
    parts store; returns counts and LLM usage, and how the seed file read (malformed rows skipped).
    `first_item` is called once the first item is in the store."""
    parts = stage.path / "parts"
    _check_resumable(parts, config)
    # Every seed row is read (and checked) once before any work request, so a bad row at row 900,000 fails now,
    # not after hours of paid calls; in a thread, while the endpoints' preflight runs.
    counting = asyncio.ensure_future(asyncio.to_thread(_count_my_seeds, config)) if config.seeds.is_local() else None
    try:
        async with stage.pool(_roles(config)) as pool:
            total, report = await counting if counting is not None else (None, LoadReport())
            return await _evolve_items(config, stage, pool, total, report, first_item)
    except EndpointError:
        if counting is not None:
            await counting  # a bad seed row is bad input (exit 2), named before an endpoint's failure
        raise


async def _evolve_items(config: EvolveConfig, stage: StageRun, pool: LLMPool, total: int | None,
                        report: LoadReport, first_item: Callable[[], None] | None
                        ) -> tuple[dict[str, Any], LoadReport]:
    """The seeds not finished yet, through `ItemEvolver.item`, each finished item into the parts store."""
    parts = stage.path / "parts"
    _record_evolution(parts, config)
    done = completed_keys(parts)
    counts = {"items": 0, "rows": 0, "rejected": 0}
    evolver = ItemEvolver(config, pool["evol"], pool["responder"])
    todo = _my_seeds(config, LoadReport() if total is not None else report, done)
    remaining = None if total is None else total - len(done)
    started, log_every = time.monotonic(), max(1, (remaining or 10000) // 100)  # ~100 tracker points a run
    with PartWriter(parts, stage.run_dir.manifest["attempts"], config.records_per_part) as writer, \
            Progress(remaining, "evolve", pool) as bar:
        async for _, record in stream_map(todo, evolver.item, config.max_in_flight):
            writer.write(record)
            if not counts["items"] and first_item is not None:
                first_item()
            counts["items"] += 1
            counts["rows"] += len(record["rows"])
            counts["rejected"] += len(record["rejects"])
            bar.update(1, rows=counts["rows"], rejected=counts["rejected"])
            if counts["items"] % log_every == 0 or counts["items"] == remaining:
                stage.tracker.log(evolve_metrics(counts["items"], counts["rows"], counts["rejected"],
                                                 pool.total_tokens(), time.monotonic() - started),
                                  step=counts["items"])
    usage = pool.usage()
    return {"resumed_items": len(done), **counts, "llm_usage": usage}, report


def _shard_summary_path(run_path: Path) -> Path:
    return run_path / "shard.json"


def _merge_sources(config: EvolveConfig) -> tuple[list[Path], dict[str, Any]]:
    """Part directories of complete shard runs; InputError unless every shard 0..N-1 is there once."""
    summaries = []
    for directory in config.merge_from:
        path = _shard_summary_path(Path(directory))
        if not path.is_file():
            raise InputError(f"merge_from: {directory}: no shard.json (the shard run has not finished)")
        summaries.append(json.loads(path.read_text()))
    shards = sorted(s["shard_index"] for s in summaries)
    expected = summaries[0]["num_shards"]
    if shards != list(range(expected)) or any(s["num_shards"] != expected for s in summaries):
        raise InputError(f"merge_from: shards {shards} of {expected}: every shard 0..{expected - 1} is needed once")
    return [Path(d) / "parts" for d in config.merge_from], summaries[0]["load_report"]


def _check_result(config: EvolveConfig, summary: dict[str, Any], rejects: Path) -> None:
    """ResultError (after the dataset and its rejects are written, for inspection) when the seeds were mostly
    lost to request errors, or when the dataset is empty and `allow_empty` is off."""
    by_reason = summary["rejected_by_reason"]
    breakdown = format_counts(by_reason)
    request_errors = sum(by_reason.get(reason, 0) for reason in REQUEST_ERRORS)
    if request_errors > config.max_request_error_share * summary["seeds"]:
        raise ResultError(f"evolve: {request_errors} of {summary['seeds']} seeds failed for request errors "
                          f"(rejects by reason: {breakdown}; {rejects}); check the endpoints and re-run")
    if not sum(summary["rows"].values()) and not config.allow_empty:
        raise ResultError(f"evolve: the dataset is empty ({summary['seeds']} seeds; rejects by reason: "
                          f"{breakdown}; {rejects})")


def run_evolve(config: EvolveConfig, output_dir: Path, tracker_run: TrackerRun | None = None,
               engines: SharedEngines | None = None) -> Path:
    """Evolve (or, with merge_from, merge) and assemble; returns the dataset directory (or, for one shard of
    several, the shard's run directory, to be merged)."""
    output_dir = Path(output_dir)
    build_methods(config)  # a missing method file fails before anything is written
    check_can_push(config.hub)
    assembling = config.num_shards == 1 or bool(config.merge_from)
    decontaminator = Decontaminator(config.decontam) if assembling else None  # unreadable benchmarks fail now
    with StageRun(output_dir, "evolve", config, tracker_run or TrackerRun(config.report_to),
                  engines) as stage:
        return _evolve_in(stage, config, decontaminator)


def _import_assembly() -> None:
    """Import what the assembly needs (pyarrow, pandas, matplotlib: about a second of CPU) while the LLM phase
    waits on the network, so that it is not spent between the last answer and the dataset. Started once the
    first item is done, not at once: a thread importing holds the GIL most of the time, and at the start it
    slowed the ramp to a big server's capacity (256 slots full 0.45 s later)."""
    import matplotlib.backends.backend_agg  # noqa: F401  (savefig's canvas)
    import matplotlib.figure  # noqa: F401
    import pyarrow

    import autoevol_train.data.assemble  # noqa: F401

    pyarrow.array([0])  # pyarrow imports pandas (where installed) at its first conversion: 0.25 s


def _evolve_in(stage: StageRun, config: EvolveConfig, decontaminator: Decontaminator | None) -> Path:
    run_dir = stage.run_dir
    if config.merge_from:
        part_dirs, load_report = _merge_sources(config)
        usage: dict[str, Any] = {}
    else:
        import_assembly = (threading.Thread(target=_import_assembly, name="import assembly", daemon=True).start
                           if config.num_shards == 1 else None)  # a shard of several does not assemble
        summary, report = asyncio.run(evolve_shard(config, stage, import_assembly))
        usage = summary.pop("llm_usage")
        load_report = report.as_dict()
        if config.num_shards > 1:
            write_atomic(_shard_summary_path(run_dir.path), json.dumps(
                {"shard_index": config.shard_index, "num_shards": config.num_shards, "load_report": load_report,
                 **summary}, indent=2) + "\n")
            run_dir.finish(llm_usage=usage, evolution=summary)
            return run_dir.path
        part_dirs = [run_dir.path / "parts"]
    from autoevol_train.data.assemble import AssemblySpec, assemble_dataset  # pyarrow: not before the first request

    roles = _roles(config)
    methods = sorted({m.name for m in build_methods(config)}) or ["none (seed data)"]
    spec = AssemblySpec(
        rounds=config.rounds, round_output=config.round_output, dedup=config.dedup, decontam=config.decontam,
        rows_per_shard=config.rows_per_shard, diversity_rows=config.diversity_rows,
        title=f"Evolved {config.domain} instructions ({config.method}, {config.rounds} round(s))",
        facts={"seeds": config.seeds.path, "domain": config.domain, "method": ", ".join(methods),
               "rounds": f"{config.rounds} ({config.round_output})", "evol model": roles["evol"].model,
               "responder model": roles["responder"].model},
        config_yaml=dump_config(config), load_report=load_report,
    )
    dataset_dir = run_dir.path / "dataset"
    summary = assemble_dataset(part_dirs, dataset_dir, spec, decontaminator)
    stage.tracker.log(dataset_metrics(summary))
    _check_result(config, summary, dataset_dir / "rejects.jsonl")
    pushed = push_folder(dataset_dir, config.hub, "dataset", spec.title) if config.hub else None
    run_dir.finish(llm_usage=usage or None, dataset=str(dataset_dir), rows=summary["rows"],
                   rejected=summary["rejected"], hub_commit=pushed)
    return dataset_dir
