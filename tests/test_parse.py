"""The evolved-instruction parser: label variants, last label wins, parse failures, plain answers."""

from __future__ import annotations

import pytest

from autoevol_train.evol.methods import EvolvingMethod, evol_instruct_methods, initial_method
from autoevol_train.evol.parse import extract_evolved

LABELLED = initial_method()
PLAIN = evol_instruct_methods("chat")[0]


@pytest.mark.parametrize("label", [
    "Step 4 #Finally Rewritten Instruction#:",
    "#Finally Rewritten Instruction#:",
    "#Finally Rewritten Instruction#",
    "#Final Rewritten Instruction#:",
    "#Final Evolved Instruction#:",
    "#Final Refined Instruction#:",
    "# Final Instruction #:",
    "Final Evolved Instruction:",
    "**Final Refined Instruction**:",
    "**Final Rewritten Instruction:**",
    "Step 4: Finally Rewritten Instruction:",
    "#finally rewritten prompt#:",
])
def test_final_label_variants(label):
    output = (f"Step 1 #Methods List#: add units\nStep 2 #Plan#: use both\n"
              f"Step 3 #Rewritten Instruction#: Draft.\n{label} Compute the area in square metres.\n")
    assert extract_evolved(output, LABELLED) == "Compute the area in square metres."


def test_last_final_label_wins_and_multiline_instruction_is_kept():
    output = ("Step 4 should give the #Finally Rewritten Instruction# only.\n"
              "#Finally Rewritten Instruction#: first try\n"
              "#Finally Rewritten Instruction#:\nWrite a function.\nStep 1 read input\nStep 2 print it")
    assert extract_evolved(output, LABELLED) == "Write a function.\nStep 1 read input\nStep 2 print it"


def test_a_later_labelled_section_ends_the_instruction():
    output = '#Final Rewritten Instruction#: "Prove it for n > 2."\n#Explanation#: added a bound'
    assert extract_evolved(output, LABELLED) == "Prove it for n > 2."


@pytest.mark.parametrize("output", [
    "Step 1 #Methods List#: a\nStep 2 #Plan#: b\nStep 3 #Rewritten Instruction#: Harder text.",
    "I think the final instruction should be harder.",          # prose mention, no label
    "Step 4 #Finally Rewritten Instruction#:   \n",              # label with nothing after it
    "",
])
def test_parse_failure_never_returns_the_chain_of_thought(output):
    assert extract_evolved(output, LABELLED) is None


def test_plain_answers():
    assert extract_evolved("  Sort the list in O(n log n).\n", PLAIN) == "Sort the list in O(n log n)."
    assert extract_evolved("#Rewritten Prompt#: Sort it stably.", PLAIN) == "Sort it stably."
    assert extract_evolved("Sort it. #Given Prompt#: Sort.", PLAIN) is None
    assert extract_evolved("   ", PLAIN) is None
    custom = EvolvingMethod("custom", "Harder: {instruction}", "plain")
    assert extract_evolved("Rewritten prompt: Do X twice.", custom) == "Do X twice."


def test_a_method_asking_for_the_bare_rewrite_accepts_an_unlabelled_answer():
    """The paper's weak method (loaded from a file, so labelled) names no final label and asks for the rewritten
    instruction with no explanation: its answers are the instruction itself, not parse failures."""
    weak_wording = EvolvingMethod("file:weak.txt", "You are an Instruction Rewriter. Rewrite the given #Instruction# "
                                  "into a more complex version. Reply with the rewritten instruction only, no "
                                  "explanation.")
    assert extract_evolved("Compute the area of a 3-4-5 triangle in square metres.", weak_wording) == \
        "Compute the area of a 3-4-5 triangle in square metres."
    assert extract_evolved("#Finally Rewritten Instruction#: Harder.", weak_wording) == "Harder."  # labels still win
    assert extract_evolved("   ", weak_wording) is None
    asks_nothing = EvolvingMethod("file:m.txt", "Rewrite the given #Instruction# into a more complex version.")
    assert extract_evolved("Here is a harder version: compute the area.", asks_nothing) is None
    assert extract_evolved("Step 1 #Methods List#: add units", LABELLED) is None  # names its label: still a failure
