"""The pipeline report built from an eval-only run directory: standard errors, paired intervals between arms."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from autoevol_train.config import load_config
from autoevol_train.pipeline import PipelineConfig
from autoevol_train.report import build_report

REPO = Path(__file__).resolve().parents[1]


def write_eval(run: Path, arm: str, correct: np.ndarray) -> None:
    """A results.json as `autoevol eval` writes it: GSM8K strict accuracy over 400 problems, per item."""
    scores = (100.0 * correct).tolist()
    results = {"name": arm, "model": arm, "template": "t", "judge": None, "benchmarks": {"gsm8k": {
        "metrics": {"strict": float(np.mean(scores)), "n": len(scores), "failed_requests": 0},
        "stderr": {"strict": float(np.std(scores, ddof=1) / np.sqrt(len(scores)))}, "protocol": {"shots": 0},
        "items": {"ids": [f"test-{i}" for i in range(len(scores))], "scores": {"strict": scores}}}}}
    (run / arm / "eval").mkdir(parents=True)
    (run / arm / "eval" / "results.json").write_text(json.dumps(results))


def test_report_shows_standard_errors_and_paired_intervals(tmp_path):
    config = load_config(PipelineConfig, REPO / "recipes" / "quickstart" / "pipeline.yaml")
    rng = np.random.default_rng(3)
    base = rng.random(400)
    for arm, threshold in (("seed", 0.5), ("evol-instruct", 0.5), ("auto-evol", 0.65)):
        write_eval(tmp_path, arm, base < threshold)
    page = build_report(tmp_path, config).read_text()
    assert "Differences between arms" in page and "95% percentile bootstrap interval" in page
    rows = re.findall(r"<tr><td>gsm8k</td><td>strict</td><td>([^<]+)</td><td class=\"num\">(\d+)</td>"
                      r"<td>([^<]+)</td><td>\[([^,]+), ([^\]]+)\]</td><td>(yes|no)</td></tr>", page)
    by_pair = {pair: (int(items), float(diff), float(low), float(high), excludes)
               for pair, items, diff, low, high, excludes in rows}
    assert set(by_pair) == {"evol-instruct − seed", "auto-evol − seed", "auto-evol − evol-instruct"}
    assert by_pair["evol-instruct − seed"] == (400, 0.0, 0.0, 0.0, "no")  # the same answers: no difference
    items, diff, low, high, excludes = by_pair["auto-evol − seed"]
    assert diff == round(100 * ((base < 0.65).mean() - (base < 0.5).mean()), 2) and low < diff < high
    assert low > 0 and excludes == "yes"
    assert re.search(r"<td>\d+\.\d\d ± \d\.\d\d</td>", page)  # the arms table: score ± standard error
