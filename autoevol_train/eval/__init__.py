"""Evaluation of the paper's three domains: GSM8K (math), HumanEval (code, sandboxed), MT-Bench and
AlpacaEval-style pairwise judging (chat). `run.py` is the `autoevol eval` stage; `compare.py` tables arms."""
