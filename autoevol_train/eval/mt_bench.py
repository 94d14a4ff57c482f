"""MT-Bench: two-turn answers with per-category temperatures, graded 1–10 by an LLM judge, FastChat's rules.

The judge prompts are FastChat's (`judge_prompts.jsonl`, given by path): `single-v1` for turn 1 and
`single-v1-multi-turn` for turn 2 (which shows both turns), and the `-math-` variants with the reference
answer for math, reasoning and coding. The rating is the first ``[[x]]`` in the judgement, else the first
``[x]``; a judgement with neither is -1 and left out of the means, exactly as FastChat does.

The questions come from FastChat's `question.jsonl` ({question_id, category, turns}) or the hub's
`HuggingFaceH4/mt_bench_prompts` ({prompt_id, category, prompt}); both are read into FastChat's shape.
"""

from __future__ import annotations

import asyncio
import ast
import re
from collections.abc import Iterator
from typing import Any, Literal, TypedDict

from pydantic import AliasChoices, Field

from autoevol_train.config import InputError, StrictModel
from autoevol_train.data.reader import is_local, read_rows
from autoevol_train.eval.records import BenchmarkResult, EvalContext

NAME = "mt_bench"

# FastChat's sampling temperature per category for the model's answers.
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
DEFAULT_TEMPERATURE = 0.7  # FastChat's for a category it does not list
NEED_REFERENCE = ("math", "reasoning", "coding")
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


class Config(StrictModel):
    """MT-Bench: 80 two-turn questions; the files are FastChat's (fastchat/llm_judge/data/...)."""

    name: Literal["mt_bench"] = "mt_bench"
    path: str = Field("HuggingFaceH4/mt_bench_prompts", validation_alias=AliasChoices("path", "questions"),
                      description="the questions: FastChat's mt_bench/question.jsonl, or a hub dataset with "
                      "FastChat's 80 questions (split 'train'); also accepted under the key `questions`")
    references: str | None = Field(None, description="mt_bench/reference_answer/gpt-4.jsonl (math, reasoning, "
                                   "coding); required to run the benchmark")
    judge_prompts: str | None = Field(None, description="judge_prompts.jsonl (single-v1, single-math-v1 and "
                                      "-multi-turn); required to run the benchmark")
    limit: int | None = Field(None, ge=1, description="the first N questions only (default: all 80)")
    max_tokens: int = Field(1024, ge=1, description="per answer (FastChat: 1024)")
    judge_max_tokens: int = Field(2048, ge=1, description="per judgement (FastChat: 2048)")


def load_questions(config: Config) -> list[dict[str, Any]]:
    """The questions (validated) as {question_id, category, turns}, from a local file or the hub."""
    rows = read_rows(config.path, "MT-Bench question file")
    if not is_local(config.path):  # the hub copy (HuggingFaceH4/mt_bench_prompts) names the fields differently
        rows = [{"question_id": r.get("prompt_id"), "category": r.get("category"), "turns": r.get("prompt")}
                for r in rows]
    questions = rows[: config.limit]
    for number, question in enumerate(questions, start=1):
        turns = question.get("turns")
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) for t in turns)):
            raise InputError(f"{config.path}:row {number}: field 'turns': expected two strings")
        if not isinstance(question.get("category"), str) or "question_id" not in question:
            raise InputError(f"{config.path}:row {number}: fields 'question_id' and 'category' are required")
    return questions


def decontamination_texts(config: Config) -> Iterator[tuple[str, str]]:
    """Both turns of every question: what a training row must not contain."""
    for question in load_questions(config):
        yield str(question["question_id"]), "\n".join(question["turns"])


def load(config: Config) -> tuple[list[dict], dict[int, list[str]], dict[str, dict]]:
    """Questions (validated), reference answers by question id, judge prompts by name."""
    if config.references is None or config.judge_prompts is None:
        raise InputError("mt_bench: `references` and `judge_prompts` are required to run MT-Bench")
    questions = load_questions(config)
    references = {r["question_id"]: r["choices"][0]["turns"] for r in read_rows(config.references, "reference file")}
    for question in questions:
        if question["category"] in NEED_REFERENCE and question["question_id"] not in references:
            raise InputError(f"{config.references}: no reference answer for question {question['question_id']} "
                             f"({question['category']} questions are judged against one)")
    prompts = {p["name"]: p for p in read_rows(config.judge_prompts, "judge prompt file")}
    for name in ("single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn"):
        if name not in prompts:
            raise InputError(f"{config.judge_prompts}: judge prompt {name!r} is missing")
    return questions, references, prompts


class Record(TypedDict):
    """One question: both answers, both judgements and their ratings (-1: no rating found)."""

    question_id: int
    category: str
    temperature: float
    answers: list[str]
    answer_errors: list[str | None]
    judge_prompts: list[str]
    judgements: list[str]
    judge_errors: list[str | None]
    rating_1: float
    rating_2: float


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


def score(records: list[Record]) -> dict[str, float]:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    turn1 = [r["rating_1"] for r in records if r["rating_1"] != -1]
    turn2 = [r["rating_2"] for r in records if r["rating_2"] != -1]
    return {"turn_1": mean(turn1), "turn_2": mean(turn2), "mean": mean(turn1 + turn2),
            "unparsed_judgements": sum((r["rating_1"] == -1) + (r["rating_2"] == -1) for r in records),
            "n": len(records)}


def item_scores(records: list[Record]) -> dict[str, list[float | None]]:
    """Per question: each turn's rating and their mean (over the valid ones; None where there is none). The
    mean of the per-question means equals FastChat's pooled mean when no judgement is unparsed."""
    def valid(*ratings: float) -> list[float]:
        return [r for r in ratings if r != -1]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {"turn_1": [mean(valid(r["rating_1"])) for r in records],
            "turn_2": [mean(valid(r["rating_2"])) for r in records],
            "mean": [mean(valid(r["rating_1"], r["rating_2"])) for r in records]}


async def run(config: Config, context: EvalContext) -> BenchmarkResult:
    """Two answers per question at the category's temperature, each turn graded by the judge at temperature 0."""
    questions, references, prompts = load(config)
    model, judge = context.pool["model"], context.pool["judge"]

    async def one(question: dict[str, Any]) -> Record:
        temperature = CATEGORY_TEMPERATURE.get(question["category"], DEFAULT_TEMPERATURE)
        chat = [{"role": "user", "content": question["turns"][0]}]
        first = await model.chat_one(chat, temperature=temperature, max_tokens=config.max_tokens)
        chat += [{"role": "assistant", "content": first.text}, {"role": "user", "content": question["turns"][1]}]
        second = await model.chat_one(chat, temperature=temperature, max_tokens=config.max_tokens)
        answers = [first.text, second.text]
        reference = references.get(question["question_id"])
        judgements = await asyncio.gather(*[
            judge.chat_one(judge_messages(prompts, question, answers, turn, reference), temperature=0.0, top_p=1.0,
                           max_tokens=config.judge_max_tokens) for turn in (1, 2)])
        return Record(question_id=question["question_id"], category=question["category"], temperature=temperature,
                      answers=answers, answer_errors=[first.error, second.error],
                      judge_prompts=[judge_prompt_name(question, turn) for turn in (1, 2)],
                      judgements=[j.text for j in judgements], judge_errors=[j.error for j in judgements],
                      rating_1=parse_rating(judgements[0].text), rating_2=parse_rating(judgements[1].text))

    records = await context.ordered(questions, one, NAME)
    protocol = {"judge": judge.model, "judge_temperature": 0.0,
                "judge_prompts": "FastChat single-v1 / single-math-v1 (+ multi-turn for turn 2)",
                "answer_temperatures": "per category: writing, roleplay 0.7; stem, humanities 0.1; others 0",
                "max_tokens": config.max_tokens, "references": "math, reasoning, coding (GPT-4 answers)",
                "rating": "first [[x]], else first [x], else -1 (dropped); mean over all valid ratings"}
    return BenchmarkResult(score(records), protocol, records, item_ids=[str(r["question_id"]) for r in records],
                           item_scores=item_scores(records))
