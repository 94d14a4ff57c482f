"""AlpacaEval: the model's answers against a baseline's, scored by the official annotator or by our own judge.

Two scorers (`scorer`):
- ``alpaca-eval``: the `alpaca-eval` package's own annotator (`annotators_config`; ``alpaca_eval_gpt4`` is
  AlpacaEval 1's GPT-4 annotator, the paper's), run as the package's CLI (`alpaca_eval.main evaluate`) in a
  subprocess, its OpenAI client pointed at the judge role's endpoint and key (OPENAI_API_BASE /
  OPENAI_API_KEY): with the recipes' GPT-4 judge role that is exactly the official setup, and a local
  OpenAI-compatible server works the same way. Its annotations are cached in the run directory (a re-run
  repeats no call), its leaderboard gives the win rate and standard error. Optional extra:
  ``pip install 'autoevol-train[alpaca]'``.
- ``judge`` (the offline fallback, the default): our pairwise judge below. Its numbers are labelled in every
  table as not comparable with the AlpacaEval leaderboard (another prompt, both orders, another judge).
``auto`` takes ``alpaca-eval`` when the package is installed and the judge role is an OpenAI-compatible
endpoint, else ``judge``.

Our judge: every instruction is judged twice, the model's answer first (as A) and second (as B), to cancel the judge's
position bias. A verdict for the model counts 1, a tie ([[C]]) 0.5, a verdict for the baseline 0; a judgement
without a verdict is left out (and counted). The win rate is the mean over all valid judgements, in %.

The judge prompt is ours (`prompts/alpaca_pairwise_*.txt`), or any file with {instruction}, {output_a} and
{output_b} slots. AlpacaEval 2's length-controlled win rate is a fitted GLM: it is computed by the optional
`alpaca-eval` package when that is installed (``pip install alpaca-eval``; it is not a dependency) from the
same judgements, in its own preference convention (1 baseline, 2 model, 1.5 tie). Its GLM is meant for
AlpacaEval's own 805 instructions; on other sets the package may refuse, and the reason is recorded. The run
also writes `alpaca_eval_outputs.json` in AlpacaEval's format for its official annotators.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

from pydantic import Field, PositiveInt

from autoevol_train.config import InputError, StrictModel
from autoevol_train.data.reader import is_local, load_prompt, read_rows, read_text
from autoevol_train.errors import ResultError
from autoevol_train.eval.records import BenchmarkResult, EvalContext
from autoevol_train.llm.types import OpenAIRole, RoleBase

__all__ = ["NAME", "Config", "run", "decontamination_texts", "load_rows", "judge_messages", "parse_verdict",
           "score", "length_controlled"]

NAME = "alpaca_eval"

_VERDICT = re.compile(r"\[\[([ABC])\]\]")
NOT_COMPARABLE = "own pairwise judge: not comparable with the AlpacaEval leaderboard"


class Config(StrictModel):
    """Instructions with a baseline's answers. Default: AlpacaEval's 805 with text-davinci-003's answers."""

    name: Literal["alpaca_eval"] = "alpaca_eval"
    baseline: str = Field("tatsu-lab/alpaca_eval", description="a local .json/.jsonl of {instruction, output} "
                          "rows (AlpacaEval's format) or a hub dataset repository")
    hub_config: str = Field("alpaca_eval", description="the repository's <name>.json: alpaca_eval (AlpacaEval 1, "
                            "text-davinci-003's answers) or alpaca_eval_gpt4_baseline (AlpacaEval 2)")
    system_prompt_file: str | None = Field(None, description="default: prompts/alpaca_pairwise_system.txt")
    prompt_file: str | None = Field(None, description="{instruction} {output_a} {output_b}; default: "
                                    "prompts/alpaca_pairwise_user.txt")
    limit: PositiveInt | None = Field(None, description="the first N instructions only")
    max_tokens: PositiveInt = 2048
    judge_max_tokens: PositiveInt = 1024
    scorer: Literal["judge", "alpaca-eval", "auto"] = Field(
        "judge", description="judge: our pairwise judge (offline fallback; not comparable with the AlpacaEval "
        "leaderboard); alpaca-eval: the alpaca-eval package's official annotator, sent to the judge role's "
        "endpoint; auto: alpaca-eval when the package is installed and the judge is an OpenAI-compatible endpoint")
    annotators_config: str = Field("alpaca_eval_gpt4", description="alpaca-eval's annotator: alpaca_eval_gpt4 "
                                   "(AlpacaEval 1, GPT-4, the paper's) or e.g. weighted_alpaca_eval_gpt4_turbo "
                                   "(AlpacaEval 2)")


def package_installed() -> bool:
    return importlib.util.find_spec("alpaca_eval") is not None


def uses_official_annotator(config: Config, judge: RoleBase) -> bool:
    """Whether `run` scores with alpaca-eval's annotator (see the module's docstring)."""
    if config.scorer == "auto":
        return package_installed() and isinstance(judge, OpenAIRole)
    return config.scorer == "alpaca-eval"


def load_rows(config: Config) -> list[dict[str, Any]]:
    path = config.baseline
    if not is_local(path):  # AlpacaEval's hub repository holds one JSON file per baseline (no loading script)
        from huggingface_hub import hf_hub_download
        path = hf_hub_download(config.baseline, f"{config.hub_config}.json", repo_type="dataset")
    rows = read_rows(path, "baseline file")
    for number, row in enumerate(rows, start=1):
        for field in ("instruction", "output"):
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise InputError(f"{config.baseline}:row {number}: field {field!r}: expected a string")
    return rows[: config.limit]


def decontamination_texts(config: Config) -> Iterator[tuple[str, str]]:
    """Every instruction (the baseline's answers are not the benchmark): what a training row must not contain."""
    for index, row in enumerate(load_rows(config)):
        yield f"alpaca-{index}", row["instruction"]


class Record(TypedDict):
    """One instruction: the model's answer, the baseline's, both judgements (model first, then second)."""

    instruction: str
    output: str
    error: str | None
    baseline: str
    judgements: list[str]
    verdicts: list[str | None]
    score_model_first: float | None
    score_model_second: float | None


def judge_messages(config: Config, instruction: str, output_a: str, output_b: str
                   ) -> list[dict[str, str]]:
    system = (read_text(config.system_prompt_file, "prompt file") if config.system_prompt_file
              else load_prompt("eval", "alpaca_pairwise_system.txt"))
    user = (read_text(config.prompt_file, "prompt file") if config.prompt_file
            else load_prompt("eval", "alpaca_pairwise_user.txt"))
    filled = user.replace("{instruction}", instruction).replace("{output_a}", output_a).replace(
        "{output_b}", output_b)
    return [{"role": "system", "content": system.strip()}, {"role": "user", "content": filled.strip()}]


def parse_verdict(judgement: str) -> str | None:
    """'A', 'B', 'C' (tie) — the last [[X]] in the judgement (its conclusion) — or None."""
    found = _VERDICT.findall(judgement)
    return found[-1] if found else None


def model_score(verdict: str | None, model_position: str) -> float | None:
    """1 if the verdict is for the model, 0.5 for a tie, 0 for the baseline, None without a verdict."""
    if verdict is None:
        return None
    if verdict == "C":
        return 0.5
    return 1.0 if verdict == model_position else 0.0


def score(records: list[Record]) -> dict[str, Any]:
    values = [v for r in records for v in (r["score_model_first"], r["score_model_second"]) if v is not None]
    first = [r["score_model_first"] for r in records if r["score_model_first"] is not None]
    second = [r["score_model_second"] for r in records if r["score_model_second"] is not None]

    def rate(xs: list[float]) -> float:
        return 100 * sum(xs) / len(xs) if xs else float("nan")

    return {"win_rate": rate(values), "win_rate_model_first": rate(first), "win_rate_model_second": rate(second),
            "ties": sum(v == 0.5 for v in values), "no_verdict": 2 * len(records) - len(values),
            "n": len(records)}


def length_controlled(records: list[Record], model_name: str, judge_name: str) -> dict[str, Any]:
    """AlpacaEval 2's length-controlled win rate through the `alpaca-eval` package, when it is installed."""
    if not package_installed():
        return {"length_controlled_win_rate": None, "note": "alpaca-eval is not installed"}
    annotations = []
    for index, r in enumerate(records):
        for key in ("score_model_first", "score_model_second"):
            if r[key] is not None:
                annotations.append({"index": index, "instruction": r["instruction"], "output_1": r["baseline"],
                                    "output_2": r["output"], "generator_1": "baseline", "generator_2": model_name,
                                    "annotator": judge_name, "preference": 1.0 + r[key]})
    return _length_controlled(annotations)


def _length_controlled(annotations: list[dict[str, Any]]) -> dict[str, Any]:
    from alpaca_eval.metrics import get_length_controlled_winrate

    try:
        metrics = get_length_controlled_winrate(annotations, save_weights_dir=None)
    except Exception as exc:  # noqa: BLE001 - the package's GLM may refuse an instruction set; say why
        return {"length_controlled_win_rate": None, "note": f"alpaca-eval: {type(exc).__name__}: {exc}"[:300]}
    return {"length_controlled_win_rate": float(metrics["length_controlled_winrate"]),
            "standard_error": float(metrics["lc_standard_error"]), "note": "alpaca-eval"}


def item_scores(records: list[Record]) -> dict[str, list[float | None]]:
    """Per instruction, in %: the mean of its valid verdicts (both orders) and each order's verdict."""
    def mean(values: list[float | None]) -> float | None:
        valid = [v for v in values if v is not None]
        return 100 * sum(valid) / len(valid) if valid else None

    return {"win_rate": [mean([r["score_model_first"], r["score_model_second"]]) for r in records],
            "win_rate_model_first": [mean([r["score_model_first"]]) for r in records],
            "win_rate_model_second": [mean([r["score_model_second"]]) for r in records]}


class OfficialRecord(TypedDict):
    """One instruction scored by alpaca-eval's annotator: its preference (1 baseline, 2 model, 1.5 tie, None
    when its parser found none) and the annotator's raw answer."""

    instruction: str
    output: str
    error: str | None
    baseline: str
    preference: float | None
    annotation: str


async def run(config: Config, context: EvalContext) -> BenchmarkResult:
    """Greedy answers, scored by alpaca-eval's annotator or by our judge in both orders (`scorer`)."""
    official = uses_official_annotator(config, context.pool["judge"].config)
    if official and not package_installed():
        raise InputError("alpaca_eval.scorer: alpaca-eval: the package is not installed "
                         "(pip install 'autoevol-train[alpaca]'), or set scorer: judge")
    rows = load_rows(config)
    if official:
        answers = await context.ordered(rows, lambda row: context.pool["model"].chat_one(
            [{"role": "user", "content": row["instruction"]}], temperature=0.0, top_p=1.0,
            max_tokens=config.max_tokens), NAME)
        return await _run_official(config, context, rows, [(a.text, a.error) for a in answers])
    return await _run_judge(config, context, rows)


async def _annotate(config: Config, judge: OpenAIRole, directory: Path) -> None:
    """The package's CLI on directory/{model,reference}_outputs.json; results in directory/<annotators_config>/.

    Its own annotation cache is off: alpaca-eval 0.6.6 fails to re-read a cache of integer preferences under
    pandas 3 (TypeError: Invalid value '1.5' for dtype 'int64'); `_run_official` reuses a finished annotation
    instead, so only an annotation killed half-way is repeated.
    """
    env = {**os.environ, "OPENAI_API_BASE": judge.base_urls[0],
           "OPENAI_API_KEY": os.environ.get(judge.api_key_env, "") if judge.api_key_env else "EMPTY"}
    command = [sys.executable, "-m", "alpaca_eval.main", "evaluate",
               f"--model_outputs={directory / 'model_outputs.json'}",
               f"--reference_outputs={directory / 'reference_outputs.json'}",
               f"--annotators_config={config.annotators_config}", f"--output_path={directory}",
               "--fn_metric=get_winrate", "--sort_by=win_rate", "--precomputed_leaderboard=None",
               "--is_cache_leaderboard=False", "--caching_path=None"]
    log = directory / "alpaca_eval.log"
    with log.open("w") as handle:
        process = await asyncio.create_subprocess_exec(*command, env=env, stdout=handle, stderr=handle)
        code = await process.wait()
    if code != 0 or not (directory / config.annotators_config / "annotations.json").is_file():
        last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise ResultError(f"alpaca-eval annotator {config.annotators_config} failed (exit {code}): {last[:200]} "
                          f"(log: {log})")


async def _run_official(config: Config, context: EvalContext, rows: list[dict[str, Any]],
                        answers: list[tuple[str, str | None]]) -> BenchmarkResult:
    """alpaca-eval's `evaluate` on the answers, in a subprocess whose OpenAI client talks to the judge role."""
    directory = context.run_dir / "alpaca_eval_official"
    directory.mkdir(exist_ok=True)
    outputs = [{"instruction": row["instruction"], "output": text, "generator": context.model_name}
               for row, (text, _) in zip(rows, answers)]
    reference = [{"instruction": row["instruction"], "output": row["output"],
                  "generator": str(row.get("generator", "baseline"))} for row in rows]
    inputs = {"model_outputs.json": json.dumps(outputs, indent=1, ensure_ascii=False),
              "reference_outputs.json": json.dumps(reference, indent=1, ensure_ascii=False)}
    fingerprint = hashlib.sha256(json.dumps([inputs, config.annotators_config]).encode()).hexdigest()
    results = directory / config.annotators_config
    done = directory / "done.sha256"  # the same answers were annotated already: a re-run repeats no call
    if not (done.is_file() and done.read_text() == fingerprint and (results / "annotations.json").is_file()):
        for name, text in inputs.items():
            (directory / name).write_text(text)
        await _annotate(config, context.pool["judge"].config, directory)
        done.write_text(fingerprint)
    annotations = json.loads((results / "annotations.json").read_text())
    with (results / "leaderboard.csv").open() as handle:
        board = next(csv.DictReader(handle))
    preference = {(a["instruction"], a["output_2"]): a["preference"] for a in annotations}
    raw = {(a["instruction"], a["output_2"]): str(a.get("preference_raw_completion", "")) for a in annotations}
    records = []
    for row, (text, error) in zip(rows, answers):
        value = preference.get((row["instruction"], text))
        records.append(OfficialRecord(instruction=row["instruction"], output=text, error=error,
                                      baseline=row["output"], annotation=raw.get((row["instruction"], text), ""),
                                      preference=None if value is None or value != value else float(value)))
    lc = _length_controlled([a for a in annotations if a["preference"] == a["preference"]])
    metrics = {"win_rate": float(board["win_rate"]), "length_controlled_win_rate": lc["length_controlled_win_rate"],
               "ties": int(float(board["n_draws"])), "no_verdict": sum(r["preference"] is None for r in records),
               "n": len(records)}
    from alpaca_eval import __version__ as version

    protocol = {"scorer": f"alpaca-eval {version} official annotator {config.annotators_config}",
                "judge_endpoint": context.pool["judge"].config.base_urls[0], "baseline": config.baseline,
                "preference": "1 baseline, 2 model, 1.5 tie (the package's)", "decoding": "greedy",
                "max_tokens": config.max_tokens, "length_controlled": lc["note"]}
    return BenchmarkResult(metrics, protocol, records, {"alpaca_eval_outputs.json": json.dumps(
        outputs, indent=1, ensure_ascii=False)}, item_ids=[f"alpaca-{i}" for i in range(len(records))],
        item_scores={"win_rate": [None if r["preference"] is None else 100 * (r["preference"] - 1)
                                  for r in records]},
        stderr={"length_controlled_win_rate": lc.get("standard_error")})  # only when computed


async def _run_judge(config: Config, context: EvalContext, rows: list[dict[str, Any]]) -> BenchmarkResult:
    """Our judge, both orders (the offline fallback)."""
    model, judge = context.pool["model"], context.pool["judge"]

    async def one(row: dict[str, Any]) -> Record:
        answer = await model.chat_one([{"role": "user", "content": row["instruction"]}], temperature=0.0, top_p=1.0,
                                      max_tokens=config.max_tokens)
        orders = ((answer.text, row["output"]), (row["output"], answer.text))
        first, second = await asyncio.gather(*[
            judge.chat_one(judge_messages(config, row["instruction"], a, b), temperature=0.0, top_p=1.0,
                           max_tokens=config.judge_max_tokens) for a, b in orders])
        verdicts = [parse_verdict(first.text), parse_verdict(second.text)]
        return Record(instruction=row["instruction"], output=answer.text, error=answer.error, baseline=row["output"],
                      judgements=[first.text, second.text], verdicts=verdicts,
                      score_model_first=model_score(verdicts[0], "A"),
                      score_model_second=model_score(verdicts[1], "B"))

    records = await context.ordered(rows, one, NAME)
    metrics = score(records)
    lc = length_controlled(records, context.model_name, judge.model)
    metrics["length_controlled_win_rate"] = lc["length_controlled_win_rate"]
    protocol = {"scorer": NOT_COMPARABLE, "judge": judge.model, "judge_temperature": 0.0, "baseline": config.baseline,
                "judge_prompt": config.prompt_file or "prompts/alpaca_pairwise_*.txt",
                "orders": "both (model as A, then as B)", "tie": 0.5, "decoding": "greedy",
                "max_tokens": config.max_tokens, "length_controlled": lc["note"]}
    outputs = [{"instruction": r["instruction"], "output": r["output"], "generator": context.model_name}
               for r in records]  # AlpacaEval's format, for its own annotators
    return BenchmarkResult(metrics, protocol, records,
                           {"alpaca_eval_outputs.json": json.dumps(outputs, indent=1, ensure_ascii=False)},
                           item_ids=[f"alpaca-{i}" for i in range(len(records))], item_scores=item_scores(records),
                           stderr={"length_controlled_win_rate": lc.get("standard_error")},  # only when computed
                           caveat=NOT_COMPARABLE)
