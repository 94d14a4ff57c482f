"""Experiment tracking (`report_to`): the stages' metrics read back from the trackers' own local stores.

Stages run as `autoevol` processes with TRACKIO_DIR set (trackio reads it at import), against the scripted
OpenAI-compatible server (a test double, for exact λ and counts); trackio's store is read back with trackio's
own storage API in another process. wandb runs offline; its binary run file is checked for the logged keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from autoevol_train.tracking import Tracker, TrackerRun, eval_metrics, optimize_step_metrics
from tests.test_optimize import rule as optimize_rule

REPO = Path(__file__).resolve().parents[1]

READ_STORE = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
project = sys.argv[1]
print(json.dumps({run: {"logs": SQLiteStorage.get_logs(project, run),
                        "group": SQLiteStorage.get_run_config(project, run).get("_Group")}
                  for run in SQLiteStorage.get_runs(project)}))
"""


def autoevol(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoevol_train.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), **env})


def trackio_store(trackio_dir: Path, project: str) -> dict[str, dict]:
    """run name → {logs, group}, read by trackio itself from its local store."""
    done = subprocess.run([sys.executable, "-c", READ_STORE, project], capture_output=True, text=True, check=True,
                          env={**os.environ, "TRACKIO_DIR": str(trackio_dir)})
    return json.loads(done.stdout.splitlines()[-1])


def pipeline_config(tmp_path: Path, shared_data: Path, base_url: str, report_to: str) -> Path:
    roles = {"evol": {"model": "evol-model", "base_urls": [base_url], "max_concurrency": 64, "preflight": "off"},
             "optimizer": {"model": "optimizer-model", "base_urls": [base_url], "preflight": "off"}}  # scripted
    seeds = {"path": str(shared_data / "gsm8k" / "train.jsonl")}
    config = {"arms": [{"name": "seed", "method": "none"}, {"name": "auto-evol", "method": "optimized"}],
              "optimize": {"seeds": seeds, "llm": roles, "pool_size": 200, "trajectory_rounds": 2, "steps": 3},
              "evolve": {"seeds": {**seeds, "limit": 12}, "domain": "math", "llm": {"evol": roles["evol"]},
                         "dedup": {"near": False}, "decontam": {"enabled": False}},
              "report_to": report_to}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_pipeline_logs_lambda_curve_and_evolve_counts_of_every_arm_to_trackio(scripted_server, shared_data,
                                                                               tmp_path):
    server = scripted_server(optimize_rule)
    store = tmp_path / "trackio"
    out = tmp_path / "exp-one"
    done = autoevol(tmp_path, "run", str(pipeline_config(tmp_path, shared_data, server.base_url, "trackio")),
                    "--output-dir", str(out), TRACKIO_DIR=str(store))
    assert done.returncode == 0, done.stderr[-3000:]

    runs = trackio_store(store, "exp-one")  # one project: the pipeline's output directory name
    assert set(runs) == {"optimize", "seed/evolve", "auto-evol/evolve"}
    assert runs["seed/evolve"]["group"] == "seed" and runs["auto-evol/evolve"]["group"] == "auto-evol"

    # The λ curve: each step's incumbent and candidates, as in history.jsonl.
    history = [json.loads(line) for line in (out / "optimize" / "history.jsonl").read_text().splitlines()]
    logs = {entry["step"]: entry for entry in runs["optimize"]["logs"]}
    assert sorted(logs) == sorted({row["step"] for row in history}) == [1, 2, 3]
    for row in history:
        label = "incumbent" if row["candidate"] == "incumbent" else f"cand{row['candidate']}"
        if row["lambda"] is None:
            assert f"lambda/{label}" not in logs[row["step"]]
        else:
            assert logs[row["step"]][f"lambda/{label}"] == row["lambda"]
    best = json.loads((out / "optimize" / "manifest.json").read_text())["best_lambda"]
    assert logs[3]["lambda/best"] == best < logs[1]["lambda/incumbent"]
    assert logs[1]["candidates_failed/no_method_block"] == 1  # candidate 1 forgets the method block
    selected = next(r for r in history if r["step"] == 1 and r["selected"])
    assert {k: v for k, v in logs[1].items() if k.startswith("failures/")} == \
        {f"failures/{reason}": n for reason, n in selected["failures"].items()}
    assert logs[1]["tokens/total"] == sum(sum(r["tokens"].values()) for r in history if r["step"] == 1) > 0

    # Evolve: rows and rejects by reason as in each arm's stats.json; progress with tokens/s.
    for arm in ("seed", "auto-evol"):
        stats = json.loads((out / arm / "evolve" / "dataset" / "stats.json").read_text())
        arm_logs = runs[f"{arm}/evolve"]["logs"]
        final = next(entry for entry in arm_logs if "dataset/rejected" in entry)
        assert final["dataset/rows_train"] == stats["rows"]["train"]
        assert final["dataset/rejected"] == stats["rejected"]
        assert {k: v for k, v in final.items() if k.startswith("rejects/")} == \
            {f"rejects/{reason}": n for reason, n in stats["rejected_by_reason"].items()}
        progress = [entry for entry in arm_logs if "items" in entry]
        assert progress[-1]["items"] == 12 and progress[-1]["rows"] + progress[-1]["rejected"] >= 12
    auto_progress = [e for e in runs["auto-evol/evolve"]["logs"] if "items" in e]
    assert auto_progress[-1]["tokens_per_s"] > 0  # the seed arm makes no call: its throughput is 0


def test_eval_logs_every_metric_of_every_benchmark(scripted_server, shared_data, tmp_path):
    server = scripted_server(lambda body, index: "The answer is: 18")
    problems = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:4]
    (tmp_path / "gsm8k.jsonl").write_text("\n".join(problems) + "\n")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"name": "arm-a", "report_to": "trackio",
                                      "model": {"model": "scripted", "base_urls": [server.base_url]},
                                      "gsm8k": {"path": str(tmp_path / "gsm8k.jsonl")}}))
    store = tmp_path / "trackio"
    done = autoevol(tmp_path, "eval", str(config), "--output-dir", str(tmp_path / "eval-a"), TRACKIO_DIR=str(store))
    assert done.returncode == 0, done.stderr[-3000:]

    runs = trackio_store(store, "autoevol-train")  # a stage on its own: the default project
    assert set(runs) == {"eval:eval-a"} and runs["eval:eval-a"]["group"] == "eval"
    logged = {k: v for k, v in runs["eval:eval-a"]["logs"][0].items() if k not in ("timestamp", "step")}
    block = json.loads((tmp_path / "eval-a" / "results.json").read_text())["benchmarks"]["gsm8k"]
    assert logged == eval_metrics("gsm8k", block["metrics"], block["stderr"])
    assert any(key.endswith("_stderr") for key in logged) and len(logged) > len(block["stderr"])


def test_report_to_none_logs_nothing(scripted_server, shared_data, tmp_path):
    server = scripted_server(optimize_rule)
    store = tmp_path / "trackio"
    out = tmp_path / "exp-none"
    done = autoevol(tmp_path, "run", str(pipeline_config(tmp_path, shared_data, server.base_url, "none")),
                    "--output-dir", str(out), TRACKIO_DIR=str(store), WANDB_DIR=str(tmp_path / "wandb"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "auto-evol" / "evolve" / "dataset" / "stats.json").is_file()
    assert not store.exists() and not (tmp_path / "wandb").exists() and not list(out.rglob("wandb"))
    assert "trackio" not in done.stderr.lower() and "wandb" not in done.stderr.lower()


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path):
    """wandb offline, in the stage's directory: the run file holds every key logged; nothing is synced."""
    history = [{"step": 1, "candidate": "incumbent", "lambda": 0.5, "status": "ok", "failures": {"parse_failure": 3},
                "selected": False, "tokens": {"dev": 10, "trajectory": 5, "optimizer": 0}},
               {"step": 1, "candidate": 0, "lambda": 0.25, "status": "ok", "failures": {"parse_failure": 1},
                "selected": True, "tokens": {"dev": 12, "trajectory": 0, "optimizer": 7}}]
    metrics = optimize_step_metrics(history, best_lambda=0.25)
    assert metrics == {"lambda/incumbent": 0.5, "lambda/cand0": 0.25, "lambda/selected": 0.25,
                       "failures/parse_failure": 1, "lambda/best": 0.25, "tokens/dev": 22, "tokens/trajectory": 5,
                       "tokens/optimizer": 7, "tokens/total": 34}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    script = (f"from pathlib import Path\nfrom autoevol_train.tracking import Tracker, TrackerRun\n"
              f"with Tracker(TrackerRun('wandb', project='p'), 'optimize', Path({str(tmp_path / 'opt')!r})) as t:\n"
              f"    t.log({metrics!r}, step=1)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    [run_file] = (tmp_path / "opt" / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    assert all(key.encode() in data for key in metrics) and b"optimize:opt" in data


def test_tracker_with_none_opens_nothing(tmp_path):
    tracker = Tracker(TrackerRun(), "evolve", tmp_path / "run")
    with tracker:
        tracker.log({"rows": 3}, step=1)
    assert not tracker.enabled and not (tmp_path / "run").exists()


def test_eval_metrics_keep_numbers_only():
    metrics = {"accuracy": 0.5, "n": 4, "headline": "strict", "ok": True, "per_category": {"a": 1}}
    assert eval_metrics("gsm8k", metrics) == {"gsm8k/accuracy": 0.5, "gsm8k/n": 4}
