"""Speed benchmark: trace conversions, examples per second (target: one-step >= 50,000/s).

Protocol:

- Data: `generate_expressions` (50 expressions, default distribution with
  binary operators + - * /, seed 0), traced by `generate_traces` (BasicSR,
  population 20, 100 generations, seed 42): 50 x 100 x 19 = 95,000 one-step
  candidates. Both files are cached in --workdir and reused when present.
- Timed: `conversion_common.run_conversion` exactly as the CLI runs it
  (rows built, JSON-encoded, written atomically to disk), after the traces
  are loaded. Reported rate = examples written / wall seconds of the
  conversion loop, and / CPU seconds of this process over the loop (the
  steadier number on a shared machine; with --workers the children's CPU is
  not counted, so only the wall rate compares). The token statistics
  (tokenizer on up to 2000 sampled examples) are not in the loop. Best of
  --repeats (by wall time).
- Variants: one-step basic (1 and 2 worker processes) / superrich /
  --ancestors_only / --split, autoregressive basic, direct (inline X, y).
  Also printed: the whole run's wall and CPU seconds (loading, tokenizer,
  token statistics and sidecars included); on a shared machine the CPU
  seconds are the steadier number.

    python bench/bench_conversion.py
    python bench/bench_conversion.py --repeats 5 --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import autoreg_conversion  # noqa: E402
import direct_conversion  # noqa: E402
import file_io  # noqa: E402
import generate_expressions as ge  # noqa: E402
import generate_traces as gt  # noqa: E402
import one_step_conversion  # noqa: E402

N_EXPRESSIONS = 50
TRACE_PARAMS = {"population_size": 20, "num_generations": 100, "max_depth": 10, "max_size": 25,
                "tournament_size": 3, "constants": [1.0], "binary_operators": ["+", "-", "*", "/"],
                "unary_operators": []}
TARGET_RATE = 50_000

VARIANTS = [  # (label, module, extra CLI arguments)
    ("one-step basic", one_step_conversion, ["--context_type", "basic"]),
    ("one-step basic --workers 2", one_step_conversion, ["--workers", "2"]),
    ("one-step superrich", one_step_conversion, ["--context_type", "superrich"]),
    ("one-step basic --ancestors_only", one_step_conversion, ["--ancestors_only"]),
    ("one-step basic --split", one_step_conversion, ["--split"]),
    ("autoreg basic", autoreg_conversion, ["--context_type", "basic"]),
    ("direct --inline_data", direct_conversion, ["--inline_data"]),
]


def make_data(workdir: Path) -> tuple[Path, Path]:
    """The expressions and traces files of the protocol (cached)."""
    expressions = workdir / f"bench_expr_{N_EXPRESSIONS}.pkl.gz"
    traces = workdir / f"bench_gen100_expr_{N_EXPRESSIONS}.pkl.gz"
    if not expressions.exists():
        params = ge.ExpressionParams(binary_ops=("+", "-", "*", "/"))
        records, metadata = ge.generate_expressions(N_EXPRESSIONS, params, seed=0, argv=["bench"])
        file_io.save(expressions, "expressions", records, metadata)
    if not traces.exists():
        started = time.perf_counter()
        gt.main(["--expressions_file", str(expressions), "--output", str(traces), "--num_generations", "100",
                 "--population_size", "20", "--operator_set", "arith", "--constants", "1.0", "--seed", "42",
                 "--quiet", "--workers", "2"])
        print(f"traced {N_EXPRESSIONS} expressions in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return expressions, traces


def run_variant(module, input_path: Path, extra: list[str], workdir: Path) -> dict:
    """One CLI run through the module's `convert`; the numbers run_conversion returns, plus load time."""
    output = workdir / "out" / "bench.jsonl"
    argv = ["--input", str(input_path), "--output", str(output), "--overwrite", "--quiet", *extra]
    args = module.build_parser().parse_args(argv)
    started, cpu_started = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        result = module.convert(args, argv)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    examples = sum(part["examples"] for part in result["counts"].values())
    first = next(iter(result["token_statistics"].values()))
    return {"examples": examples, "convert_seconds": result["seconds"], "total_seconds": total, "total_cpu": cpu,
            "rate": examples / result["seconds"], "cpu_rate": examples / result["cpu_seconds"],
            "token_statistics": first}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the trace conversions (examples per second).")
    parser.add_argument("--workdir", default=None, help="folder for the cached data (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the best is reported")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(args.workdir or temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        expressions, traces = make_data(workdir)
        results = {}
        print(f"{'variant':34s} {'examples':>9s} {'convert s':>9s} {'examples/s':>11s} {'per cpu s':>10s} "
              f"{'total s':>8s} {'cpu s':>6s}"
              f" {'prompt tok mean/max':>20s} {'target tok mean/max':>20s}")
        for label, module, extra in VARIANTS:
            source = expressions if module is direct_conversion else traces
            runs = [run_variant(module, source, extra, workdir) for _ in range(args.repeats)]
            best = min(runs, key=lambda run: run["convert_seconds"])
            results[label] = best
            stats = best["token_statistics"]
            prompt = stats.get("prompt_tokens", {"mean": 0, "max": 0})
            target = stats["target_tokens"]
            print(f"{label:34s} {best['examples']:9d} {best['convert_seconds']:9.3f} {best['rate']:11,.0f} "
                  f"{best['cpu_rate']:10,.0f} "
                  f"{best['total_seconds']:8.2f} {best['total_cpu']:6.2f} {prompt['mean']:>11.1f}/{prompt['max']:<8d} "
                  f"{target['mean']:>11.1f}/{target['max']:<8d}")
    best = results["one-step basic"]
    verdict = "meets" if best["rate"] >= TARGET_RATE else "MISSES"
    print(f"one-step basic: {best['rate']:,.0f} examples/s wall, {best['cpu_rate']:,.0f} per CPU second "
          f"({verdict} the target of {TARGET_RATE:,}/s); python {platform.python_version()}, "
          f"{platform.machine()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
