"""Complexity and diversity statistics of instruction sets (seed vs each evolution round): table and PNG.

Measured per set, over the user turns ("instruction") and assistant turns ("response") of its rows:

| metric | what | why |
|---|---|---|
| rows | rows in the set | |
| instr_words (mean, median, p90) | words per instruction (all user turns of a row) | evolution should lengthen, a little |
| resp_words (mean) | words per response | harder instructions get longer answers |
| constraints (mean) | constraint cues per instruction: a lexical count of the phrases in `CONSTRAINT_CUES` (must, at least, no more than, without, ensure, ...) | a cheap proxy for "added constraints", the paper's main evolution move |
| questions (mean) | question marks and sub-questions per instruction | deepened inquiries |
| distinct_1 / distinct_2 | distinct words / bigrams ÷ all words / bigrams over the set's instructions | lexical diversity (Li et al. 2016) |
| vocab | distinct words over the set's instructions | |

Diversity (distinct-n, vocab) is computed on the first `diversity_rows` rows of each set in seed order (a
deterministic sample that bounds memory); lengths and counts use every row. This is not InsTag (the paper's
tagger is an LLM call per instruction); these metrics cost nothing and move the same way.
"""

from __future__ import annotations

import re
from array import array
from pathlib import Path
from statistics import median

from autoevol_train.data.decontam import word_tokens

__all__ = ["TextStats", "CONSTRAINT_CUES", "format_table", "plot_stats"]

CONSTRAINT_CUES = (
    "must", "should", "at least", "at most", "no more than", "no less than", "exactly", "without", "only",
    "ensure", "make sure", "include", "including", "exclude", "avoid", "limit", "within", "each", "every",
    "in addition", "additionally", "also", "require", "requires", "required", "constraint", "while",
    "do not", "don't", "cannot", "specific", "specifically", "format", "step by step", "explain", "justify",
)
# Matched on lower-cased text: an IGNORECASE alternation of 36 phrases is ~2.5x slower, and this runs on every
# row between the last answer and the dataset.
_CUES = re.compile(r"\b(?:" + "|".join(re.escape(c) for c in sorted(CONSTRAINT_CUES, key=len, reverse=True))
                   + r")\b")
COLUMNS = ("rows", "instr_words_mean", "instr_words_median", "instr_words_p90", "resp_words_mean",
           "constraints_mean", "questions_mean", "distinct_1", "distinct_2", "vocab")


class TextStats:
    """Streaming accumulator for one set of rows."""

    def __init__(self, diversity_rows: int = 20000):
        self.diversity_rows = diversity_rows
        self.instr_words = array("I")
        self.resp_words = 0
        self.constraints = 0
        self.questions = 0
        self._unigrams: set[int] = set()
        self._bigrams: set[int] = set()
        self._total_unigrams = 0
        self._total_bigrams = 0

    def add(self, messages: list[dict[str, str]]) -> None:
        instruction = "\n".join(m["content"] for m in messages if m["role"] == "user")
        response = "\n".join(m["content"] for m in messages if m["role"] == "assistant")
        words = word_tokens(instruction)
        self.instr_words.append(len(words))
        self.resp_words += len(word_tokens(response))
        self.constraints += len(_CUES.findall(instruction.lower()))
        self.questions += instruction.count("?")
        if len(self.instr_words) <= self.diversity_rows:
            # Python's own 64-bit hashes (a str caches its hash): counts within one process need no stable hash.
            self._unigrams.update(map(hash, words))
            self._bigrams.update(map(hash, zip(words, words[1:])))
            self._total_unigrams += len(words)
            self._total_bigrams += max(len(words) - 1, 0)

    def summary(self) -> dict[str, float]:
        rows = len(self.instr_words)
        if rows == 0:
            return {"rows": 0}
        ordered = sorted(self.instr_words)
        return {
            "rows": rows,
            "instr_words_mean": sum(ordered) / rows,
            "instr_words_median": float(median(ordered)),
            "instr_words_p90": float(ordered[min(rows - 1, int(0.9 * rows))]),
            "resp_words_mean": self.resp_words / rows,
            "constraints_mean": self.constraints / rows,
            "questions_mean": self.questions / rows,
            "distinct_1": len(self._unigrams) / max(self._total_unigrams, 1),
            "distinct_2": len(self._bigrams) / max(self._total_bigrams, 1),
            "vocab": len(self._unigrams),
        }


def format_table(summaries: dict[str, dict[str, float]]) -> str:
    """A markdown table, one row per set."""
    lines = ["| set | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, summary in summaries.items():
        cells = []
        for column in COLUMNS:
            value = summary.get(column)
            cells.append("" if value is None else f"{value:.0f}" if column in ("rows", "vocab")
                         else f"{value:.3f}" if column.startswith("distinct") else f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_stats(sets: dict[str, TextStats], path: Path) -> None:
    """Instruction-length histograms and mean constraint cues / distinct-2 per set, in one PNG.

    Drawn on a bare `Figure` (Agg), not through pyplot, and laid out by fixed margins, not `tight_layout`: the
    plot is written at the end of every evolve run, and this keeps it to about half a second of CPU."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    lengths, bars = fig.subplots(1, 2)
    longest = max((max(stats.instr_words) for stats in sets.values() if len(stats.instr_words)), default=1)
    bins = [longest * i / 30 for i in range(31)]  # shared bins, so the sets' bars line up
    for name, stats in sets.items():
        if len(stats.instr_words):
            lengths.hist(list(stats.instr_words), bins=bins, alpha=0.5, label=name)
    lengths.set(xlabel="words per instruction", ylabel="rows", title="instruction length")
    lengths.legend()
    summaries = {name: stats.summary() for name, stats in sets.items()}
    names = list(summaries)
    positions = range(len(names))
    bars.bar([p - 0.2 for p in positions], [summaries[n].get("constraints_mean", 0) for n in names], 0.4,
             label="constraint cues / instruction")
    bars.bar([p + 0.2 for p in positions], [10 * summaries[n].get("distinct_2", 0) for n in names], 0.4,
             label="distinct-2 × 10")
    bars.set_xticks(list(positions), names)
    bars.set(title="complexity and diversity")
    bars.legend()
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.92, wspace=0.15)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
