"""The failure detector F and the elimination checks, each with its reason code."""

from __future__ import annotations

import asyncio

import pytest

from autoevol_train.config import InputError, parse_config
from autoevol_train.evol.failures import FailureRules, check_evolution, evol_failure, judge_equal
from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.types import Completion, OpenAIRole

PAPER = FailureRules()
F_ONLY = FailureRules(elimination=False)
OFFICIAL = FailureRules(official_code_additions=True)
ORIGINAL = "How many apples are left if Tom eats 3 of 7?"
EVOLVED = "How many apples are left if Tom eats 3 of 7 and gives half of the rest away?"


def ok(text: str) -> Completion:
    return Completion.checked(text, "stop")


@pytest.mark.parametrize("response, rules, reason", [
    ("Sure, could you tell me how many apples Tom had?", PAPER, "response_asks_back"),
    ("What do you mean by the rest?", PAPER, "response_asks_back"),
    ("Sure, 2 apples are left.", PAPER, None),                       # prefix, but no question mark
    ("Is 2 the answer?", PAPER, None),                                # question, not a listed prefix
    ("I can solve it; please provide the number of apples.", PAPER, "response_please_provide"),
    ("Please provide the number of apples.", F_ONLY, None),          # the paper's rule is case-sensitive
    ("Please provide the number of apples.", OFFICIAL, "response_please_provide"),
    ("I'm sorry, which apples do you mean?", F_ONLY, None),
    ("I'm sorry, which apples do you mean?", FailureRules(official_code_additions=True, elimination=False),
     "response_asks_back"),
    ("That is not possible with the data given. " + "word " * 90, OFFICIAL, "response_not_possible"),
    ("Sorry, I cannot answer that.", PAPER, "short_sorry"),
    ("Sorry, I cannot answer that.", F_ONLY, None),
    ("Sorry for the long answer. " + "apples " * 90 + "so 2 are left.", PAPER, None),
    ("... ?! the, and.", PAPER, "punctuation_only"),
    ("Tom has 2 apples left, because 7 - 3 = 4 and half of 4 is 2.", PAPER, None),
])
def test_response_rules(response, rules, reason):
    assert check_evolution(ORIGINAL, EVOLVED, ok(response), rules) == reason
    assert check_evolution(ORIGINAL, EVOLVED, response, rules) == reason  # a plain string works the same


def test_evolution_level_checks_come_first_and_work_without_a_response():
    assert check_evolution(ORIGINAL, None, None, PAPER) == "parse_failure"
    assert check_evolution(ORIGINAL, "  how many apples are left if Tom eats 3 of 7 ", None, PAPER) == "unchanged"
    assert check_evolution(ORIGINAL, "Rewritten prompt: " + EVOLVED, None, PAPER) == "copied_prompt_words"
    assert check_evolution(ORIGINAL, EVOLVED + " #Plan#: none", ok("2"), PAPER) == "copied_prompt_words"
    assert check_evolution(ORIGINAL, ORIGINAL, ok("4"), F_ONLY) is None  # elimination off: F alone
    assert check_evolution(ORIGINAL, EVOLVED, None, PAPER) is None


def test_unusable_completions_have_their_own_codes():
    truncated = Completion.checked("Tom has", "length")
    assert check_evolution(ORIGINAL, EVOLVED, truncated, PAPER) == "response_truncated"
    assert check_evolution(ORIGINAL, EVOLVED, truncated, FailureRules(truncated_response_fails=False)) is None
    assert check_evolution(ORIGINAL, EVOLVED, Completion.checked("  ", "stop"), PAPER) == "response_empty"
    assert check_evolution(ORIGINAL, EVOLVED, Completion.failed("http_400"), PAPER) == "response_request_failed"
    assert evol_failure(Completion.failed("http_500")) == "evol_request_failed"
    assert evol_failure(Completion.checked("Step 1", "length")) == "evol_truncated"
    assert evol_failure(Completion.checked("", "stop")) == "evol_empty"
    assert evol_failure(ok("#Finally Rewritten Instruction#: x")) is None


def test_rules_are_configurable_and_strict():
    rules = FailureRules(asks_back_prefixes=["Hmm"], please_provide_phrases=["need more data"])
    assert check_evolution(ORIGINAL, EVOLVED, ok("Hmm, which Tom?"), rules) == "response_asks_back"
    assert check_evolution(ORIGINAL, EVOLVED, ok("Sure, which Tom?"), rules) is None
    assert check_evolution(ORIGINAL, EVOLVED, ok("I need more data here."), rules) == "response_please_provide"
    with pytest.raises(InputError, match="x.yaml: sorry_max_word: unknown key"):
        parse_config(FailureRules, {"sorry_max_word": 3}, "x.yaml")


def test_judge_equal_reads_the_verdict(scripted_server):
    def rule(body, index):
        second = body["messages"][0]["content"].split("Second instruction:")[1]
        return "Not Equal" if "half" in second else ("Equal." if "same" in second else "I cannot tell")

    server = scripted_server(rule)

    async def main():
        async with LLMPool({"evol": OpenAIRole(model="judge", base_urls=[server.base_url])}) as pool:
            return [await judge_equal(pool["evol"], ORIGINAL, text)
                    for text in (EVOLVED, "the same task", "something else")]

    assert asyncio.run(main()) == [False, True, False]
    assert "Equal, Not Equal" in server.counters.bodies[0]["messages"][0]["content"]
