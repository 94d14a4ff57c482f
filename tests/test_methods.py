"""Evolving methods: ids, rendering, the built-in methods and loading from files."""

from __future__ import annotations

import pytest

from autoevol_train.config import InputError
from autoevol_train.evol.methods import (EvolvingMethod, evol_instruct_methods, fill, initial_method, load_method,
                                         weak_method)
from autoevol_train.evol.parse import extract_evolved


def test_initial_method_has_the_four_step_structure_and_renders_the_instruction_last():
    method = initial_method()
    for label in ("#Methods List#", "#Plan#", "#Rewritten Instruction#", "#Finally Rewritten Instruction#"):
        assert label in method.text
    message = method.render("Add 2 and {x}.")
    assert message.startswith(method.text) and message.endswith("#Instruction#:\nAdd 2 and {x}.")
    assert method.format == "labelled" and method.name == "initial"


def test_id_is_a_content_hash_independent_of_the_name():
    a = EvolvingMethod("a", "Make it harder.")
    assert len(a.id) == 12 and int(a.id, 16) >= 0
    assert EvolvingMethod("b", "Make it harder.").id == a.id
    assert EvolvingMethod("a", "Make it harder!").id != a.id
    assert EvolvingMethod("a", "Make it harder. {instruction}", "plain").id != \
        EvolvingMethod("a", "Make it harder. {instruction}", "labelled").id
    assert initial_method().id == initial_method().id != weak_method().id


def test_weak_method_is_short_and_parseable():
    weak = weak_method()
    assert len(weak.text.split()) < 40
    assert extract_evolved("#Finally Rewritten Instruction#: Harder task.", weak) == "Harder task."


@pytest.mark.parametrize("domain, count", [("chat", 6), ("math", 4), ("code", 5)])
def test_evol_instruct_methods_fill_the_instruction_slot_once(domain, count):
    methods = evol_instruct_methods(domain)
    assert len(methods) == count and len({m.id for m in methods}) == count
    for method in methods:
        assert method.format == "plain" and "{method}" not in method.text
        message = method.render("Sort a list {in place}.")
        assert message.count("Sort a list {in place}.") == 1 and "{instruction}" not in message
    if domain == "chat":
        assert methods[-1].name == "evol-instruct/breadth" and "#Created Prompt#" in methods[-1].text
    if domain == "math":  # WizardMath: three ways up, one down
        assert [m.name for m in methods] == ["evol-instruct/math-up-constraints", "evol-instruct/math-up-numbers",
                                             "evol-instruct/math-up-steps", "evol-instruct/math-down-easier"]
        assert all("#Given Question#" in m.text and "one numerical answer" in m.text for m in methods)


def test_unknown_domain_is_an_input_error():
    with pytest.raises(InputError, match="domain 'poetry'"):
        evol_instruct_methods("poetry")


def test_load_method_from_file(tmp_path):
    path = tmp_path / "best_method.txt"
    path.write_text("  Make the #Instruction# harder.\n\n")
    method = load_method(path)
    assert method == EvolvingMethod("file:best_method.txt", "Make the #Instruction# harder.")
    with pytest.raises(InputError, match="no such method file"):
        load_method(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(InputError, match="empty.txt: the method file is empty"):
        load_method(tmp_path / "empty.txt")


def test_fill_replaces_known_slots_once_and_leaves_other_braces():
    assert fill("{a} {b} {c}", a="{b}", b="x") == "{b} x {c}"
