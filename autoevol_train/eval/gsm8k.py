"""GSM8K: the paper's zero-shot chat protocol, or lm-eval's 8-shot chain-of-thought, with both reference filters.

Prompts go through the model's own chat template. ``zero-shot`` asks the question with a short instruction
to end on "The answer is: N" (`prompts/gsm8k_zero_shot.txt`; the paper's math responses end that way);
``8-shot-cot`` gives the eight chain-of-thought exemplars lm-eval's ``gsm8k_cot`` uses as earlier chat turns
("Q: ...\\nA:" / the worked answer), as lm-eval does with ``--apply_chat_template --fewshot_as_multiturn``.

Four accuracies, all reported (chat models score very differently under them); the headline is `strict` for
the zero-shot protocol and `gsm8k_cot/strict-match` for 8-shot-cot, and the protocol says so:
- ``gsm8k/strict-match``, ``gsm8k_cot/strict-match``, ``flexible-extract``: lm-eval's filters exactly, with the
  regexes of its task files (`LM_EVAL_FILTERS`) and its RegexFilter semantics (all matches, the first or the
  last, the first non-empty group, stripped, "[invalid]" when none) and exact_match (",", "$", everything up
  to "#### " and a trailing "." removed from prediction and target, case ignored). Mind the quirk of
  gsm8k_cot's pattern: its final "." must consume one more character, so "The answer is 18" at the end of a
  line or of the text extracts "1" (and "The answer is 5" there nothing).
- ``strict`` (the project's): the first number after ``#### ``, "The answer is " or "The answer is: " (the
  paper's trained format, which no lm-eval filter accepts), whole, normalised like exact_match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Literal, TypedDict

from pydantic import Field, PositiveInt

from autoevol_train.config import InputError, StrictModel
from autoevol_train.data.reader import load_prompt, read_rows, read_text
from autoevol_train.eval.records import BenchmarkResult, EvalContext

__all__ = ["NAME", "Config", "load", "run", "decontamination_texts", "extract_strict", "extract_flexible",
           "lm_eval_filter", "exact_match", "normalise", "build_messages", "load_rows", "score", "headline"]

NAME = "gsm8k"

STRICT = re.compile(r"(?:#### |The answer is:? )(\-?[0-9\.\,]+)")
# lm-eval's filter_list entries (lm_eval/tasks/gsm8k/gsm8k.yaml, gsm8k-cot.yaml): metric → (regex, group_select)
LM_EVAL_FILTERS = {
    "gsm8k/strict-match": (re.compile(r"#### (\-?[0-9\.\,]+)"), 0),
    "gsm8k_cot/strict-match": (re.compile(r"The answer is (\-?[0-9\.\,]+)."), 0),
    "flexible-extract": (re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), -1),
}
# lm-eval's exact_match regexes_to_ignore for both tasks, applied in this order
_IGNORE = [re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]
INVALID = "[invalid]"  # lm-eval's fallback when a filter finds nothing (never equal to a reference)
# metric → the record's verdict field
METRICS = {"strict": "strict_correct", "gsm8k/strict-match": "gsm8k_strict_match_correct",
           "gsm8k_cot/strict-match": "gsm8k_cot_strict_match_correct", "flexible-extract": "flexible_correct"}


class Config(StrictModel):
    """GSM8K test set (1,319 problems); paper protocol: zero-shot chat, greedy."""

    name: Literal["gsm8k"] = "gsm8k"
    path: str = Field("openai/gsm8k", description="test set: a local .jsonl with question/answer, or a hub "
                      "dataset name (config 'main', split 'test')")
    protocol: Literal["zero-shot", "8-shot-cot"] = Field(
        "zero-shot", description="zero-shot: the question + an instruction to end with 'The answer is: N' "
        "(paper); 8-shot-cot: lm-eval gsm8k_cot's exemplars as earlier chat turns")
    prompt_file: str | None = Field(None, description="zero-shot prompt with a {question} slot; default: "
                                    "prompts/gsm8k_zero_shot.txt")
    limit: PositiveInt | None = Field(None, description="the first N problems only (default: all)")
    max_tokens: PositiveInt = 1024
    stop: list[str] = Field([], description="extra stop strings; 8-shot-cot adds lm-eval's 'Q:'")


def normalise(text: str) -> str:
    """lm-eval's exact_match normalisation for GSM8K (regexes_to_ignore, then ignore_case)."""
    for pattern in _IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def exact_match(prediction: str, target: str) -> bool:
    """lm-eval's exact_match as the GSM8K tasks configure it (regexes_to_ignore on both sides, ignore_case)."""
    for pattern in _IGNORE:
        prediction, target = pattern.sub("", prediction), pattern.sub("", target)
    return prediction.lower() == target.lower()


def lm_eval_filter(metric: str, text: str) -> str:
    """lm-eval's RegexFilter with the pattern and group_select of `metric` (a key of LM_EVAL_FILTERS)."""
    pattern, group_select = LM_EVAL_FILTERS[metric]
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):  # several groups: the first that matched
        match = next((group for group in match if group), INVALID)
    return match.strip()


def extract_strict(text: str) -> str:
    match = STRICT.search(text)
    return match.group(1).strip() if match else INVALID


def extract_flexible(text: str) -> str:
    return lm_eval_filter("flexible-extract", text)


def headline(config: Config) -> str:
    """The metric a table shows first: the filter that matches the answer format the protocol asks for."""
    return "strict" if config.protocol == "zero-shot" else "gsm8k_cot/strict-match"


def reference_answer(answer: str) -> str:
    return normalise(answer.split("####")[-1])


def build_messages(question: str, config: Config) -> list[dict[str, str]]:
    if config.protocol == "8-shot-cot":
        messages = []
        for line in load_prompt("eval", "gsm8k_cot_exemplars.jsonl").splitlines():
            shot = json.loads(line)
            messages += [{"role": "user", "content": f"Q: {shot['question']}\nA:"},
                         {"role": "assistant", "content": shot["target"]}]
        return messages + [{"role": "user", "content": f"Q: {question}\nA:"}]
    template = (read_text(config.prompt_file, "prompt file") if config.prompt_file
                else load_prompt("eval", "gsm8k_zero_shot.txt"))
    return [{"role": "user", "content": template.replace("{question}", question).strip()}]


def stop_strings(config: Config) -> list[str]:
    return config.stop + (["Q:"] if config.protocol == "8-shot-cot" else [])


def load_rows(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """GSM8K rows (question, answer) from a local JSONL file or the hub (config 'main', split 'test')."""
    try:
        rows = read_rows(path, "GSM8K file", hub_config="main", split="test")
    except InputError as exc:
        raise InputError(f"gsm8k: {exc}") from None
    for number, row in enumerate(rows, start=1):
        for field in ("question", "answer"):
            if not isinstance(row.get(field), str):
                raise InputError(f"{path}:row {number}: field {field!r}: expected a string")
    return rows[:limit]


def load(config: Config) -> list[dict[str, Any]]:
    return load_rows(config.path, config.limit)


def item_id(index: int) -> str:
    """A test problem's id: its position in the test set (the order of the hub's split and of test.jsonl)."""
    return f"test-{index}"


def decontamination_texts(config: Config) -> Iterator[tuple[str, str]]:
    """Question and reference solution of every test problem: what a training row must not contain."""
    for index, row in enumerate(load(config)):
        yield item_id(index), f"{row['question']}\n{row['answer']}"


class Record(TypedDict):
    """One answered problem: the output, both extractions, the reference and the verdicts."""

    question: str
    reference: str
    output: str
    error: str | None
    strict: str
    flexible: str
    gsm8k_strict_match: str
    gsm8k_cot_strict_match: str
    strict_correct: bool
    flexible_correct: bool
    gsm8k_strict_match_correct: bool
    gsm8k_cot_strict_match_correct: bool


def record(row: dict[str, Any], output: str, error: str | None) -> Record:
    """Everything about one answer: output, every extraction, the reference, the verdicts.

    lm-eval's targets: gsm8k's is the whole reference solution, gsm8k_cot's the text after "####", stripped
    (exact_match reduces both to the final number).
    """
    reference = reference_answer(row["answer"])
    strict, flexible = extract_strict(output), extract_flexible(output)
    lm_strict, cot_strict = lm_eval_filter("gsm8k/strict-match", output), lm_eval_filter("gsm8k_cot/strict-match",
                                                                                           output)
    cot_target = row["answer"].split("####")[-1].strip()
    return Record(question=row["question"], reference=reference, output=output, error=error, strict=strict,
                  flexible=flexible, gsm8k_strict_match=lm_strict, gsm8k_cot_strict_match=cot_strict,
                  strict_correct=normalise(strict) == reference,
                  flexible_correct=exact_match(flexible, row["answer"]),
                  gsm8k_strict_match_correct=exact_match(lm_strict, row["answer"]),
                  gsm8k_cot_strict_match_correct=exact_match(cot_strict, cot_target))


def score(records: list[Record]) -> dict[str, float]:
    """Accuracy in % under each filter (METRICS), the number of problems and of failed requests."""
    n = len(records)
    accuracies = {metric: 100 * sum(r[field] for r in records) / n if n else float("nan")  # type: ignore[literal-required]
                  for metric, field in METRICS.items()}
    return accuracies | {"n": n, "failed_requests": sum((r["error"] or "").startswith("request_failed")
                                                        for r in records)}


async def run(config: Config, context: EvalContext) -> BenchmarkResult:
    """Greedy answers to every problem, both extractions, the accuracies."""
    stop = stop_strings(config)

    async def one(row: dict[str, Any]) -> Record:
        answer = await context.pool["model"].chat_one(build_messages(row["question"], config), temperature=0.0,
                                                      top_p=1.0, max_tokens=config.max_tokens, stop=tuple(stop))
        return record(row, answer.text, answer.error)

    records = await context.ordered(load(config), one, NAME)
    protocol = {
        "shots": 0 if config.protocol == "zero-shot" else 8,
        "prompt": (config.prompt_file or "prompts/gsm8k_zero_shot.txt") if config.protocol == "zero-shot"
        else "lm-eval gsm8k_cot exemplars as chat turns",
        "decoding": "greedy", "max_tokens": config.max_tokens, "stop": stop,
        "filters": "strict (project): first '#### N' / 'The answer is N' / 'The answer is: N'; "
                   + "; ".join(f"{metric} (lm-eval): {pattern.pattern} [{'first' if select == 0 else 'last'} match]"
                               for metric, (pattern, select) in LM_EVAL_FILTERS.items()),
        "headline": headline(config), "normalisation": "lm-eval exact_match (',', '$', '(?s).*#### ', "
                                                       "trailing '.' removed; case ignored)",
    }
    return BenchmarkResult(score(records), protocol, records, item_ids=[item_id(i) for i in range(len(records))],
                           item_scores={metric: [100.0 * r[field] for r in records]  # type: ignore[literal-required]
                                        for metric, field in METRICS.items()})
