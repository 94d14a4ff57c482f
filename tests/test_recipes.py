"""The reproduction recipes: the paper's data sampling and its filters per arm, and what each filter removed.

The per-arm filter test runs the real pipeline (optimize is not needed, no training) against the scripted
OpenAI-compatible server, used here because the test needs exact answers: one that the failure detector F
rejects and one that Evol-Instruct's elimination rejects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autoevol_train.config import load_config
from autoevol_train.evol.optimize import OptimizeConfig
from autoevol_train.pipeline import PipelineConfig, arm_evolve_config, removed_by_filter, run_pipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted(p for p in (REPO / "recipes").glob("*/*/pipeline.yaml") if p.parts[-3] != "quickstart")
F_DEFAULTS = ["Understood", "Thank you", "Sure", "What", "That is correct", "Great"]


@pytest.mark.parametrize("recipe", PIPELINES, ids=lambda p: p.parent.relative_to(REPO / "recipes").as_posix())
def test_reproduction_arms_apply_the_papers_filters(recipe):
    """Seed arm: nothing; Evol-Instruct (math: WizardMath's): WizardLM's elimination (with the LLM 'Equal'
    check) and re-pooling, no F; Auto: F alone. Deduplication is off and contamination is counted, not removed (Table 10), in every arm."""
    config = load_config(PipelineConfig, recipe)
    arms = {arm.name: arm_evolve_config(config, arm, Path("best_method.txt")) for arm in config.arms}
    assert list(arms) == ["seed", "evol-instruct", "auto-evol"]
    assert arms["seed"].method == "none" and not arms["seed"].respond_seeds  # F and elimination judge evolutions
    evol, auto = arms["evol-instruct"].failures, arms["auto-evol"].failures
    assert evol.elimination and evol.llm_equal_judge and not evol.asks_back_prefixes and not evol.please_provide_phrases
    assert arms["evol-instruct"].repool_failed  # WizardLM puts failed items back into the pool
    assert not auto.elimination and auto.asks_back_prefixes == F_DEFAULTS and auto.please_provide_phrases
    for arm in arms.values():
        assert not (arm.dedup.exact or arm.dedup.near)
        assert arm.decontam.enabled and arm.decontam.remove_at is None and arm.decontam.ngram_sizes == [13, 8]
        assert not arm.failures.truncated_response_fails and not arm.failures.official_code_additions


def test_chat_optimises_on_a_seeded_sharegpt_sample_and_keeps_the_alpaca_variant():
    chat = load_config(PipelineConfig, REPO / "recipes/mistral-7b/chat/pipeline.yaml")
    # Table 2's chat pipelines: optimisation and evolution read the same seeded random 10K ShareGPT sample.
    assert chat.optimize.seeds == chat.evolve.seeds
    assert (chat.evolve.seeds.format, chat.evolve.seeds.sample, chat.evolve.seeds.limit) == ("sharegpt", 10000, None)
    alpaca = load_config(OptimizeConfig, REPO / "recipes/domains/chat/optimize_alpaca.yaml")
    assert alpaca.seeds.path == "tatsu-lab/alpaca" and alpaca.seeds.format == "alpaca"
    assert alpaca.model_dump(exclude={"seeds"}) == chat.optimize.model_dump(exclude={"seeds"})
    # No recipe takes the first N rows where the paper samples at random.
    assert "limit:" not in "".join(p.read_text() for p in (REPO / "recipes" / "domains").rglob("*.yaml"))


_INSTRUCTION = re.compile(r"#Instruction#:\n(.*)\Z", re.DOTALL)


def _rule(body: dict, index: int) -> str:
    """Evol prompts: a clean rewrite. Answers (system message first): F's asking back or a short 'sorry' on cue."""
    last = body["messages"][-1]["content"]
    if body["messages"][0]["role"] != "system":
        instruction = _INSTRUCTION.search(last).group(1).strip()
        return f"Step 1 #Methods List#: a\nStep 4 #Finally Rewritten Instruction#: {instruction} Justify it."
    if "ASKBACK" in last:
        return "Sure, which language do you mean?"
    if "SORRY" in last:
        return "Sorry, I cannot."
    return f"A full answer to: {last}"


def test_filters_per_arm_are_applied_and_counted(scripted_server, tmp_path):
    server = scripted_server(_rule)
    seeds = tmp_path / "seeds.jsonl"
    rows = ["Name a fruit.", "Translate ASKBACK this.", "Explain SORRY tides.", "Describe a river."]
    seeds.write_text("".join(json.dumps({"instruction": text, "output": "ok"}) + "\n" for text in rows))
    no_f = {"asks_back_prefixes": [], "please_provide_phrases": []}
    config = PipelineConfig.model_validate({
        "arms": [{"name": "seed", "method": "none"},
                 {"name": "detector", "method": "initial", "evolve": {"failures": {"elimination": False}}},
                 {"name": "eliminated", "method": "initial", "evolve": {"failures": {"elimination": True, **no_f}}},
                 {"name": "unfiltered", "method": "initial", "evolve": {"failures": {"elimination": False, **no_f}}}],
        "evolve": {"seeds": {"path": str(seeds), "format": "alpaca"}, "domain": "chat",
                   "decontam": {"enabled": False}, "dedup": {"exact": False, "near": False},
                   "llm": {"evol": {"model": "scripted", "base_urls": [server.base_url], "max_concurrency": 4,
                                    "preflight": "off"}}}})  # the rule scripts every request
    run_pipeline(config, tmp_path / "run")

    filters = json.loads((tmp_path / "run" / "filters.json").read_text())
    assert {arm: (summary["rows"], summary["removed"]) for arm, summary in filters.items()} == {
        "seed": (4, {}), "detector": (3, {"failure detector F": 1}), "eliminated": (3, {"elimination": 1}),
        "unfiltered": (4, {})}
    assert filters["eliminated"]["applied"]["failures"]["asks_back_prefixes"] == []
    stats = json.loads((tmp_path / "run" / "detector" / "evolve" / "dataset" / "stats.json").read_text())
    assert stats["rejected_by_reason"] == {"response_asks_back": 1}
    page = (tmp_path / "run" / "report.html").read_text()  # the report shows the same counts per arm
    assert "<th>seeds</th><th>rows</th><th>elimination</th><th>failure detector F</th>" in page
    cells = "".join(f'<td class="num">{n}</td>' for n in (4, 3, 0, 1))
    assert f"<tr><td>detector</td>{cells}</tr>" in page


def test_removed_by_filter_groups_every_reason():
    stats = {"rejected_by_reason": {"response_asks_back": 2, "response_please_provide": 1, "short_sorry": 3,
                                    "unchanged": 1, "contaminated": 4, "duplicate_of": 5, "near_duplicate_of": 1,
                                    "parse_failure": 7, "evol_request_failed": 1, "response_truncated": 2}}
    assert removed_by_filter(stats) == {"failure detector F": 3, "elimination": 4, "decontamination": 4,
                                        "deduplication": 6, "not evolved (parse or request failure)": 8,
                                        "truncated response": 2}


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "domains").glob("*/optimize*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_optimize_recipes_use_the_stopping_rule_a_tie_cannot_trigger(recipe):
    config = load_config(OptimizeConfig, recipe)
    default = OptimizeConfig.model_fields["patience"].default
    assert config.early_stopping and config.patience == default > 1


def test_reproduce_commands_load():
    """Every `autoevol run` command of docs/reproduce.md's figure table loads (placeholders filled in)."""
    import shlex

    doc = (REPO / "docs" / "reproduce.md").read_text()
    table = doc.split("## Every figure and table the code supports", 1)[1].split("\n## ", 1)[0]
    commands = [c for c in re.findall(r"`(autoevol run [^`]+)`", table) if "<" not in c]
    assert len(commands) == 7  # Figs 3, 4, 5a, 5b, 6, Tables 3/8, chat on Alpaca (Table 2: tested above)
    filled = {"EVOL35": "optimize.llm.evol.model=gpt-3.5-turbo evolve.llm.evol.model=gpt-3.5-turbo",
              "=M ": "=3 ", "=S ": "=12 ", "=O ": "=gpt-4 ", "=E ": "=gpt-3.5-turbo "}
    for command in commands:
        for placeholder, value in filled.items():
            command = command.replace(placeholder, value)
        words = shlex.split(command)[2:]
        if "--output-dir" in words:
            at = words.index("--output-dir")
            del words[at:at + 2]
        config = load_config(PipelineConfig, REPO / words[0], words[1:])
        assert config.arms and all(arm_evolve_config(config, arm, Path("b.txt")) for arm in config.arms)
    assert config.optimize.seeds.path == "tatsu-lab/alpaca"  # the last one: the chat pipeline on Alpaca
