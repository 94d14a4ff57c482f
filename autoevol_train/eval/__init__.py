"""Evaluation of the paper's three domains: GSM8K (math), HumanEval (code, sandboxed), MT-Bench and
AlpacaEval-style pairwise judging (chat). `run.py` is the `autoevol eval` stage; `compare.py` tables arms."""

from functools import cache
from importlib import resources


@cache
def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>`` shipped with the package."""
    return resources.files("autoevol_train.eval").joinpath("prompts", name).read_text(encoding="utf-8")
