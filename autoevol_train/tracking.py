"""Experiment tracking for every stage through one `report_to` setting: `none` (default), `trackio`, `wandb`.

Why here and not in each stage: every stage already runs inside a `StageRun`, which owns one `Tracker`; a stage
only says *what* to log (`tracker.log({...}, step=...)`, with the metric builders below), never how. The tracker
run is opened on the first logged value, so a stage that fails on its input before any work leaves no empty
run behind, and closed when the stage ends, whatever the outcome.

Both trackers stay local, no network:
- trackio (local-first): its SQLite store lives in `$TRACKIO_DIR` (trackio's own default `$HF_HOME/trackio`);
  nothing is sent to a Space unless the user sets trackio's own TRACKIO_SPACE_ID / TRACKIO_SERVER_URL.
- wandb: offline mode unless WANDB_MODE says otherwise; the run lies in `<directory>/wandb/offline-run-*`
  (`wandb sync` uploads it later, if ever).

One pipeline is one tracker project (its output directory's name): each stage of each arm is a run named
`<arm>/<stage>` in the group `<arm>`; a stage run on its own is the run `<stage>:<output dir name>` of the
project `autoevol-train`. Training keeps TRL's own `report_to` (the pipeline sets it in the arm's recipe).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

__all__ = ["ReportTo", "TrackerRun", "Tracker", "optimize_step_metrics", "evolve_metrics", "dataset_metrics",
           "eval_metrics", "trl_tracking"]

ReportTo = Literal["none", "trackio", "wandb"]
REPORT_TO_HELP = ("experiment tracker for this stage's metrics: none, trackio (local store in $TRACKIO_DIR) or "
                  "wandb (offline); in a pipeline, the pipeline's report_to applies")
DEFAULT_PROJECT = "autoevol-train"


@dataclass(frozen=True)
class TrackerRun:
    """Which tracker, and where this stage's run belongs: project, group, run name, wandb's directory.
    Fields left None are filled by the stage (`name`: `<stage>:<dir name>`, `directory`: its run directory)."""

    report_to: ReportTo = "none"
    project: str = DEFAULT_PROJECT
    group: str | None = None
    name: str | None = None
    directory: Path | None = None


class Tracker:
    """One stage's tracker run; `log` does nothing when `report_to` is none (nothing is imported either)."""

    def __init__(self, run: TrackerRun, stage: str, run_path: Path, config: Mapping[str, Any] | None = None):
        self.run = run
        self.stage = stage
        self.name = run.name or f"{stage}:{run_path.name}"
        self.group = run.group or stage
        self.directory = run.directory or run_path
        self.config = dict(config or {})
        self._handle: Any = None

    @property
    def enabled(self) -> bool:
        return self.run.report_to != "none"

    def log(self, metrics: Mapping[str, float | int], step: int | None = None) -> None:
        if not self.enabled or not metrics:
            return
        if self._handle is None:
            self._handle = self._open()
        with contextlib.redirect_stdout(sys.stderr):
            self._handle.log(dict(metrics), step=step)

    def _open(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):  # the trackers print banners; a stage's stdout is its result
            if self.run.report_to == "trackio":
                import trackio

                return trackio.init(project=self.run.project, name=self.name, group=self.group, config=self.config,
                                    resume="allow", auto_log_cpu=False, auto_log_gpu=False)
            import wandb

            self.directory.mkdir(parents=True, exist_ok=True)
            return wandb.init(project=self.run.project, group=self.group, name=self.name, job_type=self.stage,
                              dir=str(self.directory), config=self.config,
                              mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(console="off", x_disable_stats=True))

    def close(self) -> None:
        if self._handle is not None:
            with contextlib.redirect_stdout(sys.stderr):
                self._handle.finish()
            self._handle = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.close()


# --- what each stage logs ----------------------------------------------------------------------------------

def optimize_step_metrics(rows: Sequence[Mapping[str, Any]], best_lambda: float | None) -> dict[str, float]:
    """One optimize step (its history rows): λ of the incumbent, of each candidate, of the selected method and
    of the best so far; the selected method's failures by reason; the candidates that yielded no method, by
    status; tokens by phase."""
    metrics: dict[str, float] = {}
    statuses: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for row in rows:
        label = "incumbent" if row["candidate"] == "incumbent" else f"cand{row['candidate']}"
        if row["lambda"] is not None:
            metrics[f"lambda/{label}"] = row["lambda"]
        if row["status"] != "ok":
            statuses[row["status"].split(":")[0]] += 1
        tokens.update(row["tokens"])
        if row["selected"]:  # e_t: always evaluated (a candidate with a λ, or the incumbent)
            metrics["lambda/selected"] = row["lambda"]
            metrics.update({f"failures/{reason}": count for reason, count in row["failures"].items()})
    if best_lambda is not None:
        metrics["lambda/best"] = best_lambda
    metrics.update({f"candidates_failed/{status}": count for status, count in statuses.items()})
    metrics.update({f"tokens/{phase}": count for phase, count in tokens.items()})
    metrics["tokens/total"] = sum(tokens.values())
    return metrics


def evolve_metrics(items: int, rows: int, rejected: int, tokens: int, elapsed_s: float) -> dict[str, float]:
    """Evolve's progress: items done, rows kept, rejects, and the LLM throughput so far."""
    return {"items": items, "rows": rows, "rejected": rejected, "tokens": tokens,
            "tokens_per_s": tokens / elapsed_s if elapsed_s > 0 else 0.0}


def dataset_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The assembled dataset (stats.json's summary): rows per split, rejects in total and by reason."""
    metrics: dict[str, float] = {f"dataset/rows_{split}": n for split, n in summary["rows"].items()}
    metrics["dataset/rejected"] = summary["rejected"]
    metrics.update({f"rejects/{reason}": n for reason, n in summary["rejected_by_reason"].items()})
    return metrics


def eval_metrics(benchmark: str, metrics: Mapping[str, Any], stderr: Mapping[str, Any] | None = None
                 ) -> dict[str, float]:
    """Every numeric metric of one benchmark as `<benchmark>/<metric>`, and its standard error, when it has one,
    as `<benchmark>/<metric>_stderr` (labels and nested tables are left out)."""
    values = {**metrics, **{f"{name}_stderr": value for name, value in (stderr or {}).items()}}
    return {f"{benchmark}/{name}": value for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def trl_tracking(run: TrackerRun) -> tuple[dict[str, Any], dict[str, str]]:
    """Training's tracking stays TRL's own `report_to`: the recipe keys and the environment that put the training
    run in the pipeline's project, locally (`trackio_static_space_id: false`: no Space is synced on a Hub push;
    wandb offline in the pipeline directory). Nothing for `none`: the recipe's own `report_to` stands."""
    if run.report_to == "none":
        return {}, {}
    keys: dict[str, Any] = {"report_to": [run.report_to], "run_name": run.name}
    if run.report_to == "trackio":
        return {**keys, "project": run.project, "trackio_static_space_id": False}, {}
    env = {"WANDB_PROJECT": run.project, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
           "WANDB_RUN_GROUP": run.group or "", "WANDB_DIR": str(run.directory or ".")}
    return keys, env
