"""MT-Bench: two-turn answers with per-category temperatures, graded 1–10 by an LLM judge, FastChat's rules.

The judge prompts are FastChat's (`judge_prompts.jsonl`, given by path): `single-v1` for turn 1 and
`single-v1-multi-turn` for turn 2 (which shows both turns), and the `-math-` variants with the reference
answer for math, reasoning and coding. The rating is the first ``[[x]]`` in the judgement, else the first
``[x]``; a judgement with neither is -1 and left out of the means, exactly as FastChat does.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from autoevol_train.config import InputError, StrictModel

# FastChat's sampling temperature per category for the model's answers.
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
DEFAULT_TEMPERATURE = 0.7  # FastChat's for a category it does not list
NEED_REFERENCE = ("math", "reasoning", "coding")
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


class MTBenchConfig(StrictModel):
    """MT-Bench: 80 two-turn questions; the files are FastChat's (fastchat/llm_judge/data/...)."""

    questions: str = Field(description="mt_bench/question.jsonl")
    references: str = Field(description="mt_bench/reference_answer/gpt-4.jsonl (math, reasoning, coding)")
    judge_prompts: str = Field(description="judge_prompts.jsonl (single-v1, single-math-v1 and -multi-turn)")
    limit: int | None = Field(None, ge=1, description="the first N questions only (default: all 80)")
    max_tokens: int = Field(1024, ge=1, description="per answer (FastChat: 1024)")
    judge_max_tokens: int = Field(2048, ge=1, description="per judgement (FastChat: 2048)")


def _jsonl(path: str) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load(config: MTBenchConfig) -> tuple[list[dict], dict[int, list[str]], dict[str, dict]]:
    """Questions (validated), reference answers by question id, judge prompts by name."""
    questions = _jsonl(config.questions)[: config.limit]
    for number, question in enumerate(questions, start=1):
        turns = question.get("turns")
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) for t in turns)):
            raise InputError(f"{config.questions}:row {number}: field 'turns': expected two strings")
        if not isinstance(question.get("category"), str) or "question_id" not in question:
            raise InputError(f"{config.questions}:row {number}: fields 'question_id' and 'category' are required")
    references = {r["question_id"]: r["choices"][0]["turns"] for r in _jsonl(config.references)}
    for question in questions:
        if question["category"] in NEED_REFERENCE and question["question_id"] not in references:
            raise InputError(f"{config.references}: no reference answer for question {question['question_id']} "
                             f"({question['category']} questions are judged against one)")
    prompts = {p["name"]: p for p in _jsonl(config.judge_prompts)}
    for name in ("single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn"):
        if name not in prompts:
            raise InputError(f"{config.judge_prompts}: judge prompt {name!r} is missing")
    return questions, references, prompts


def parse_rating(judgement: str) -> float:
    match = _RATING.search(judgement) or _RATING_BACKUP.search(judgement)
    if not match:
        return -1
    try:
        return float(ast.literal_eval(match.group(1)))
    except (ValueError, SyntaxError):
        return -1


def judge_prompt_name(question: dict[str, Any], turn: int) -> str:
    """FastChat's choice: the math prompt (with reference) for math/reasoning/coding; multi-turn for turn 2."""
    base = "single-math-v1" if question["category"] in NEED_REFERENCE else "single-v1"
    return base + ("-multi-turn" if turn == 2 else "")


def judge_messages(prompts: dict[str, dict], question: dict, answers: list[str], turn: int,
                   reference: list[str] | None) -> list[dict[str, str]]:
    """The judge's chat for one turn (1 or 2), filled as FastChat fills its templates."""
    math = question["category"] in NEED_REFERENCE
    template = prompts[judge_prompt_name(question, turn)]
    fields: dict[str, str] = {}
    if turn == 1:
        fields.update(question=question["turns"][0], answer=answers[0])
        if math:
            fields["ref_answer_1"] = reference[0]  # type: ignore[index]
    else:
        fields.update(question_1=question["turns"][0], answer_1=answers[0], question_2=question["turns"][1],
                      answer_2=answers[1])
        if math:
            fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1])  # type: ignore[index]
    return [{"role": "system", "content": template["system_prompt"]},
            {"role": "user", "content": template["prompt_template"].format(**fields)}]


def score(records: list[dict[str, Any]]) -> dict[str, float]:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    turn1 = [r["rating_1"] for r in records if r["rating_1"] != -1]
    turn2 = [r["rating_2"] for r in records if r["rating_2"] != -1]
    return {"turn_1": mean(turn1), "turn_2": mean(turn2), "mean": mean(turn1 + turn2),
            "unparsed_judgements": sum((r["rating_1"] == -1) + (r["rating_2"] == -1) for r in records),
            "n": len(records)}
