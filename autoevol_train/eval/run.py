"""`autoevol eval`: the model under test answers each configured benchmark; answers are scored and tabled.

The model is a role like any other (a vLLM server, vLLM's offline engine or in-process transformers), and
its own chat template formats every prompt: the one it was trained with, saved next to its weights (a
server applies the template it was started with). The judge is another role (GPT-4 or a local model behind
an OpenAI-compatible server), always at temperature 0.

Outputs in the run directory: `<benchmark>.jsonl` (every answer, extraction, execution and judgement),
`results.json` (metrics and the protocol of each benchmark) and `results.md` (the same as a table that
states the protocol: shots, template, filter, judge, temperatures, samples). They are rewritten after each
benchmark, and every LLM call is journaled, so a killed run re-run on the same directory repeats no call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from pydantic import Field, create_model, model_validator

from autoevol_train.config import StrictModel
from autoevol_train.eval.benchmarks import BENCHMARKS, BY_NAME
from autoevol_train.eval.records import (BenchmarkResult, EvalContext, EvalResults, benchmark_block,
                                         benchmark_label)
from autoevol_train.eval.uncertainty import standard_error
from autoevol_train.hub import HubTarget, check_can_push, folder_name, push_folder
from autoevol_train.llm.engines import SharedEngines
from autoevol_train.llm.types import RoleConfig
from autoevol_train.rundir import write_atomic
from autoevol_train.stage import StageRun
from autoevol_train.tracking import REPORT_TO_HELP, ReportTo, TrackerRun, eval_metrics

__all__ = ["EvalConfig", "run_eval", "results_table", "format_value"]

# One optional section per benchmark, named after it, in the order of `BENCHMARKS`.
_BenchmarkSections = create_model(
    "_BenchmarkSections", __base__=StrictModel,
    **{module.NAME: (module.Config | None, Field(None, description=module.Config.__doc__)) for module in BENCHMARKS})


class EvalConfig(_BenchmarkSections):
    """Which benchmarks to run (a section each; leave one out to skip it) on which model, judged by whom."""

    name: str | None = Field(None, description="label in tables (default: the model's name)")
    model: RoleConfig = Field(description="the model under test; sampling is set per benchmark by its protocol")
    judge: RoleConfig | None = Field(None, description="MT-Bench and AlpacaEval judge (run at temperature 0)")
    max_in_flight: int = Field(256, ge=1, description="benchmark items being answered at once")
    report_to: ReportTo = Field("none", description=REPORT_TO_HELP)
    hub: HubTarget | None = Field(None, description="push results.json and results.md to this Hub dataset "
                                  "repository (in a folder named after the model's label) with HF_TOKEN")

    def sections(self) -> list[Any]:
        """The configured benchmarks' sections, in the order of `BENCHMARKS`."""
        return [section for section in (getattr(self, module.NAME) for module in BENCHMARKS) if section is not None]

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if (self.mt_bench or self.alpaca_eval) and self.judge is None:
            raise ValueError("mt_bench and alpaca_eval need a judge role")
        if self.alpaca_eval and self.alpaca_eval.scorer == "alpaca-eval" and self.judge.backend != "openai":
            raise ValueError("alpaca_eval.scorer alpaca-eval sends the annotator's requests to the judge role's "
                             "endpoint: the judge needs backend openai")
        if self.mt_bench and (self.mt_bench.references is None or self.mt_bench.judge_prompts is None):
            raise ValueError("mt_bench needs `references` and `judge_prompts` (FastChat's files)")
        if not self.sections():
            raise ValueError("no benchmark configured: add a section: " + ", ".join(BY_NAME))
        return self


def template_note(role: RoleConfig) -> str:
    """Which chat template formatted the prompts: the model directory's own (with a hash), or the server's."""
    if role.backend == "openai":
        return f"applied by the server ({role.base_urls[0]})"
    directory = Path(role.model)
    for candidate in (directory / "chat_template.jinja", directory / "tokenizer_config.json"):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8")
            if candidate.suffix == ".json":
                text = json.loads(text).get("chat_template") or ""
            if text:
                return f"the model's own ({candidate.name}, sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]})"
    return "the model's own (from its tokenizer)"


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def results_table(results: EvalResults) -> str:
    """Markdown: metrics (± standard error) per benchmark, then the protocol each was measured under."""
    lines = [f"# Evaluation of `{results['name']}`", "", f"- model: `{results['model']}`",
             f"- chat template: {results['template']}", f"- judge: {results['judge'] or 'none'}", "",
             "| benchmark | metric | value | standard error |", "|---|---|---:|---:|"]
    for name, block in results["benchmarks"].items():
        stderr = block["stderr"]
        label = benchmark_label(name, block)
        lines += [f"| {label} | {metric} | {format_value(value)} | "
                  f"{format_value(stderr[metric]) if metric in stderr else ''} |"
                  for metric, value in block["metrics"].items()]
    lines += ["", "## Protocol", ""]
    for name, block in results["benchmarks"].items():
        lines.append(f"- **{name}**: " + "; ".join(f"{k}: {v}" for k, v in block["protocol"].items()))
    return "\n".join(lines) + "\n"


def run_eval(config: EvalConfig, output_dir: Path, tracker_run: TrackerRun | None = None,
             engines: SharedEngines | None = None) -> Path:
    """Evaluate `config.model` on every configured benchmark; returns the path of results.json."""
    check_can_push(config.hub)
    for section in config.sections():  # read every test set first: a bad file fails before any call (exit 2)
        list(BY_NAME[section.name].decontamination_texts(section))
    with StageRun(output_dir, "eval", config, tracker_run or TrackerRun(config.report_to),
                  engines) as stage:
        return _evaluate_in(stage, config)


def _evaluate_in(stage: StageRun, config: EvalConfig) -> Path:
    run_dir = stage.run_dir
    name = config.name or config.model.model
    results = EvalResults(name=name, model=config.model.model, template=template_note(config.model),
                          judge=config.judge.model if config.judge else None, benchmarks={})

    def save(benchmark: str, result: BenchmarkResult) -> None:
        write_atomic(run_dir.path / f"{benchmark}.jsonl", _jsonl(result.records))
        for file_name, text in result.files.items():
            write_atomic(run_dir.path / file_name, text)
        stderr = {metric: standard_error(scores) for metric, scores in result.item_scores.items()} | result.stderr
        results["benchmarks"][benchmark] = benchmark_block(result, stderr)
        stage.tracker.log(eval_metrics(benchmark, result.metrics, stderr))
        write_atomic(run_dir.path / "results.json", json.dumps(results, indent=2, allow_nan=True) + "\n")
        write_atomic(run_dir.path / "results.md", results_table(results))

    async def evaluate() -> dict[str, Any]:
        roles = {"model": config.model} | ({"judge": config.judge} if config.judge else {})
        async with stage.pool(roles) as pool:
            context = EvalContext(pool, config.max_in_flight, name, run_dir.path)
            for section in config.sections():
                save(section.name, await BY_NAME[section.name].run(section, context))
            return pool.usage()

    usage = asyncio.run(evaluate())
    pushed = None
    if config.hub:
        pushed = push_folder(run_dir.path, config.hub, "dataset", f"Evaluation of {name}",
                             allow_patterns=["results.json", "results.md"], path_in_repo=folder_name(name))
    run_dir.finish(llm_usage=usage, hub_commit=pushed)
    return run_dir.path / "results.json"
