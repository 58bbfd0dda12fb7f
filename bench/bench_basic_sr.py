"""Speed benchmark: BasicSR throughput against gplearn, on one core.

Protocol (the prototype's trace settings):

- Problems: the five harder problems (`problems.TIERS['harder']`), each on
  `Problem.sample(seed=0, n_points=200)`.
- BasicSR: population 20, max_size 25, max_depth 10, 1000 generations,
  `early_stop_threshold=None` (early stop off: every run does all
  generations), seed 0.
- Timing: wall clock around `fit()` (setup included), best of `--repeats`
  runs (the runs are seeded, so every repeat does the same work). The numba
  kernel is compiled before any timing by a tiny fit on each problem's data.
- Rates per problem and in total (sums of work over sums of time):
  generations/s; individuals scored/s = `n_evaluations_` / time (every
  individual of every generation, cache hits included); unique individuals
  computed/s = `len(_fitness_cache)` / time (the expressions whose fitness
  was actually computed).
- gplearn: `SymbolicRegressor(population_size=1000, generations=20,
  function_set=('add', 'sub', 'mul', 'div'), n_jobs=1, stopping_criteria=-1,
  random_state=0, verbose=0)` on the same data in the same process. Its
  fitness (mean absolute error) is never below 0, so stopping_criteria=-1 is
  never met and all 20 generations run (checked). gplearn evaluates the whole
  population every generation, so its individuals/s = population *
  generations / fit time. Timed once by default (`--gplearn_repeats`): one
  fit takes several seconds.
- Reported: BasicSR individuals/s / gplearn individuals/s (target >= 20x),
  BasicSR generations/s at population 20 (target >= 4000), and the projected
  wall time of 1,000 expressions x 1,000 generations on 2 cores =
  1000 * 1000 / (generations/s * 2) seconds (target <= 120 s).

Everything runs in this one process on one core: no multiprocessing. Other
load on the machine makes timings noisy; use `--repeats` and a quiet machine.

    python bench/bench_basic_sr.py                 # the full protocol (~1.5 min)
    python bench/bench_basic_sr.py --skip_gplearn --repeats 5
    python bench/bench_basic_sr.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import numpy as np  # noqa: E402

import problems  # noqa: E402
from basic_sr import BasicSR  # noqa: E402

# The protocol's settings.
POPULATION = 20
MAX_SIZE = 25
MAX_DEPTH = 10
N_POINTS = 200
DATA_SEED = 0
GENERATIONS = 1000
GPLEARN_POPULATION = 1000
GPLEARN_GENERATIONS = 20
GPLEARN_FUNCTIONS = ("add", "sub", "mul", "div")
GPLEARN_NEVER_STOP = -1.0  # MAE >= 0, so this criterion is never reached

# Targets from the issue.
TARGET_RATIO = 20.0
TARGET_GENS_PER_S = 4000.0
TARGET_PROJECTED_S = 120.0
PROJECTED_EXPRESSIONS = 1000
PROJECTED_GENERATIONS = 1000
PROJECTED_CORES = 2


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time BasicSR (population 20, 200 points) against gplearn on the harder problems.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--generations", type=int, default=GENERATIONS, help="BasicSR generations per run")
    parser.add_argument(
        "--problems", default="harder",
        help="comma-separated problem names and/or tiers (see `python problems.py`)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="BasicSR timing: best of this many runs per problem")
    parser.add_argument("--seed", type=int, default=0, help="BasicSR seed")
    parser.add_argument("--skip_gplearn", action="store_true", help="do not run gplearn")
    parser.add_argument("--gplearn_repeats", type=int, default=1, help="gplearn timing: best of this many fits per problem")
    parser.add_argument("--gplearn_generations", type=int, default=GPLEARN_GENERATIONS, help="gplearn generations")
    parser.add_argument("--gplearn_population", type=int, default=GPLEARN_POPULATION, help="gplearn population size")
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON to PATH")
    return parser


def make_basic_sr(generations: int, seed: int) -> BasicSR:
    return BasicSR(
        population_size=POPULATION,
        num_generations=generations,
        max_size=MAX_SIZE,
        max_depth=MAX_DEPTH,
        early_stop_threshold=None,
        seed=seed,
    )


def warm_up(datasets: dict) -> None:
    """Compile the numba kernel (and touch every code path) before timing."""
    for X, y in datasets.values():
        model = BasicSR(population_size=POPULATION, num_generations=3, max_size=MAX_SIZE, max_depth=MAX_DEPTH, seed=0)
        model.fit(X[:20], y[:20])


def fastest_fit(make_model, X, y, repeats: int):
    """(seconds, model) of the fastest of `repeats` fits of fresh models (wall clock around fit)."""
    best = None
    for _ in range(max(1, repeats)):
        model = make_model()
        start = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, model)
    return best


def time_basic_sr(X, y, generations: int, seed: int, repeats: int) -> dict:
    """Best-of-`repeats` fit of BasicSR; counts come from the fastest run."""
    seconds, model = fastest_fit(lambda: make_basic_sr(generations, seed), X, y, repeats)
    return {
        "seconds": seconds,
        "generations": int(model.n_generations_),
        "scored": int(model.n_evaluations_),
        "unique": len(model._fitness_cache),
        "best_mse": float(model.best_mse_),
        "expression": model.best_expression_,
        "model": model,
    }


def time_gplearn(X, y, population: int, generations: int, repeats: int) -> dict:
    from gplearn.genetic import SymbolicRegressor

    def make_model():
        return SymbolicRegressor(
            population_size=population,
            generations=generations,
            function_set=GPLEARN_FUNCTIONS,
            n_jobs=1,
            stopping_criteria=GPLEARN_NEVER_STOP,
            random_state=0,
            verbose=0,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds, model = fastest_fit(make_model, X, y, repeats)
    ran = len(model.run_details_["generation"])
    return {
        "seconds": seconds,
        "generations": ran,
        "stopped_early": ran < generations,
        "individuals": population * ran,
        "best_fitness": float(model.run_details_["best_fitness"][-1]),
    }


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def gplearn_available() -> bool:
    try:
        import gplearn.genetic  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> int:
    args = build_arg_parser().parse_args(argv)
    if args.generations < 1 or args.repeats < 1 or args.gplearn_repeats < 1:
        print("error: --generations, --repeats and --gplearn_repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        chosen = problems.resolve_problems(args.problems)
    except (problems.UnknownProblemError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    datasets = {p.name: p.sample(seed=DATA_SEED, n_points=N_POINTS) for p in chosen}

    run_gplearn = not args.skip_gplearn
    gplearn_note = None
    if run_gplearn and not gplearn_available():
        gplearn_note = "gplearn is not installed (pip install gplearn): skipping the gplearn comparison"
        run_gplearn = False
    elif not run_gplearn:
        gplearn_note = "gplearn skipped (--skip_gplearn)"

    print(
        f"BasicSR: population {POPULATION}, max_size {MAX_SIZE}, max_depth {MAX_DEPTH}, "
        f"{N_POINTS} points (data seed {DATA_SEED}), {args.generations} generations, "
        f"early stop off, seed {args.seed}, best of {args.repeats}"
    )
    if run_gplearn:
        print(
            f"gplearn: population {args.gplearn_population}, {args.gplearn_generations} generations, "
            f"functions {','.join(GPLEARN_FUNCTIONS)}, n_jobs=1, stopping_criteria={GPLEARN_NEVER_STOP:g}, "
            f"random_state=0, best of {args.gplearn_repeats}"
        )
    print(f"one core, no multiprocessing; warming up the numba kernel ...", flush=True)
    warm_up(datasets)

    rows = []
    for problem in chosen:
        X, y = datasets[problem.name]
        result = time_basic_sr(X, y, args.generations, args.seed, args.repeats)
        result["solved"] = problems.is_solved(result.pop("model"), problem)
        result["problem"] = problem.name
        if run_gplearn:
            result["gplearn"] = time_gplearn(X, y, args.gplearn_population, args.gplearn_generations, args.gplearn_repeats)
        rows.append(result)
        print(f"  {problem.name}: BasicSR {result['seconds']:.3f} s"
              + (f", gplearn {result['gplearn']['seconds']:.2f} s" if run_gplearn else ""), flush=True)

    totals = {
        "seconds": sum(r["seconds"] for r in rows),
        "generations": sum(r["generations"] for r in rows),
        "scored": sum(r["scored"] for r in rows),
        "unique": sum(r["unique"] for r in rows),
    }
    if run_gplearn:
        totals["gplearn_seconds"] = sum(r["gplearn"]["seconds"] for r in rows)
        totals["gplearn_individuals"] = sum(r["gplearn"]["individuals"] for r in rows)
    for entry in rows + [totals]:
        entry["gens_per_s"] = _rate(entry["generations"], entry["seconds"])
        entry["scored_per_s"] = _rate(entry["scored"], entry["seconds"])
        entry["unique_per_s"] = _rate(entry["unique"], entry["seconds"])
        if run_gplearn:
            gp_individuals = entry["gplearn"]["individuals"] if "gplearn" in entry else entry["gplearn_individuals"]
            gp_seconds = entry["gplearn"]["seconds"] if "gplearn" in entry else entry["gplearn_seconds"]
            entry["gplearn_per_s"] = _rate(gp_individuals, gp_seconds)
            entry["ratio"] = entry["scored_per_s"] / entry["gplearn_per_s"]

    _print_table(rows, totals, run_gplearn)
    projected = PROJECTED_EXPRESSIONS * PROJECTED_GENERATIONS / (totals["gens_per_s"] * PROJECTED_CORES)
    checks = {
        "gens_per_s": (totals["gens_per_s"], TARGET_GENS_PER_S, totals["gens_per_s"] >= TARGET_GENS_PER_S),
        "projected_seconds": (projected, TARGET_PROJECTED_S, projected <= TARGET_PROJECTED_S),
    }
    print()
    if run_gplearn:
        ratio = totals["ratio"]
        checks["ratio"] = (ratio, TARGET_RATIO, ratio >= TARGET_RATIO)
        print(
            f"BasicSR individuals/s / gplearn individuals/s: {totals['scored_per_s']:,.0f} / "
            f"{totals['gplearn_per_s']:,.0f} = {ratio:.1f}x   (target >= {TARGET_RATIO:g}x: "
            f"{'PASS' if checks['ratio'][2] else 'FAIL'})"
        )
        stopped = [r["problem"] for r in rows if r["gplearn"]["stopped_early"]]
        if stopped:
            print(f"warning: gplearn stopped early on {', '.join(stopped)}")
    else:
        print(f"note: {gplearn_note}")
    print(
        f"BasicSR generations/s at population {POPULATION}: {totals['gens_per_s']:,.0f}   "
        f"(target >= {TARGET_GENS_PER_S:g}: {'PASS' if checks['gens_per_s'][2] else 'FAIL'})"
    )
    print(
        f"projected {PROJECTED_EXPRESSIONS:,} expressions x {PROJECTED_GENERATIONS:,} generations on "
        f"{PROJECTED_CORES} cores: {PROJECTED_EXPRESSIONS * PROJECTED_GENERATIONS:,} / "
        f"({totals['gens_per_s']:,.0f} x {PROJECTED_CORES}) = {projected:.1f} s   "
        f"(target <= {TARGET_PROJECTED_S:g} s: {'PASS' if checks['projected_seconds'][2] else 'FAIL'})"
    )
    short = [f"{r['problem']} ({r['generations']})" for r in rows if r["generations"] < args.generations]
    if short:
        print(f"note: stopped before {args.generations} generations: {', '.join(short)}")

    if args.json:
        report = {
            "protocol": {
                "population_size": POPULATION, "max_size": MAX_SIZE, "max_depth": MAX_DEPTH,
                "n_points": N_POINTS, "data_seed": DATA_SEED, "generations": args.generations,
                "early_stop_threshold": None, "seed": args.seed, "repeats": args.repeats,
                "gplearn": None if not run_gplearn else {
                    "population_size": args.gplearn_population, "generations": args.gplearn_generations,
                    "function_set": list(GPLEARN_FUNCTIONS), "n_jobs": 1,
                    "stopping_criteria": GPLEARN_NEVER_STOP, "random_state": 0,
                    "repeats": args.gplearn_repeats,
                },
            },
            "gplearn_note": gplearn_note,
            "problems": rows,
            "totals": totals,
            "projected_seconds": projected,
            "targets": {k: {"value": v, "target": t, "pass": ok} for k, (v, t, ok) in checks.items()},
            "machine": {
                "python": platform.python_version(), "platform": platform.platform(),
                "cpu_count": os.cpu_count(), "numpy": np.__version__,
            },
        }
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def _print_table(rows: list[dict], totals: dict, run_gplearn: bool) -> None:
    header = ["problem", "gens", "seconds", "gens/s", "scored", "scored/s", "unique", "unique/s", "solved"]
    if run_gplearn:
        header += ["gplearn s", "gplearn ind/s", "ratio"]

    def cells(entry: dict, name: str, solved: str) -> list[str]:
        out = [
            name, f"{entry['generations']}", f"{entry['seconds']:.3f}", f"{entry['gens_per_s']:,.0f}",
            f"{entry['scored']}", f"{entry['scored_per_s']:,.0f}", f"{entry['unique']}",
            f"{entry['unique_per_s']:,.0f}", solved,
        ]
        if run_gplearn:
            gp_seconds = entry["gplearn"]["seconds"] if "gplearn" in entry else entry["gplearn_seconds"]
            out += [f"{gp_seconds:.2f}", f"{entry['gplearn_per_s']:,.0f}", f"{entry['ratio']:.1f}x"]
        return out

    table = [header] + [cells(r, r["problem"], "yes" if r["solved"] else "no") for r in rows]
    table.append(cells(totals, "TOTAL", f"{sum(r['solved'] for r in rows)}/{len(rows)}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print()
    for index, row in enumerate(table):
        if index == len(table) - 1:
            print("  ".join("-" * w for w in widths))
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    sys.exit(main())
