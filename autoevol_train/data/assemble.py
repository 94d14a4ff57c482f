"""Finished items → the dataset: filters, sharded parquet, rejects, contamination list, statistics, card.

Runs once at the end of an evolution (or a shard merge), streaming the parts store in seed order, so the
result depends only on which items finished, never on the order they finished in: a resumed run and an
uninterrupted one write the same files. Filters, in this order, per output row:

1. decontamination: n-gram overlap with benchmark test sets; rows matching at >= `remove_at` words go to
   the rejects (``contaminated:<benchmark>/<item>``); every match, kept or removed, is listed;
2. exact duplicates, then near duplicates (MinHash), first occurrence in seed order kept, per split.

The failure detector and elimination rules already ran per item during evolution; their rejects are copied
to the rejects file with the reason they got then.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from autoevol_train.data.decontam import DecontamConfig, Decontaminator
from autoevol_train.data.dedup import DedupConfig, Deduplicator
from autoevol_train.data.parts import iter_in_order
from autoevol_train.data.stats import CONSTRAINT_CUES, TextStats, format_table, plot_stats
from autoevol_train.data.writers import JsonlWriter, ParquetShardWriter, card_header
from autoevol_train.rundir import write_atomic

__all__ = ["AssemblySpec", "assemble_dataset"]

_LISTED_MATCHES = 50


@dataclass
class AssemblySpec:
    """What to keep and how to write it (from the evolve config), plus facts for the card."""

    rounds: int
    round_output: str  # mixed | separate | last
    dedup: DedupConfig
    decontam: DecontamConfig
    rows_per_shard: int = 50000
    diversity_rows: int = 20000
    title: str = "Evolved instructions"
    facts: dict[str, str] = field(default_factory=dict)  # "domain": "math", "method": ..., models
    config_yaml: str = ""
    load_report: dict[str, Any] = field(default_factory=dict)


def _text(messages: list[dict[str, str]], fields: str) -> str:
    return "\n".join(m["content"] for m in messages if fields == "all" or m["role"] == "user")


def _split(row: dict[str, Any], spec: AssemblySpec) -> str | None:
    if row["round"] == 0 or spec.round_output == "mixed":
        return "train"
    if spec.round_output == "separate":
        return f"round_{row['round']}"
    return "train" if row["round"] == spec.rounds else None


def _set_name(round_number: int) -> str:
    return "seed arm" if round_number == 0 else f"round {round_number}"


class _Assembler:
    def __init__(self, spec: AssemblySpec, out: Path, decontaminator: Decontaminator | None):
        self.spec = spec
        self.out = out
        self.decontaminator = decontaminator or Decontaminator(spec.decontam)
        self.dedups: dict[str, Deduplicator] = {}
        self.writers: dict[str, ParquetShardWriter] = {}
        self.rejects = JsonlWriter(out / "rejects.jsonl")
        self.contamination = JsonlWriter(out / "contamination.jsonl")
        self.stats: dict[str, TextStats] = {"seed": TextStats(spec.diversity_rows)}
        self.seeds = 0
        self.reasons: Counter = Counter()
        self.contaminated: Counter = Counter()  # (set, benchmark, n) -> rows
        self.removed: Counter = Counter()  # benchmark -> rows removed
        self.listed: list[dict[str, Any]] = []

    def _reject(self, record: dict[str, Any], reason: str, stage: str) -> None:
        self.reasons[reason.split(":")[0]] += 1
        self.rejects.write({**record, "reason": reason, "stage": stage})

    def _count_matches(self, set_name: str, matches: list) -> None:
        for benchmark, n in {(m.benchmark, m.n) for m in matches}:
            self.contaminated[(set_name, benchmark, n)] += 1

    def add(self, record: dict[str, Any]) -> None:
        self.seeds += 1
        self.stats["seed"].add(record["seed"])
        seed_text = _text(record["seed"], self.spec.decontam.fields)
        self._count_matches("seed", self.decontaminator.matches(record["seed_id"], seed_text))
        for reject in record["rejects"]:
            self._reject(reject, reject["reason"], "evolution")
        for row in record["rows"]:
            split = _split(row, self.spec)
            if split is not None:
                self._add_row(row, split)

    def _add_row(self, row: dict[str, Any], split: str) -> None:
        matches = self.decontaminator.matches(row["id"], _text(row["messages"], self.spec.decontam.fields))
        removed = self.decontaminator.removes(matches)
        self._count_matches("dataset", matches)
        for match in matches:
            entry = {**match.as_dict(), "removed": removed}
            self.contamination.write(entry)
            if len(self.listed) < _LISTED_MATCHES:
                self.listed.append(entry)
        provenance = {"id": row["id"], "seed_id": row["seed_id"], "seed_index": row["seed_index"],
                      "round": row["round"], "messages": row["messages"]}
        if removed:
            worst = max(matches, key=lambda m: m.n)
            self.removed[worst.benchmark] += 1
            self._reject(provenance, f"contaminated:{worst.benchmark}/{worst.item_id}", "decontamination")
            return
        if split not in self.dedups:
            self.dedups[split] = Deduplicator(self.spec.dedup)
            self.writers[split] = ParquetShardWriter(self.out, split, self.spec.rows_per_shard)
        duplicate = self.dedups[split].check(row["id"], _text(row["messages"], self.spec.dedup.fields),
                                             group=row["seed_id"])
        if duplicate is not None:
            self._reject(provenance, duplicate, "dedup")
            return
        self.writers[split].write(row)
        name = _set_name(row["round"])
        if name not in self.stats:
            self.stats[name] = TextStats(self.spec.diversity_rows)
        self.stats[name].add(row["messages"])

    def close_data(self) -> None:
        """Close the data files: the parquet shards, rejects and contamination list."""
        if not self.writers:  # every row rejected: still a loadable (empty) dataset
            self.writers["train"] = ParquetShardWriter(self.out, "train", self.spec.rows_per_shard)
        for writer in self.writers.values():
            writer.close()
        self.rejects.close()
        self.contamination.close()

    def describe(self, out: Path) -> dict[str, Any]:
        """stats.json, the card and the plot, into `out` (the dataset, already in place): each written
        atomically, the plot last (the slowest; the card refers to it)."""
        rows = {split: writer.rows for split, writer in self.writers.items()}
        summaries = {name: stats.summary() for name, stats in self.stats.items()}
        summary = {
            "seeds": self.seeds, "rows": rows, "rejected": self.rejects.rows,
            "rejected_by_reason": dict(sorted(self.reasons.items())),
            "contamination": [{"set": s, "benchmark": b, "n": n, "rows": c}
                              for (s, b, n), c in sorted(self.contaminated.items())],
            "contaminated_rows_removed": dict(self.removed), "benchmark_items": self.decontaminator.items,
            "statistics": summaries, "load_report": self.spec.load_report,
        }
        write_atomic(out / "stats.json", json.dumps(summary, indent=2) + "\n")
        write_atomic(out / "README.md", self._card(summary))
        partial_plot = out / ".stats.partial.png"
        plot_stats(self.stats, partial_plot)
        partial_plot.replace(out / "stats.png")
        return summary

    def _card(self, summary: dict[str, Any]) -> str:
        spec = self.spec
        lines = [card_header(sorted(summary["rows"]), spec.title), f"# {spec.title}", "",
                 "Written by `autoevol evolve` (autoevol-train). The `messages` column is ready for SFT, the "
                 "other columns are provenance. Load it from the hub with `datasets.load_dataset(\"<name>\")`; "
                 "locally with `autoevol_train.data.writers.load_written_dataset(\"<this directory>\")` or "
                 "`datasets.load_dataset(\"parquet\", data_files=\"<this directory>/data/train-*.parquet\")` "
                 "(datasets caches a local directory by its name alone).", ""]
        lines += [f"- **{key}**: {value}" for key, value in spec.facts.items()]
        load = spec.load_report
        lines += ["", "## Counts", "", "| what | count |", "|---|---:|", f"| seeds read | {summary['seeds']} |"]
        if load.get("skipped"):
            lines.append(f"| malformed seed rows skipped | {load['skipped']} |")
        for split, count in sorted(summary["rows"].items()):
            lines.append(f"| rows in split `{split}` | {count} |")
        lines.append(f"| rows rejected (rejects.jsonl) | {summary['rejected']} |")
        for reason, count in summary["rejected_by_reason"].items():
            lines.append(f"| — {reason} | {count} |")
        if load.get("skipped_by_reason"):
            lines += ["", "Malformed seed rows skipped, by format and field: "
                      + ", ".join(f"{k}: {v}" for k, v in load["skipped_by_reason"].items())]
        lines += self._contamination_section(summary)
        lines += ["", "## Complexity and diversity", "",
                  "Seeds vs the rows kept per round (`stats.json`, `stats.png`). Words are runs of letters and "
                  "digits. `constraints` counts constraint cues per instruction (" + ", ".join(CONSTRAINT_CUES[:12])
                  + ", …); `questions` counts question marks; `distinct_1`/`distinct_2` are distinct words / "
                  f"bigrams over all words / bigrams of the first {spec.diversity_rows} instructions of a set.", "",
                  format_table(summary["statistics"]), "", "![statistics](stats.png)", "",
                  "## Config", "", "```yaml", spec.config_yaml.rstrip(), "```", ""]
        return "\n".join(lines)

    def _contamination_section(self, summary: dict[str, Any]) -> list[str]:
        spec = self.spec.decontam
        if not spec.enabled:
            return ["", "## Decontamination", "", "Disabled."]
        items = ", ".join(f"{name} ({count} items)" for name, count in self.decontaminator.items.items())
        lines = ["", "## Decontamination", "",
                 f"n-gram overlap ({', '.join(map(str, spec.ngram_sizes))} words, lower-cased, punctuation "
                 f"ignored; text checked: {'user and assistant turns' if spec.fields == 'all' else 'user turns'}) "
                 f"with {items}. Rows with a match of at least {spec.remove_at} words are removed."
                 if spec.remove_at else f"n-gram overlap with {items}; matches are listed, nothing is removed.",
                 "", "| set | benchmark | n | rows with a match |", "|---|---|---:|---:|"]
        for entry in summary["contamination"]:
            lines.append(f"| {entry['set']} | {entry['benchmark']} | {entry['n']} | {entry['rows']} |")
        if not summary["contamination"]:
            lines.append("| — | — | — | 0 |")
        if self.listed:
            lines += ["", f"Matches in the dataset's rows (first {_LISTED_MATCHES}; all in contamination.jsonl):",
                      "", "| row | benchmark item | n | removed | shared words |", "|---|---|---:|---|---|"]
            for m in self.listed:
                lines.append(f"| {m['row_id']} | {m['benchmark']}/{m['item_id']} | {m['n']} | {m['removed']} | "
                             f"{m['ngram']} |")
        return lines


def assemble_dataset(part_dirs: Iterable[Path], dataset_dir: Path, spec: AssemblySpec,
                     decontaminator: Decontaminator | None = None) -> dict[str, Any]:
    """Write the dataset directory from the parts stores; returns the summary (also in stats.json).

    `decontaminator`: the benchmark index, when the caller built it already (the evolve stage does, before its
    LLM calls, so a benchmark that cannot be read fails the run at once, not after hours of calls).

    The data (parquet shards, rejects, contamination list) are written into ``<dataset_dir>.partial`` and
    moved into place first, so a kill leaves either the previous dataset or none, never half of one; the
    statistics, card and plot are written into the dataset after that (the run's manifest says `completed` only
    once they are there; re-running assembles again from the parts).
    """
    partial = dataset_dir.with_name(dataset_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    assembler = _Assembler(spec, partial, decontaminator)
    with tqdm(desc="assemble", unit="item", dynamic_ncols=True, mininterval=0.5) as bar:
        for record in iter_in_order(list(part_dirs), partial / "scratch"):
            assembler.add(record)
            bar.update(1)
    assembler.close_data()
    shutil.rmtree(partial / "scratch", ignore_errors=True)
    shutil.rmtree(dataset_dir, ignore_errors=True)
    partial.replace(dataset_dir)
    return assembler.describe(dataset_dir)
