"""Did an evolution fail? One place for the paper's failure detector F and Evol-Instruct's elimination.

The optimize stage counts failures to score methods (the failure rate λ) and the evolve stage drops failed
items from the dataset; both ask `check_evolution` (through `attempt.evolve_once`), which answers with a
reason code (or None for a success), so every count in a report says *why*; docs/optimize.md lists the codes.

Defaults are the paper's F plus Evol-Instruct's elimination; `official_code_additions` adds the rules the
authors' code added; every list of words is configurable.
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING

from pydantic import Field

from autoevol_train.config import StrictModel
from autoevol_train.data.reader import load_prompt
from autoevol_train.evol.methods import fill
from autoevol_train.llm.types import Completion

if TYPE_CHECKING:
    from autoevol_train.llm.client import LLMClient

__all__ = ["FailureRules", "check_evolution", "evol_failure", "judge_equal", "format_counts", "REQUEST_ERRORS",
           "OFFICIAL_PREFIXES", "OFFICIAL_PHRASES"]

# Failures caused by a failed request (the endpoint's fault), not by the method or the content.
REQUEST_ERRORS = ("evol_request_failed", "response_request_failed")
OFFICIAL_PREFIXES = ["I'm sorry", "Is there anything else", "As an AI assistant", "I understand"]
OFFICIAL_PHRASES = ["not possible"]
_STOP_WORDS = frozenset(
    "a an and are as at be but by do for from has have i if in is it its me my no not of ok okay on or so "
    "that the then there these this to was we were what which who will with yes you your".split()
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class FailureRules(StrictModel):
    """Which failures count. Paper defaults; the authors' code additions behind one switch."""

    asks_back_prefixes: list[str] = Field(
        ["Understood", "Thank you", "Sure", "What", "That is correct", "Great"],
        description="F: a response starting with one of these (case-sensitive) and ending with '?' fails")
    please_provide_phrases: list[str] = Field(
        ["please provide"], description="F: a response containing one of these fails (case-sensitive, as in "
        "the paper; case-insensitive with official_code_additions)")
    official_code_additions: bool = Field(
        False, description="also the official code's prefixes (I'm sorry, As an AI assistant, ...), its "
        "'not possible' rule, and case-insensitive phrase matching")
    truncated_response_fails: bool = Field(
        True, description="a response cut off by max_tokens counts as failed (F cannot be judged on it)")
    elimination: bool = Field(
        True, description="Evol-Instruct's elimination checks: unchanged, copied prompt words, short sorry, "
        "punctuation only (the optimize stage's paper default turns them off: λ is F alone)")
    copied_prompt_words: list[str] = Field(
        ["given prompt", "rewritten prompt", "created prompt", "#instruction#", "#methods list#", "#plan#",
         "#rewritten instruction#", "#finally rewritten instruction#"],
        description="elimination: the evolved instruction must not contain these (case-insensitive)")
    sorry_max_words: int = Field(80, ge=0, description="elimination: 'sorry' in a response shorter than this fails")
    llm_equal_judge: bool = Field(
        False, description="elimination: ask the evol LLM whether original and evolution are 'Equal' "
        "(one extra call per item; the caller runs judge_equal)")


def format_counts(counts: dict[str, int]) -> str:
    """"parse_failure 3, short_sorry 1": failure counts in one line (reports, history, error messages)."""
    return ", ".join(f"{reason} {count}" for reason, count in counts.items()) or "none"


def evol_failure(completion: Completion) -> str | None:
    """The reason an evol call's completion is unusable, or None when its text may be parsed."""
    if completion.ok:
        return None
    if completion.error == "truncated":
        return "evol_truncated"
    if completion.error == "empty":
        return "evol_empty"
    return "evol_request_failed"


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def _response_failure(text: str, rules: FailureRules) -> str | None:
    stripped = text.strip()
    prefixes = rules.asks_back_prefixes + (OFFICIAL_PREFIXES if rules.official_code_additions else [])
    if stripped.endswith("?") and any(stripped.startswith(p) for p in prefixes):
        return "response_asks_back"
    haystack = stripped.lower() if rules.official_code_additions else stripped
    for phrase in rules.please_provide_phrases:
        if (phrase.lower() if rules.official_code_additions else phrase) in haystack:
            return "response_please_provide"
    if rules.official_code_additions and any(p in haystack for p in OFFICIAL_PHRASES):
        return "response_not_possible"
    if rules.elimination:
        words = _WORD.findall(stripped.lower())
        if "sorry" in stripped.lower() and len(words) < rules.sorry_max_words:
            return "short_sorry"
        if all(word in _STOP_WORDS for word in words):
            return "punctuation_only"
    return None


def check_evolution(original: str, evolved: str | None, response: Completion | str | None,
                    rules: FailureRules) -> str | None:
    """A reason code when the evolution failed, None when it succeeded.

    `evolved` is the parsed instruction (None = parse failure). With `response=None` only the evolution
    itself is checked, so a caller can skip answering an instruction that already failed; call again with
    the response to apply F.
    """
    if evolved is None:
        return "parse_failure"
    if rules.elimination:
        if _normalise(evolved) == _normalise(original):
            return "unchanged"
        lowered = evolved.lower()
        if any(word.lower() in lowered for word in rules.copied_prompt_words):
            return "copied_prompt_words"
    if response is None:
        return None
    if isinstance(response, Completion):
        if response.error == "truncated":
            if rules.truncated_response_fails:
                return "response_truncated"
        elif response.error == "empty":
            return "response_empty"
        elif response.error is not None:
            return "response_request_failed"
        text = response.text
    else:
        text = response
    if not text.strip():
        return "response_empty"
    return _response_failure(text, rules)


async def judge_equal(client: LLMClient, original: str, evolved: str) -> bool:
    """True only when the judge answers "Equal" (no gain in constraints, depth or breadth).

    A failed judge call or an answer that is neither word counts as "not shown equal" (False): the item is
    kept, and the call's error stays visible in the client's usage counts.
    """
    prompt = fill(load_prompt("evol", "equal_judge.txt"), first=original, second=evolved)
    completion = await client.chat_one([{"role": "user", "content": prompt}], temperature=0.0)
    if not completion.ok:
        return False
    answer = completion.text.strip().lower()
    return "equal" in answer and "not equal" not in answer
