"""Evaluation of the paper's three domains: GSM8K (math), HumanEval (code, sandboxed), MT-Bench and AlpacaEval
(chat), one module per benchmark listed in `benchmarks.py`. `run.py` is the `autoevol eval` stage, `compare.py`
tables arms, `uncertainty.py` gives standard errors and paired intervals."""
