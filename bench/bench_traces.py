"""Speed benchmark: trace generation against bare BasicSR fits, and worker scaling.

Protocol:

- Expressions: `generate_expressions.generate_expressions(100, seed=0)` with
  its default parameters (the training-data distribution: 1-10 variables,
  complexity 0.5, up to 200 points), made in memory at the start.
- BasicSR: population 20, 1000 generations, max_size 25, max_depth 10,
  tournament 3, the file's constants, operators `arith`; expression i runs
  with seed derive_seed(42, i), as in generate_traces.py.
- Paired pass, one process: for each expression in turn, a bare fit
  (`BasicSR(..., collect_trajectory=False).fit(X, y)`, the work trace
  generation cannot avoid) and then the traced run of generate_traces.py with
  1 worker (`generate_traces._stored_trace`: the fit with its trajectory,
  the record, pickled and compressed as it is stored). Alternating the two
  per expression makes both sums see the same machine load, so their ratio
  survives a noisy machine.
- Process-pool start, once: the seconds until a first 2-worker pool of this
  process answers a no-op. Pools start by forkserver (parallel.pool): a
  server process imports the project's modules once, and the workers fork
  from it. A CLI run pays this once, however long it is.
- 2 workers: `generate_traces.iter_traces(records, params, 42, workers=2)`
  (what the CLI runs, its own pool's start included: workers load the numba
  kernel, fit, pickle and compress), then `file_io.save_encoded` of the
  collected bytes in id order (the CLI's final write), timed separately.
- The numba kernel is compiled (a tiny fit) before any timing; workers load
  it from numba's on-disk cache.
- `--repeats R` repeats both parts and keeps the fastest time of each (the
  runs are seeded, so every repeat does the same work).
- Reported: traces/s; overhead of trace generation over the bare fits, in %
  (paired traced time + save vs paired bare time; target <= 20%); scaling =
  1-worker traced time / (pool start + 2-worker time) (target >= 1.8x);
  projected wall time of 1,000 expressions x 1,000 generations on 2 cores =
  pool start + 10 x the 2-worker time with save (target <= 180 s). Also
  checks that 1 and 2 workers give the same records. Not included: the
  CLI's checkpoint writes (none in runs under 30 s; on long runs at most
  ~10% of the wall time, by design).

Everything shares the machine with whatever else runs on it: the scaling and
the projection are only meaningful when nothing else is running.

    python bench/bench_traces.py                    # ~1.5 minutes on a quiet machine
    python bench/bench_traces.py --repeats 3        # less noisy
    python bench/bench_traces.py --n_expressions 20 --num_generations 200   # quick look
    python bench/bench_traces.py --json bench_traces.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import file_io  # noqa: E402
import generate_traces as gt  # noqa: E402
import parallel  # noqa: E402
from basic_sr import BasicSR  # noqa: E402
from generate_expressions import generate_expressions  # noqa: E402
from operators import OPERATOR_SETS  # noqa: E402
from random_stream import derive_seed  # noqa: E402

SEED = 42


def basic_sr_params(num_generations: int, constants) -> dict:
    binary, unary = OPERATOR_SETS["arith"]
    return {"population_size": 20, "num_generations": num_generations, "max_depth": 10, "max_size": 25,
            "tournament_size": 3, "constants": list(constants), "binary_operators": list(binary),
            "unary_operators": list(unary)}


def paired_pass(records: list[dict], params: dict) -> dict:
    """Bare fit and traced run of each expression, alternating; summed seconds of each."""
    bare = traced = 0.0
    traces, generations = [], []
    for record in records:
        started = time.perf_counter()
        y = np.asarray(record["y"])
        # The same stopping rule as trace generation (stop once solved), so both do the same work.
        bare_params = {**params, "early_stop_threshold": gt.solved_threshold(params, y)}
        model = BasicSR(**bare_params, seed=derive_seed(SEED, int(record["id"])), collect_trajectory=False)
        model.fit(np.asarray(record["X"]), y)
        middle = time.perf_counter()
        trace, _ = gt._stored_trace(record, params, SEED)
        traced += time.perf_counter() - middle
        bare += middle - started
        traces.append(trace)
        generations.append(model.n_generations_)
    return {"bare_seconds": bare, "traced_seconds": traced, "traces": traces,
            "mean_generations": float(np.mean(generations))}


def pool_start_seconds() -> float:
    """Seconds until this process's first 2-worker pool answers a no-op (its forkserver started)."""
    started = time.perf_counter()
    with parallel.pool(2) as pool:
        pool.map(abs, range(2))
    return time.perf_counter() - started


def two_workers(records: list[dict], params: dict, folder: Path) -> dict:
    started = time.perf_counter()
    traces = sorted((trace for trace, _ in gt.iter_traces(records, params, SEED, workers=2, progress=False)),
                    key=lambda trace: trace.expression_id)
    core = time.perf_counter() - started
    path = file_io.save_encoded(folder / "traces.pkl.gz", "traces", [trace.data for trace in traces], {})
    save = time.perf_counter() - started - core
    return {"core_seconds": core, "save_seconds": save, "seconds": core + save,
            "file_bytes": path.stat().st_size, "traces": traces}


def best_of(records: list[dict], params: dict, repeats: int, folder: Path) -> tuple[dict, dict]:
    """Fastest paired pass and fastest 2-worker run over `repeats` rounds."""
    paired = pooled = None
    for _ in range(repeats):
        run = paired_pass(records, params)
        total = run["bare_seconds"] + run["traced_seconds"]
        if paired is None or total < paired["bare_seconds"] + paired["traced_seconds"]:
            paired = run
        run = two_workers(records, params, folder)
        if pooled is None or run["seconds"] < pooled["seconds"]:
            pooled = run
    return paired, pooled


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark trace generation against bare BasicSR fits.")
    parser.add_argument("--n_expressions", type=int, default=100, help="synthetic expressions to trace")
    parser.add_argument("--num_generations", type=int, default=1000, help="BasicSR generations per expression")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of measurements; the fastest of each is kept")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    records, metadata = generate_expressions(args.n_expressions, seed=0)
    params = basic_sr_params(args.num_generations, metadata["constants"])
    BasicSR(**{**params, "num_generations": 2}).fit(records[0]["X"], records[0]["y"])  # compile numba
    n = len(records)
    print(f"{n} expressions x {args.num_generations} generations, population 20, "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    start = pool_start_seconds()
    with tempfile.TemporaryDirectory() as folder:
        paired, pooled = best_of(records, params, max(1, args.repeats), Path(folder))

    bare, traced, save = paired["bare_seconds"], paired["traced_seconds"], pooled["save_seconds"]
    print(f"bare fits, 1 process        {bare:7.2f} s  {n / bare:6.2f} fits/s  "
          f"mean generations {paired['mean_generations']:.1f}")
    print(f"traces, 1 process           {traced:7.2f} s  {n / traced:6.2f} traces/s  (paired with the bare fits)")
    two = pooled["core_seconds"]
    print(f"traces, 2 workers           {two:7.2f} s  {n / two:6.2f} traces/s")
    print(f"save ({pooled['file_bytes'] / 1e6:.1f} MB, joined)        {save:7.2f} s")
    print(f"process-pool start, once    {start:7.2f} s  (forkserver importing the modules; counted below)")
    overhead = 100.0 * (traced + save - bare) / bare
    scaling = traced / (start + pooled["core_seconds"])
    projected = start + pooled["seconds"] * (1000 / n) * (1000 / args.num_generations)
    same = [trace.data for trace in paired["traces"]] == [trace.data for trace in pooled["traces"]]
    print(f"overhead vs bare fits       {overhead:6.1f} %  (target <= 20 %; without the save "
          f"{100.0 * (traced - bare) / bare:.1f} %)")
    print(f"scaling 2 / 1 workers       {scaling:6.2f} x  (target >= 1.8 x; with the save "
          f"{(traced + save) / (start + pooled['seconds']):.2f} x; without the pool start "
          f"{traced / pooled['core_seconds']:.2f} x)")
    print(f"projected 1000 x 1000 on 2 workers  {projected:6.1f} s  (target <= 180 s)")
    print(f"records identical with 1 and 2 workers: {same}; load average at the end "
          f"{os.getloadavg()[0]:.2f} (other work on the machine makes the timings noisy)")
    if args.json:
        numbers = {"n_expressions": n, "num_generations": args.num_generations, "repeats": args.repeats,
                   "bare_seconds": bare, "traced_seconds": traced, "two_worker_seconds": pooled["core_seconds"],
                   "save_seconds": save, "pool_start_seconds": start, "file_bytes": pooled["file_bytes"],
                   "overhead_percent": overhead,
                   "scaling": scaling, "projected_seconds": projected, "identical": same}
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
