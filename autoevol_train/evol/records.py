"""The shapes of what the evol stages write and read back: one TypedDict per record kind.

They are JSON lines on disk (history.jsonl, dev/stepNN.jsonl, parts/, the dataset, rejects.jsonl), so they
stay plain dicts at run time; the types name every key in one place for the writers and the readers
(the loop's replay, the optimisation report, data.assemble).
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["HistoryRow", "best_so_far", "DevRow", "EvolvedRow", "Reject", "ItemRecord"]

Messages = list[dict[str, str]]

# history.jsonl: one row per method scored in a step (the incumbent, then candidate 0..m-1).
HistoryRow = TypedDict("HistoryRow", {
    "step": int,
    "candidate": "int | str",        # "incumbent" or the candidate's index
    "name": str,                     # "step3/cand1", or the incumbent's name
    "method_id": "str | None",       # None: the optimizer gave no usable method
    "parent_id": str,                # the method the step started from
    "status": str,                   # ok | analysis_failed: ... | optimization_failed: ... | no_method_block
    "feedback": "str | None",        # the optimizer's analysis behind the candidate
    "lambda": "float | None",        # failure rate on dev (None: not evaluated)
    "score": "float | None",         # what selection minimises (λ, or the negated length-weighted success)
    "n_dev": int,
    "failures": "dict[str, int]",    # failure reason → count on dev
    "selected": bool,                # this row's method became e_t
    "method_file": "str | None",     # methods/stepNN_candK.txt
    "tokens": "dict[str, int]",      # trajectory / optimizer / dev
    "wall_s": float,
    "phase_s": "dict[str, float]",
})


def best_so_far(history: list[HistoryRow]) -> list[HistoryRow]:
    """The row of the best method so far: before step 1 (the start, step 1's incumbent row), then after each
    step. A step's selected candidate replaces it only with a strictly lower score, so on a tie the earlier
    method stays the output. The loop (stopping, best_method.txt) and the report both read it from here."""
    steps = sorted({r["step"] for r in history})
    bests = [next(r for r in history if r["step"] == steps[0] and r["candidate"] == "incumbent")] if steps else []
    for step in steps:
        selected = next(r for r in history if r["step"] == step and r["selected"])
        better = selected["candidate"] != "incumbent" and selected["score"] < bests[-1]["score"]  # type: ignore
        bests.append(selected if better else bests[-1])
    return bests


class DevRow(TypedDict):
    """dev/stepNN.jsonl: one method's attempt on one dev item."""

    candidate: str
    method_id: str
    index: int
    original: str
    evol_output: str
    evolved: str | None
    response: str | None
    reason: str | None


class EvolvedRow(TypedDict):
    """One dataset row: an evolved (or seed) conversation with its provenance."""

    id: str
    messages: Messages
    seed_id: str
    seed_index: int
    source: str
    round: int
    method_id: str
    method_name: str
    evolved_from: list[str]
    evol_model: str
    responder_model: str
    evol_finish_reasons: list[str | None]
    response_finish_reasons: list[str | None]
    evol_prompt_tokens: int
    evol_completion_tokens: int
    response_prompt_tokens: int
    response_completion_tokens: int


class Reject(TypedDict):
    """One failed round of one seed (rejects.jsonl; assembly adds `stage` and its own reasons)."""

    seed_id: str
    seed_index: int
    round: int
    turn: int
    reason: str
    method_id: str
    method_name: str
    instruction: str
    evol_output: str | None   # None for the seed arm (no evolution)
    evolved: str | None
    response: str | None
    error: str | None         # the request error behind it; None for a content failure


class ItemRecord(TypedDict):
    """One seed through every round: the unit written to parts/ and resumed from."""

    seed_index: int
    seed_id: str
    seed: Messages
    rows: list[EvolvedRow]
    rejects: list[Reject]
