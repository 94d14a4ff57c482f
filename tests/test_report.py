"""The pipeline report built from stage outputs written here: standard errors, paired intervals between arms,
one self-contained file that a real headless Chromium renders with its images from any directory."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
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


def png(path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1, 2], [3, 1, 2])
    ax.set_title(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "headless Chromium is needed (apt-get install chromium; .ci/run installs it)"
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_is_one_self_contained_file_that_shows_its_images_anywhere(tmp_path):
    """Every image is embedded: the page copied alone into another directory still shows all of them in a real
    headless Chromium; the evaluation is HTML tables, not Markdown."""
    config = load_config(PipelineConfig, REPO / "recipes" / "quickstart" / "pipeline.yaml")
    run = tmp_path / "run"
    (run / "optimize").mkdir(parents=True)
    (run / "optimize" / "history.jsonl").write_text(json.dumps(
        {"step": 1, "name": "candidate-1", "method_id": "m1", "lambda": 0.25, "selected": True,
         "failures": {"response_asks_back": 2, "evol_parse_failure": 1}}) + "\n")
    png(run / "optimize" / "lambda.png", "lambda")
    for arm in ("seed", "evol-instruct", "auto-evol"):
        dataset = run / arm / "evolve" / "dataset"
        png(dataset / "stats.png", arm)
        (dataset / "stats.json").write_text(json.dumps({"seeds": 36, "rows": {"train": 30}, "rejected": 6,
                                                        "rejected_by_reason": {"evol_parse_failure": 6}}))
        (run / arm / "train" / "model").mkdir(parents=True)
        (run / arm / "train" / "model" / "trainer_state.json").write_text(json.dumps(
            {"log_history": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}]}))
        write_eval(run, arm, np.arange(400) % 3 == 0)
    page = build_report(run, config).read_text()
    assert "<pre>" not in page and "<td>gsm8k</td><td>strict</td>" in page  # HTML tables, no Markdown
    assert "<td>response_asks_back 2, evol_parse_failure 1</td>" in page  # the winner's failure reasons
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(run / "report.html", elsewhere / "copy.html")
    dom = chromium("--dump-dom", (elsewhere / "copy.html").as_uri(), profile=tmp_path / "profile").stdout
    assert 'data-images-ok="true"' in dom and 'data-images="5"' in dom
    chromium(f"--screenshot={tmp_path / 'report.png'}", "--window-size=1200,2000", (elsewhere / "copy.html").as_uri(),
             profile=tmp_path / "profile")
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_report_shows_real_text_of_every_arm_and_the_run_time(tmp_path):
    """What a reader of the SmolLM2 quickstart's report sees beside the numbers: evolved rows, one reject of each
    reason, the trained model's answers; what a 135M model can and cannot show; how long the run took."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = load_config(PipelineConfig, REPO / "recipes" / "quickstart" / "smollm2.yaml")
    run = tmp_path / "run"
    dataset = run / "auto-evol" / "evolve" / "dataset"
    (dataset / "data").mkdir(parents=True)
    messages = [[{"role": "user", "content": "Write a haiku about rain that names a city."},
                 {"role": "assistant", "content": "Rain on Lisbon's roofs <soft>"}]]
    pq.write_table(pa.table({"messages": messages, "evolved_from": [["Write a haiku about rain."]]}),
                   dataset / "data" / "train-00000-of-00001.parquet")
    rejects = [{"reason": "parse_failure", "instruction": "Add 2 and 3.", "evol_output": "The answer is 5."},
               {"reason": "parse_failure", "instruction": "x", "evol_output": "y"},
               {"reason": "evol_request_failed", "instruction": "Name a colour.", "evol_output": None,
                "error": "request_failed: 500"},
               {"reason": "duplicate_of:s3/r1", "stage": "dedup", "id": "s7/r1", "seed_id": "s7", "seed_index": 7,
                "round": 1, "messages": [{"role": "user", "content": "Name two colours."}]}]
    (dataset / "rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejects))
    (run / "seed" / "eval").mkdir(parents=True)
    (run / "seed" / "eval" / "alpaca_eval.jsonl").write_text(json.dumps(
        {"instruction": "Give me a tip for sleeping well.", "output": "Keep a regular bedtime." + "z" * 900}) + "\n")

    page = build_report(run, config, elapsed_s=331.4).read_text()
    assert "a 135M-parameter model, plays every role" in page and "noise here, not the paper's gains" in page
    assert "took 331 s (5.5 min)" in page
    examples = page[page.index("<h2>Examples</h2>"):]
    assert ("<td>Write a haiku about rain.</td><td>Write a haiku about rain that names a city.</td>"
            "<td>Rain on Lisbon&#x27;s roofs &lt;soft&gt;</td>") in examples  # escaped once
    assert examples.count("<td>parse_failure</td>") == 1 and "<td>request_failed: 500</td>" in examples
    assert "<td>duplicate_of</td><td>Name two colours.</td><td>(an evolved row, removed by dedup: duplicate_of:s3/r1)" \
        in examples  # assembly's rejects carry the row, not the attempt
    assert "<td>Keep a regular bedtime." in examples and "z" * 401 not in examples and " […]</td>" in examples
