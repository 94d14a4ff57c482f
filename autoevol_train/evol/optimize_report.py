"""What a person reads after `autoevol optimize`: λ per step (PNG) and a Markdown + HTML report.

Everything is rebuilt from the run directory's files (history.jsonl, methods/, dev/, split.json), so the
report of a killed run is as right as its history, and re-running the report never needs the LLMs.
The report shows, per step, the candidates and their failure rates, the winning method with its diff to the
previous one and the optimizer's feedback, then examples of failed and successful evolutions of the final
method, and the final method itself.
"""

from __future__ import annotations

import difflib
import html
import json
from pathlib import Path
from typing import Any

from autoevol_train.evol.failures import format_counts
from autoevol_train.evol.records import best_so_far
from autoevol_train.rundir import write_atomic

__all__ = ["write_report", "plot_lambda"]

# ("h1"|"h2"|"h3", text) | ("p", text) | ("table", (headers, rows)) | ("code", (lang, text)) | ("img", file)
Block = tuple[str, Any]


def plot_lambda(history: list[dict[str, Any]], path: Path) -> None:
    """λ of every candidate per step (dots) and of the kept method after each step (line; step 0 = start)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({r["step"] for r in history})
    bests = best_so_far(history)
    kept = [bests[0]["lambda"]] + [next(r["lambda"] for r in history if r["step"] == s and r["selected"])
                                   for s in steps]
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=120)
    points = [(r["step"], r["lambda"]) for r in history if r["candidate"] != "incumbent" and r["lambda"] is not None]
    if points:
        axes.scatter(*zip(*points), color="0.6", s=18, label="candidates", zorder=2)
    axes.plot([0, *steps], kept, marker="o", color="C0", label="e_t (selected)", zorder=3)
    axes.plot([0, *steps], [r["lambda"] for r in bests], color="C1", linestyle="--", label="best so far", zorder=4)
    axes.set_xlabel("step")
    axes.set_ylabel("failure rate λ on dev")
    axes.set_xticks([0, *steps])
    axes.set_ylim(-0.03, 1.03)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _short(text: str | None, limit: int = 400) -> str:
    text = "" if text is None else " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


def _step_row(step: int, rows: list[dict[str, Any]], best: dict[str, Any]) -> list[str]:
    incumbent = next(r for r in rows if r["candidate"] == "incumbent")
    selected = next(r for r in rows if r["selected"])
    candidates = " ".join(_fmt(r["lambda"]) for r in rows if r["candidate"] != "incumbent")
    return [str(step), selected["name"], _fmt(incumbent["lambda"]), candidates, _fmt(selected["lambda"]),
            f"{best['name']} ({_fmt(best['lambda'])})", format_counts(selected["failures"]),
            f"{incumbent['wall_s']:.1f}"]


def _blocks(run_path: Path, history: list[dict[str, Any]]) -> list[Block]:
    split = json.loads((run_path / "split.json").read_text())
    steps = sorted({r["step"] for r in history})
    bests = best_so_far(history)
    first, final = bests[0], bests[-1]
    manifest = json.loads((run_path / "manifest.json").read_text())
    blocks: list[Block] = [
        ("h1", "Auto Evol-Instruct: method optimisation"),
        ("p", f"Seeds: {split['source']} ({split['distinct_seeds']} distinct; pool {split['pool']}, dev "
              f"{len(split['dev'])}, mini-batch source {len(split['train'])}). Steps run: {len(steps)}; stop "
              f"reason: {manifest.get('stop_reason') or 'not finished'}."),
        ("p", f"Starting method `{first['name']}` ({first['method_id']}): λ = {_fmt(first['lambda'])}. "
              f"Output (best so far) `{final['name']}` ({final['method_id']}): λ = {_fmt(final['lambda'])}. "
              "Each step's best candidate becomes e_t even on a tie (Eq. 2); the output changes only when a "
              "step strictly lowers the best score."),
        ("img", "lambda.png"),
        ("h2", "Steps"),
        ("table", (["step", "e_t", "λ incumbent", "λ candidates", "λ e_t", "best so far", "failures of e_t",
                    "wall s"], [_step_row(s, [r for r in history if r["step"] == s], bests[i + 1])
                                for i, s in enumerate(steps)])),
    ]
    previous = (run_path / "methods" / "initial.txt").read_text()
    for i, step in enumerate(steps):
        rows = [r for r in history if r["step"] == step]
        selected = next(r for r in rows if r["selected"])
        blocks.append(("h2", f"Step {step}: e_t = `{selected['name']}` (λ {_fmt(selected['lambda'])}); best so "
                             f"far `{bests[i + 1]['name']}` (λ {_fmt(bests[i + 1]['lambda'])})"))
        blocks.append(("table", (["candidate", "status", "method id", "λ", "failures"],
                                 [[str(r["candidate"]), r["status"], r["method_id"] or "—", _fmt(r["lambda"]),
                                   format_counts(r["failures"])] for r in rows])))
        if selected["candidate"] == "incumbent":
            blocks.append(("p", "The optimizer gave no usable candidate; the method is unchanged."))
            continue
        blocks.append(("h3", "Optimizer feedback that led to it"))
        blocks.append(("code", ("text", selected["feedback"] or "")))
        current = (run_path / selected["method_file"]).read_text()
        diff = difflib.unified_diff(previous.splitlines(), current.splitlines(), "previous method",
                                    selected["name"], lineterm="")
        blocks.append(("h3", "Diff to the previous method"))
        blocks.append(("code", ("diff", "\n".join(diff))))
        previous = current
    blocks += _examples(run_path, final["step"], final)
    blocks.append(("h2", f"Final method ({final['method_id']})"))
    blocks.append(("code", ("text", (run_path / "best_method.txt").read_text())))
    return blocks


def _examples(run_path: Path, step: int, final: dict[str, Any], per_kind: int = 3) -> list[Block]:
    dev_file = run_path / "dev" / f"step{step:02d}.jsonl"
    label = str(final["candidate"])
    rows = [json.loads(line) for line in dev_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["candidate"] == label]
    blocks: list[Block] = [("h2", f"Examples: the final method on the dev set (step {step})")]
    for title, chosen in (("Failed evolutions", [r for r in rows if r["reason"]][:per_kind]),
                          ("Successful evolutions", [r for r in rows if not r["reason"]][:per_kind])):
        blocks.append(("h3", title))
        if not chosen:
            blocks.append(("p", "none"))
            continue
        blocks.append(("table", (["reason", "original", "evolved", "response"],
                                 [[r["reason"] or "ok", _short(r["original"]),
                                   _short(r["evolved"]) if r["evolved"] is not None
                                   else "(unparsed) " + _short(r["evol_output"]), _short(r["response"])]
                                  for r in chosen])))
    return blocks


def _markdown(blocks: list[Block]) -> str:
    out = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + value)
        elif kind == "p":
            out.append(value)
        elif kind == "img":
            out.append(f"![failure rate per step]({value})")
        elif kind == "code":
            out.append(f"~~~~{value[0]}\n{value[1].rstrip()}\n~~~~")
        else:
            headers, rows = value
            cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append("\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                                 + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]))
    return "\n\n".join(out) + "\n"


def _html(blocks: list[Block]) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Method optimisation</title><style>"
           "body{font-family:sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
           "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .5rem;"
           "vertical-align:top;text-align:left}pre{background:#f6f6f6;padding:.8rem;white-space:pre-wrap}"
           ".add{color:#060}.del{color:#a00}</style></head><body>"]
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(value).replace('`', '')}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(value).replace('`', '')}</p>")
        elif kind == "img":
            out.append(f"<img src='{html.escape(value)}' alt='failure rate per step'>")
        elif kind == "code":
            lines = []
            for line in value[1].splitlines():
                css = "add" if value[0] == "diff" and line.startswith("+") else \
                      "del" if value[0] == "diff" and line.startswith("-") else ""
                lines.append(f"<span class='{css}'>{html.escape(line)}</span>" if css else html.escape(line))
            out.append("<pre>" + "\n".join(lines) + "</pre>")
        else:
            headers, rows = value
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                                 for row in rows) + "</table>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(run_path: Path) -> None:
    """Write lambda.png, report.md and report.html from the run directory (nothing when no step finished)."""
    history_path = run_path / "history.jsonl"
    if not history_path.exists():
        return
    history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()]
    if not history:
        return
    plot_lambda(history, run_path / "lambda.png")
    blocks = _blocks(run_path, history)
    write_atomic(run_path / "report.md", _markdown(blocks))
    write_atomic(run_path / "report.html", _html(blocks))
