"""One evolve-and-judge step: the paper's core operation, shared by `optimize` (λ) and `evolve` (the filter).

Render the method → the evol call → its failure (`evol_failure`) → the one parse path (`extract_evolved`) →
the elimination checks → the optional "Equal" judge → the answer → the failure detector F. Both stages call
`evolve_once`, so a method's failure rate λ during optimisation and the rows the evolve stage drops are the
same decision by construction. What differs between the stages is explicit, not a second copy:

- `responder` and `context`: optimize has the evol LLM answer the bare evolved instruction (the paper's λ);
  evolve has its responder answer after the seed's (or the domain's) system prompt and the evolved turns so far.
- `rules`: optimize defaults to F alone (the paper's λ), evolve to F plus Evol-Instruct's elimination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoevol_train.evol.failures import FailureRules, check_evolution, evol_failure, judge_equal
from autoevol_train.evol.methods import EvolvingMethod
from autoevol_train.evol.parse import extract_evolved
from autoevol_train.llm.types import Completion

if TYPE_CHECKING:
    from autoevol_train.llm.client import LLMClient

__all__ = ["Attempt", "evolve_text", "evolve_once", "tokens"]

Messages = list[dict[str, str]]


def tokens(*completions: Completion | None) -> int:
    return sum(c.prompt_tokens + c.completion_tokens for c in completions if c is not None)


@dataclass(frozen=True)
class Attempt:
    """One instruction evolved once and judged: `reason` is None for a success, else the failure's code."""

    original: str
    evol_call: Completion
    evolved: str | None
    response: Completion | None
    reason: str | None

    @property
    def tokens(self) -> int:
        return tokens(self.evol_call, self.response)

    @property
    def error(self) -> str | None:
        """The request-level error behind a failure (the answer's, else the evol call's), None for content."""
        return (self.response.error if self.response is not None else None) or self.evol_call.error


async def evolve_text(evol: LLMClient, method: EvolvingMethod, instruction: str
                      ) -> tuple[Completion, str | None, str | None]:
    """The evol call alone: (completion, evolved instruction or None, reason when the call or parse failed).
    The optimizer's trajectories use it directly (they are never answered)."""
    completion = await evol.chat_one([{"role": "user", "content": method.render(instruction)}])
    reason = evol_failure(completion)
    evolved = None if reason else extract_evolved(completion.text, method)
    if reason is None and evolved is None:
        reason = "parse_failure"
    return completion, evolved, reason


async def evolve_once(evol: LLMClient, method: EvolvingMethod, instruction: str, rules: FailureRules, *,
                      responder: LLMClient, context: Messages) -> Attempt:
    """Evolve `instruction` once with `method`, answer the evolution (after `context`) and judge it."""
    completion, evolved, reason = await evolve_text(evol, method, instruction)
    if reason is None:
        reason = check_evolution(instruction, evolved, None, rules)
    if reason is None and rules.llm_equal_judge and await judge_equal(evol, instruction, evolved or ""):
        reason = "equal_to_original"
    response = None
    if reason is None:
        response = await responder.chat_one([*context, {"role": "user", "content": evolved or ""}])
        reason = check_evolution(instruction, evolved, response, rules)
    return Attempt(instruction, completion, evolved, response, reason)
