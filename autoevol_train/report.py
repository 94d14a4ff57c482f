"""One HTML page for a pipeline run: optimisation, data, training, evaluation per arm, cost.

Built only from the files the stages leave in the run directory (so it can be rebuilt at any time, and a
stage that did not run simply has no section). The page is one self-contained file: images are embedded as
data URIs and every table is an HTML table, so it reads the same when copied anywhere. It marks itself
`data-images-ok="true"` once every image has loaded, which the test checks in a real headless browser.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoevol_train.eval.records import benchmark_label
from autoevol_train.evol.failures import format_counts
from autoevol_train.eval.run import format_value
from autoevol_train.eval.uncertainty import LEVEL, RESAMPLES, arm_differences
from autoevol_train.rundir import write_atomic

if TYPE_CHECKING:
    from autoevol_train.pipeline import PipelineConfig

# The paper's Table 2 (small models), for orientation next to the run's own numbers.
PAPER_TABLE2 = {
    "seed data": {"MT-Bench": 6.88, "AlpacaEval": 84.08, "GSM8K": 56.90, "HumanEval": 57.90},
    "Evol-Instruct": {"MT-Bench": 6.80, "AlpacaEval": 86.67, "GSM8K": 63.15, "HumanEval": 61.59},
    "Auto Evol-Instruct": {"MT-Bench": 7.51, "AlpacaEval": 84.41, "GSM8K": 70.74, "HumanEval": 65.85},
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.8rem 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 0.8rem; white-space: pre-wrap; max-height: 24rem; overflow: auto; }
img { max-width: 100%; border: 1px solid #ddd; } .note { color: #666; font-size: 0.9rem; }
"""

_IMAGES_CHECK = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.every(img => img.complete && img.naturalWidth > 0);
  document.body.setAttribute("data-images-ok", String(ok));
  document.body.setAttribute("data-images", String(images.length));
});
</script>
"""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="num">{"n/a" if math.isnan(value) else f"{value:.4g}"}</td>'
        if isinstance(value, int):
            return f'<td class="num">{value}</td>'
        return f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path, alt: str) -> str:
    """The PNG embedded as a data URI: the page shows it wherever the page is copied or mailed."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"></p>'


def _loss_history(train_dir: Path) -> list[tuple[int, float]]:
    state = _read_json(train_dir / "model" / "trainer_state.json")
    if not state:
        return []
    return [(entry["step"], entry["loss"]) for entry in state.get("log_history", []) if "loss" in entry]


def _plot_losses(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for arm, points in curves.items():
        ax.plot([s for s, _ in points], [loss for _, loss in points], marker=".", label=arm)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("SFT loss per arm")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_COUNTS = ("n", "samples", "failed_requests", "no_verdict", "ties", "unparsed_judgements")


def _headline_metrics(results: dict[str, Any]) -> dict[str, str]:
    """'benchmark metric' → "score ± standard error", for the arms table (counts and per-order details stay in
    results.md)."""
    flat: dict[str, str] = {}
    for benchmark, block in results.get("benchmarks", {}).items():
        for metric, value in block.get("metrics", {}).items():
            if metric in _COUNTS or "model_first" in metric or "model_second" in metric:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                stderr = block.get("stderr", {}).get(metric)  # results of an older version carry none
                flat[f"{benchmark_label(benchmark, block)} {metric}"] = format_value(float(value)) + (
                    f" ± {format_value(stderr)}" if stderr is not None else "")
    return flat


def _differences_table(arm_results: dict[str, dict[str, Any]]) -> str:
    """Each pair of arms on each metric: the paired difference and its bootstrap interval."""
    differences = arm_differences(arm_results)
    if not differences:
        return ""
    rows = [[d.benchmark, d.metric, f"{d.second} − {d.first}", d.items, f"{d.difference:+.2f}",
             f"[{d.low:+.2f}, {d.high:+.2f}]", "yes" if d.excludes_zero else "no"] for d in differences]
    return (f"<h3>Differences between arms</h3><p class='note'>Second arm minus first, paired over the items both "
            f"answered; {LEVEL:.0%} percentile bootstrap interval ({RESAMPLES:,} resamples of the items, seed 0). "
            "An interval that contains 0 means this test set cannot tell the arms apart.</p>"
            + _table(["benchmark", "metric", "arms", "items", "difference", "interval", "excludes 0"], rows))


def _eval_tables(arm: str, results: dict[str, Any]) -> str:
    """One arm's results.json as HTML tables: every metric with its standard error, then each protocol."""
    def blank(value: Any) -> Any:
        return "" if value is None else value

    rows = [[benchmark_label(benchmark, block), metric, "n/a" if value is None else value,
             blank(block.get("stderr", {}).get(metric))]  # results of an older version carry no stderr
            for benchmark, block in results["benchmarks"].items() for metric, value in block["metrics"].items()]
    protocols = [[benchmark, key, str(value)] for benchmark, block in results["benchmarks"].items()
                 for key, value in block["protocol"].items()]
    return (f"<h3>{html.escape(arm)}</h3><p>model <code>{html.escape(str(results['model']))}</code>; chat template: "
            f"{html.escape(str(results['template']))}; judge: {html.escape(str(results['judge'] or 'none'))}</p>"
            + _table(["benchmark", "metric", "value", "standard error"], rows)
            + "<details><summary>Protocol</summary>" + _table(["benchmark", "setting", "value"], protocols)
            + "</details>")


def _usage_rows(output_dir: Path, stage_dirs: list[tuple[str, Path]]) -> list[list[Any]]:
    rows = []
    for name, path in stage_dirs:
        record = _read_json(path / ".stage.json") or {}
        manifest = _read_json(path / "manifest.json") or {}
        usage = manifest.get("llm_usage") or {}
        requests = sum(role.get("requests", 0) for role in usage.values())
        tokens = sum(role.get("prompt_tokens", 0) + role.get("completion_tokens", 0) for role in usage.values())
        rows.append([name, record.get("status", "not run"), float(record.get("wall_s", 0.0)), requests, tokens])
    return rows


def _filters_table(output_dir: Path) -> str:
    """Rows each filter removed, per arm (the pipeline's filters.json): the arms are filtered differently."""
    filters = _read_json(output_dir / "filters.json") or {}
    names = sorted({name for arm in filters.values() for name in arm["removed"]})
    rows = [[arm, summary["seeds"], summary["rows"]] + [summary["removed"].get(name, 0) for name in names]
            for arm, summary in filters.items()]
    return ("<p>Rows removed by each filter (the pipeline's <code>filters.json</code> also lists each arm's "
            "filter settings):</p>" + _table(["arm", "seeds", "rows"] + names, rows)) if rows else ""


def _clip(text: Any, limit: int = 400) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + " […]"


def _arm_examples(arm: str, output_dir: Path, per_kind: int = 2) -> str:
    """Real text of one arm, to read beside its numbers: evolved rows (seed → evolved instruction → response),
    one reject of each reason (what the evol LLM wrote), and the trained model's first answers."""
    import pyarrow.parquet as pq

    dataset = output_dir / arm / "evolve" / "dataset"
    rows: list[list[Any]] = []
    for shard in sorted((dataset / "data").glob("train-*.parquet"))[:1]:
        for row in pq.read_table(shard).slice(0, per_kind).to_pylist():
            turns = row["messages"]
            rows.append([_clip(row["evolved_from"][0]) if row["evolved_from"] else "(the seed arm: not evolved)",
                         _clip(turns[0]["content"]), _clip(turns[-1]["content"])])
    parts = []
    if rows:
        parts.append(_table(["seed instruction", "evolved instruction", "response"], rows))
    rejects, seen = [], set()
    for reject in _read_jsonl(dataset / "rejects.jsonl"):
        reason = reject["reason"].split(":")[0]  # "duplicate_of:<row id>", "contaminated:<benchmark>/<item>"
        if reason in seen:
            continue
        seen.add(reason)
        if "messages" in reject:  # removed at assembly (dedup, decontamination): an evolved row, not an attempt
            rejects.append([reason, _clip(reject["messages"][0]["content"]),
                            f"(an evolved row, removed by {reject['stage']}: {reject['reason']})"])
        else:
            rejects.append([reason, _clip(reject["instruction"]),
                            _clip(reject["evol_output"] or reject["error"])])
    if rejects:
        parts.append("<p>One reject of each reason (what the evol LLM wrote, or the row a filter removed):</p>"
                     + _table(["reason", "instruction", "evol LLM output"], rejects))
    answers = [[_clip(r["instruction"]), _clip(r["output"])]
               for r in _read_jsonl(output_dir / arm / "eval" / "alpaca_eval.jsonl")[:per_kind]]
    if answers:
        parts.append("<p>The trained model's answers (AlpacaEval-style instructions):</p>"
                     + _table(["instruction", "answer"], answers))
    return f"<h3>{html.escape(arm)}</h3>" + "".join(parts) if parts else ""


def build_report(output_dir: Path, config: PipelineConfig, elapsed_s: float | None = None) -> Path:
    """Write `report.html` (+ PNGs) into the pipeline's run directory; returns its path. `elapsed_s`: the wall time
    of the `autoevol run` that writes it, model fetch included (stages it found completed cost nothing)."""
    output_dir = Path(output_dir)
    blocks: list[str] = [f"<h1>autoevol-train report: {html.escape(output_dir.name)}</h1>"]
    tiny = config.tiny_model is not None
    if tiny:
        blocks.append('<p class="note"><b>Tiny random model:</b> the text it produces is meaningless. This run '
                      "proves that every stage works end to end; point the recipe's roles at vLLM servers and "
                      "real models for real numbers.</p>")

    if config.fetch_model is not None:
        blocks.append(f'<p class="note"><b>{html.escape(config.fetch_model.name)}, a 135M-parameter model, plays '
                      "every role</b> (evol LLM, optimizer, responder, judge) and is the base model trained. Its "
                      "English is real, so every stage below shows real text and real rejects by reason; its skill "
                      "is not: it often answers an instruction instead of rewriting it, does not keep a "
                      "method's labels, gets arithmetic wrong and rarely keeps a judge's verdict format, and a "
                      "few training steps on a few rows move no benchmark. Differences between the arms are "
                      "noise here, not the paper's gains: point the same recipes at real models for those.</p>")

    stage_dirs: list[tuple[str, Path]] = []
    if (output_dir / "optimize").is_dir():
        stage_dirs.append(("optimize", output_dir / "optimize"))
    for arm in config.arms:
        for stage in ("evolve", "train", "eval"):
            if (output_dir / arm.name / stage).is_dir():
                stage_dirs.append((f"{arm.name}/{stage}", output_dir / arm.name / stage))

    # Arms side by side.
    arm_rows, metric_names = [], []
    per_arm_metrics, arm_results = {}, {}
    for arm in config.arms:
        results = _read_json(output_dir / arm.name / "eval" / "results.json") or {}
        if results:
            arm_results[arm.name] = results
        per_arm_metrics[arm.name] = _headline_metrics(results)
        metric_names += [m for m in per_arm_metrics[arm.name] if m not in metric_names]
    for arm in config.arms:
        stats = _read_json(output_dir / arm.name / "evolve" / "dataset" / "stats.json") or {}
        losses = _loss_history(output_dir / arm.name / "train")
        rows = sum(stats.get("rows", {}).values()) if stats else "-"
        arm_rows.append([arm.name, arm.method, rows, stats.get("rejected", "-") if stats else "-",
                         losses[-1][1] if losses else "-"]
                        + [per_arm_metrics[arm.name].get(m, "-") for m in metric_names])
    blocks.append("<h2>Arms</h2>")
    blocks.append(_table(["arm", "method", "rows", "rejected", "final train loss"] + metric_names, arm_rows))
    blocks.append(_differences_table(arm_results))
    blocks.append("<p class='note'>The paper's Table 2 (small models), for orientation:</p>")
    blocks.append(_table(["arm", "MT-Bench", "AlpacaEval", "GSM8K", "HumanEval"],
                         [[name] + list(values.values()) for name, values in PAPER_TABLE2.items()]))

    # Optimisation.
    optimize_dir = output_dir / "optimize"
    history = _read_jsonl(optimize_dir / "history.jsonl")
    if history:
        blocks.append("<h2>Method optimisation</h2>")
        blocks.append(_image(optimize_dir / "lambda.png", "failure rate per step"))
        winners = [[h["step"], h["name"], h["method_id"] or "-", h["lambda"] if h["lambda"] is not None else "-",
                    format_counts(h["failures"])]
                   for h in history if h.get("selected")]
        blocks.append(_table(["step", "winner", "method id", "λ (dev failure rate)", "failure reasons on dev"],
                             winners)
                      if winners else "<p>No candidate beat the initial method.</p>")
        best = optimize_dir / "best_method.txt"
        if best.is_file():
            blocks.append(f"<h3>Best method</h3><pre>{html.escape(best.read_text())}</pre>")
        if (optimize_dir / "report.html").is_file():
            blocks.append("<p class='note'>In the run directory: <code>optimize/report.html</code>, the full "
                          "optimisation report (per-step diffs, failed and successful evolutions).</p>")

    # Data.
    data_blocks = []
    for arm in config.arms:
        dataset = output_dir / arm.name / "evolve" / "dataset"
        stats = _read_json(dataset / "stats.json")
        if not stats:
            continue
        reasons = ", ".join(f"{k}: {v}" for k, v in stats.get("rejected_by_reason", {}).items()) or "none"
        data_blocks.append(f"<h3>{html.escape(arm.name)}</h3><p>{stats.get('seeds', '?')} seeds → "
                           f"{sum(stats.get('rows', {}).values())} rows; rejected by reason: "
                           f"{html.escape(reasons)}. Data card: <code>{html.escape(arm.name)}/evolve/dataset/"
                           "README.md</code> in the run directory.</p>")
        data_blocks.append(_image(dataset / "stats.png", f"{arm.name} statistics"))
    if data_blocks:
        blocks += ["<h2>Data</h2>", _filters_table(output_dir)] + data_blocks

    examples = [_arm_examples(arm.name, output_dir) for arm in config.arms]
    if any(examples):
        blocks += ["<h2>Examples</h2>"] + examples

    # Training.
    curves = {arm.name: _loss_history(output_dir / arm.name / "train") for arm in config.arms}
    curves = {arm: points for arm, points in curves.items() if points}
    if curves:
        _plot_losses(curves, output_dir / "loss.png")
        blocks += ["<h2>Training</h2>", _image(output_dir / "loss.png", "training loss")]

    # Evaluation details.
    eval_blocks = [_eval_tables(arm, results) for arm, results in arm_results.items()]
    if eval_blocks:
        blocks += ["<h2>Evaluation protocol and results</h2>"] + eval_blocks

    # Cost.
    usage = _usage_rows(output_dir, stage_dirs)
    if usage:
        blocks += ["<h2>Wall time and LLM usage per stage</h2>",
                   _table(["stage", "status", "wall (s)", "LLM requests", "tokens"], usage)]
    if elapsed_s is not None:
        blocks.append(f"<p><b>This <code>autoevol run</code> took {elapsed_s:.0f} s ({elapsed_s / 60:.1f} min)</b> "
                      "from start to this report, model fetch included; stages it found completed took no time.</p>")

    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>autoevol-train report</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(blocks)}{_IMAGES_CHECK}</body></html>")
    path = output_dir / "report.html"
    write_atomic(path, page)
    return path
