"""Pull the evolved instruction out of the evol LLM's answer.

A labelled method answers in steps; the evolved instruction is what follows the LAST final label. Optimised
methods rename that label ("#Final Rewritten Instruction#", "#Final Evolved Instruction#", "**Final Refined
Instruction:**", "Step 4 #Finally Rewritten Instruction#", ...), so every such variant is accepted. When no
final label is found the answer is a parse failure (None): keeping the whole chain-of-thought as "the
instruction" would silently put methods lists and plans into the dataset. The one exception is a method
that names no final label and asks for the rewritten instruction alone (no explanation), such as the paper's
weak method loaded from a file: its whole answer is the instruction, read like a plain method's.
"""

from __future__ import annotations

import re
from functools import cache

from autoevol_train.evol.methods import EvolvingMethod

__all__ = ["extract_evolved", "asks_for_bare_answer", "PLAIN_MARKERS"]

_NOUN = r"(?:instruction|prompt|question)"
_WORDS = r"(?:[ \t]+[a-z-]+){0,2}?"
# "#Finally Rewritten Instruction#", "# Final Instruction #:" anywhere in the text.
_HASHED = re.compile(rf"#[ \t]*final(?:ly)?{_WORDS}[ \t]+{_NOUN}[ \t]*#[ \t]*:?", re.IGNORECASE)
# "Final Evolved Instruction:", "**Final Refined Instruction**:", "Step 4: Finally Rewritten Instruction:"
# at the start of a line; without '#' a colon is required, so prose that mentions the label does not count.
_LINE = re.compile(
    rf"^[ \t>*_-]*(?:step[ \t]*\d+[ \t]*[:.)-]?[ \t]*)?[*_]*final(?:ly)?{_WORDS}[ \t]+{_NOUN}[*_]*[ \t]*:[*_]*",
    re.IGNORECASE | re.MULTILINE,
)
# A later labelled section ("#Explanation#:") ends the final instruction. "Step N" lines do not: an evolved
# instruction may itself list steps.
_NEXT_SECTION = re.compile(r"^[ \t*]*(?:[Ss]tep[ \t]*\d+[ \t]*)?#[A-Za-z][A-Za-z -]{0,40}#[ \t]*:", re.MULTILINE)

# Labels of Evol-Instruct's human prompts; their presence in a plain answer means the prompt leaked.
PLAIN_MARKERS = ("#Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#", "#Given Question#",
                 "#Rewritten Question#")
_PLAIN_LEAD = re.compile(r"^[ \t*]*#?(?:rewritten|created)[ \t]+(?:prompt|question)#?[ \t*]*:?[ \t*]*",
                         re.IGNORECASE)


def _clean(text: str) -> str:
    text = text.strip().strip("*_").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


# A method that names no final label but asks for the rewrite alone (the paper's weak method: "... the
# rewritten instruction only, no explanation") gets answers that are the instruction itself.
_BARE_REQUEST = re.compile(
    r"no explanation|without (?:any )?explanation|(?:reply|respond|answer|output|return|give)(?: with)? only|"
    r"only (?:the|your) (?:final |new )?(?:rewritten|evolved|new|revised|complex) (?:instruction|prompt|question)",
    re.IGNORECASE)


@cache
def asks_for_bare_answer(method_text: str) -> bool:
    """True for a labelled method that names no final label and asks for only the rewritten instruction."""
    named_label = _HASHED.search(method_text) or _LINE.search(method_text)
    return named_label is None and _BARE_REQUEST.search(method_text) is not None


def extract_evolved(output: str, method: EvolvingMethod) -> str | None:
    """The evolved instruction in `output`, or None when there is none (a parse failure)."""
    if method.format == "labelled":
        ends = [m.end() for pattern in (_HASHED, _LINE) for m in pattern.finditer(output)]
        if ends:
            tail = output[max(ends):]
            following = _NEXT_SECTION.search(tail)
            return _clean(tail[:following.start()] if following else tail) or None
        if not asks_for_bare_answer(method.text):
            return None
    text = _clean(_PLAIN_LEAD.sub("", output.strip(), count=1))
    if not text or any(marker.lower() in text.lower() for marker in PLAIN_MARKERS):
        return None
    return text
