"""Evolving methods as data: the prompt that tells the evol LLM how to make an instruction more complex.

A method is plain text plus the format its answers come in. Every method has a stable id, a hash of its
content, which the optimize and evolve stages write next to everything a method produced (provenance), so a
dataset row can always be traced back to the exact prompt that made it.

- ``labelled`` methods (the universal initial method, the weak ablation method, every optimised method, any
  method loaded from a file) ask for a step-by-step answer whose last part follows a final label such as
  "#Finally Rewritten Instruction#"; the instruction is appended after an "#Instruction#:" label.
- ``plain`` methods (the human-designed prompts of WizardLM, WizardMath and WizardCoder) hold an
  ``{instruction}`` slot and the whole answer is the rewritten instruction.

The prompt texts live in ``prompts/*.txt`` next to this module, in the project's own words.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoevol_train.config import InputError
from autoevol_train.data.reader import load_prompt, read_text

__all__ = ["EvolvingMethod", "initial_method", "weak_method", "evol_instruct_methods", "starting_method",
           "load_method", "fill"]

INSTRUCTION_LABEL = "#Instruction#:"
_SLOT = re.compile(r"\{(\w+)\}")


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` slots in one pass; unknown braces (code, JSON in a method) are left as they are.

    Not ``str.format``: methods and instructions are full of braces, and a value must never be re-filled.
    """
    return _SLOT.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


@dataclass(frozen=True)
class EvolvingMethod:
    name: str
    text: str
    format: Literal["labelled", "plain"] = "labelled"

    @property
    def id(self) -> str:
        """12 hex chars of sha256 over (format, text): equal prompts share an id whatever their name."""
        return hashlib.sha256(f"{self.format}\n{self.text}".encode()).hexdigest()[:12]

    def render(self, instruction: str) -> str:
        """The single user message sent to the evol LLM to evolve `instruction` with this method."""
        if "{instruction}" in self.text:
            return fill(self.text, instruction=instruction)
        if self.format == "plain":
            raise ValueError(f"plain method {self.name!r} has no {{instruction}} slot")
        return f"{self.text.rstrip()}\n\n{INSTRUCTION_LABEL}\n{instruction}"


def initial_method() -> EvolvingMethod:
    """The universal four-step method e0: methods list → plan → rewrite → reviewed final rewrite."""
    return EvolvingMethod("initial", load_prompt("evol", "initial_method.txt").strip())


def weak_method() -> EvolvingMethod:
    """The ablation start: only "make it more complex", no analysis, plan or review."""
    return EvolvingMethod("weak", load_prompt("evol", "weak_method.txt").strip())


def _named_lines(prompt: str) -> list[tuple[str, str]]:
    pairs = []
    for line in load_prompt("evol", f"{prompt}.txt").splitlines():
        if line.strip():
            name, _, sentence = line.partition("|")
            pairs.append((name.strip(), sentence.strip()))
    return pairs


def evol_instruct_methods(domain: str) -> list[EvolvingMethod]:
    """The human-designed baseline of each domain, one method drawn per item and round:
    chat: WizardLM's five in-depth methods and its in-breadth method;
    math: WizardMath's Evol-Instruct (upward: more constraints, harder numbers, more steps; downward: easier);
    code: WizardCoder's five difficulty heuristics."""
    if domain == "chat":
        depth = load_prompt("evol", "evol_instruct_depth.txt")
        methods = [EvolvingMethod(f"evol-instruct/{name}", fill(depth, method=sentence).strip(), "plain")
                   for name, sentence in _named_lines("evol_instruct_depth_methods")]
        breadth = load_prompt("evol", "evol_instruct_breadth.txt").strip()
        return methods + [EvolvingMethod("evol-instruct/breadth", breadth, "plain")]
    if domain in ("math", "code"):
        template = load_prompt("evol", f"{domain}_evol.txt")
        return [EvolvingMethod(f"evol-instruct/{domain}-{name}", fill(template, method=sentence).strip(), "plain")
                for name, sentence in _named_lines(f"{domain}_evol_methods")]
    raise InputError(f"domain {domain!r}: expected one of 'chat', 'math', 'code'")


def starting_method(spec: str) -> EvolvingMethod:
    """'initial' (the universal method), 'weak' (the ablation method) or the path of a method text file."""
    return initial_method() if spec == "initial" else weak_method() if spec == "weak" else load_method(spec)


def load_method(path: str | Path) -> EvolvingMethod:
    """A labelled method from a text file (e.g. a previous run's best_method.txt or the paper's wording)."""
    path = Path(path)
    text = read_text(path, "method file").strip()
    if not text:
        raise InputError(f"{path}: the method file is empty")
    return EvolvingMethod(f"file:{path.name}", text)
