"""Search-quality benchmark: how many problems BasicSR solves, and against gplearn.

Part (a), the harder tier: BasicSR with population 20, 1000 generations,
max_size 25, max_depth 10 (default early stop, 3e-16), seeds 0-9, on the five
harder problems (`problems.TIERS['harder']`). Data per run:
`problem.sample(seed=seed)` (the problem's 50 points, different per seed).
A run is solved when `problems.is_solved(model, problem)` (NMSE < 1e-10 on
1000 fresh points). Printed: solved per problem and in total (target >= 45/50;
the prototype solved 33/50), and the median generations to solve over the
solved runs. Generations to solve = the first generation whose best
individual's MSE reached max(final best MSE, early-stop threshold), i.e. the
generation where the final solution's accuracy was first reached; for runs
ending on the early stop this is `n_generations_`.

Part (b), the easy tiers: BasicSR with population 100, 200 generations and,
for consistency with part (a), max_size 25 and max_depth 10 (BasicSR's own
defaults are 15 and 4), seeds 0-2, on the 15 problems of
`TIERS['ultra'] + TIERS['simple']`; against gplearn
`SymbolicRegressor(population_size=1000, generations=20,
function_set=('add', 'sub', 'mul', 'div'), n_jobs=1, random_state=seed)`
(other parameters at gplearn's defaults, including its early stop at
fitness 0) on the same data. gplearn's best program (`_program`) is converted
to our syntax and judged by the same `is_solved`: its node list is written
in function-call form (`add(mul(x0, x0), 0.5)`: feature i -> `xi`, constants
at full precision, since gplearn's printed form rounds them to 3 decimals)
and read with `expression_parser.parse`, which accepts add/sub/mul/div; a
program that fails to parse counts as unsolved and is listed. Caveat: that
evaluates gplearn's `div` as ttsr's `/` (guard at |d| < 1e-10), whereas
gplearn's protected division returns 1 when |d| <= 0.001, and gplearn does
find programs such as `add(..., div(X0, X0))` plus `div(c, sub(X0, X0))`
terms that are exact only under its own rule. So gplearn is also judged on
its own predictions (`problems.is_solved_by_predictions`: is_solved's 1000
points, same NMSE < 1e-10 test): the "gplearn (own div)" column. The
conversion lives in peers.py, shared with simple_evaluation.py. Target:
BasicSR solves at least as many as gplearn (both counts are printed).

Runs are independent (problem, method, seed) jobs spread over `--workers`
processes; every job is seeded and uses no time limit, so the results do not
depend on the number of workers.

    python bench/bench_search_quality.py                  # both parts, 2 workers
    python bench/bench_search_quality.py --part a --json quality_a.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import parallel  # noqa: E402
import problems  # noqa: E402
from basic_sr import BasicSR  # noqa: E402
from evaluation import generations_to_solve  # noqa: E402
from peers import gplearn_expression  # noqa: E402

MAX_SIZE = 25
MAX_DEPTH = 10

PART_A = {"population_size": 20, "num_generations": 1000, "seeds": list(range(10)), "tiers": ["harder"]}
PART_B = {"population_size": 100, "num_generations": 200, "seeds": list(range(3)), "tiers": ["ultra", "simple"]}
GPLEARN = {"population_size": 1000, "generations": 20, "function_set": ("add", "sub", "mul", "div"), "n_jobs": 1}

TARGET_A = 45
PROTOTYPE_A = 33


# ----------------------------------------------------------------------
# Jobs


def run_job(job: tuple) -> dict:
    """One (part, method, problem, seed) run; returns a JSON-ready dict."""
    part, method, name, seed = job
    problem = problems.get_problem(name)
    X, y = problem.sample(seed=seed)
    settings = PART_A if part == "a" else PART_B
    start = time.perf_counter()
    if method == "basic_sr":
        model = BasicSR(
            population_size=settings["population_size"],
            num_generations=settings["num_generations"],
            max_size=MAX_SIZE,
            max_depth=MAX_DEPTH,
            seed=seed,
        )
        model.fit(X, y)
        solved = problems.is_solved(model, problem)
        result = {
            "expression": model.best_expression_,
            "mse": model.best_mse_,
            "generations": model.n_generations_,
            "generations_to_solve": generations_to_solve(model.best_mse_history_, model.best_mse_,
                                                         model.early_stop_threshold or 0.0) if solved else None,
            "evaluations": model.n_evaluations_,
        }
    else:
        from gplearn.genetic import SymbolicRegressor

        model = SymbolicRegressor(**GPLEARN, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y)
        expression, text, error = gplearn_expression(model._program)
        solved = expression is not None and problems.is_solved(expression, problem)
        result = {
            "solved_own_semantics": problems.is_solved_by_predictions(model.predict, problem),
            "expression": text,
            "gplearn_program": str(model._program),
            "parse_error": error,
            "generations": len(model.run_details_["generation"]),
        }
    result.update(
        {"part": part, "method": method, "problem": name, "seed": seed, "solved": bool(solved),
         "seconds": time.perf_counter() - start}
    )
    return result


def _names(tiers: list[str]) -> list[str]:
    return [p.name for p in problems.resolve_problems(tiers)]


def jobs_for(part: str, with_gplearn: bool) -> list[tuple]:
    settings = PART_A if part == "a" else PART_B
    names = _names(settings["tiers"])
    jobs = []
    if part == "b" and with_gplearn:  # slowest first: better load balance
        jobs += [("b", "gplearn", name, seed) for name in names for seed in settings["seeds"]]
    jobs += [(part, "basic_sr", name, seed) for name in names for seed in settings["seeds"]]
    return jobs


def run_jobs(jobs: list[tuple], workers: int) -> list[dict]:
    if workers <= 1 or len(jobs) <= 1:
        results = [run_job(job) for job in jobs]
    else:
        with parallel.pool(min(workers, len(jobs))) as pool:
            results = list(pool.imap_unordered(run_job, jobs, chunksize=1))
    order = {job: index for index, job in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r["part"], r["method"], r["problem"], r["seed"])])


# ----------------------------------------------------------------------
# Reports


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        if index == len(rows):  # the last row is the total
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _median(values: list) -> str:
    return f"{statistics.median(values):g}" if values else "-"


def report_a(results: list[dict]) -> dict:
    names = _names(PART_A["tiers"])
    seeds = PART_A["seeds"]
    rows, summary = [], {}
    for name in names:
        runs = [r for r in results if r["problem"] == name]
        solved = [r for r in runs if r["solved"]]
        to_solve = [r["generations_to_solve"] for r in solved]
        summary[name] = {"solved": len(solved), "runs": len(runs), "median_generations_to_solve":
                         statistics.median(to_solve) if to_solve else None,
                         "unsolved_seeds": [r["seed"] for r in runs if not r["solved"]]}
        rows.append([name, f"{len(solved)}/{len(runs)}", _median(to_solve),
                     ",".join(map(str, summary[name]["unsolved_seeds"])) or "-"])
    all_solved = [r for r in results if r["solved"]]
    total_to_solve = [r["generations_to_solve"] for r in all_solved]
    rows.append(["TOTAL", f"{len(all_solved)}/{len(results)}", _median(total_to_solve), ""])
    print(
        f"(a) BasicSR population {PART_A['population_size']} x {PART_A['num_generations']} generations, "
        f"max_size {MAX_SIZE}, max_depth {MAX_DEPTH}, seeds {seeds[0]}-{seeds[-1]}, "
        f"data problem.sample(seed=seed) (50 points)"
    )
    print(_table(["problem", "solved", "median gens to solve", "unsolved seeds"], rows))
    ok = len(all_solved) >= TARGET_A
    verdict = f"target >= {TARGET_A}/50: {'PASS' if ok else 'FAIL'}" if len(seeds) == 10 else (
        f"rate {len(all_solved) / len(results):.1%}, {50 * len(all_solved) / len(results):.1f} per 50 runs; "
        f"the target ({TARGET_A}/50) is judged on seeds 0-9")
    evaluations_per_generation = sum(r["evaluations"] for r in results) / sum(r["generations"] + 1 for r in results)
    print(
        f"total solved {len(all_solved)}/{len(results)}   ({verdict}; "
        f"prototype {PROTOTYPE_A}/50)   median generations to solve {_median(total_to_solve)}   "
        f"evaluations per generation {evaluations_per_generation:.2f} (population {PART_A['population_size']}; "
        f"restarts also score the elite's neighbours)   BasicSR time {sum(r['seconds'] for r in results):.1f} s"
    )
    return {"per_problem": summary, "solved": len(all_solved), "runs": len(results),
            "median_generations_to_solve": statistics.median(total_to_solve) if total_to_solve else None,
            "target": TARGET_A, "pass": ok}


def report_b(results: list[dict], with_gplearn: bool) -> dict:
    names = _names(PART_B["tiers"])
    seeds = PART_B["seeds"]
    methods = ["basic_sr"] + (["gplearn"] if with_gplearn else [])
    # (column, method, result key): gplearn is judged twice, see problems.is_solved_by_predictions.
    columns = [("BasicSR", "basic_sr", "solved")]
    if with_gplearn:
        columns += [("gplearn", "gplearn", "solved"), ("gplearn (own div)", "gplearn", "solved_own_semantics")]
    rows, summary = [], {}
    for name in names:
        row = [name]
        summary[name] = {}
        for column, method, key in columns:
            runs = [r for r in results if r["problem"] == name and r["method"] == method]
            solved = sum(r[key] for r in runs)
            summary[name][column] = solved
            row.append(f"{solved}/{len(runs)}")
        rows.append(row)
    totals = {m: sum(r["solved"] for r in results if r["method"] == m) for m in methods}
    counts = {m: sum(1 for r in results if r["method"] == m) for m in methods}
    column_totals = {c: sum(r[k] for r in results if r["method"] == m) for c, m, k in columns}
    rows.append(["TOTAL"] + [f"{column_totals[c]}/{counts[m]}" for c, m, _ in columns])
    print(
        f"(b) BasicSR population {PART_B['population_size']} x {PART_B['num_generations']} generations, "
        f"max_size {MAX_SIZE}, max_depth {MAX_DEPTH}"
        + (f"  vs  gplearn population {GPLEARN['population_size']} x {GPLEARN['generations']} generations, "
           f"functions {','.join(GPLEARN['function_set'])}" if with_gplearn else "")
        + f"; seeds {seeds[0]}-{seeds[-1]}, data problem.sample(seed=seed)"
    )
    print(_table(["problem"] + [c for c, _, _ in columns], rows))
    seconds = {m: sum(r["seconds"] for r in results if r["method"] == m) for m in methods}
    out = {"per_problem": summary, "solved": totals, "runs": counts, "seconds": seconds}
    if with_gplearn:
        failures = [r for r in results if r["method"] == "gplearn" and r["parse_error"]]
        ok = totals["basic_sr"] >= totals["gplearn"]
        print(
            f"solved: BasicSR {totals['basic_sr']}/{counts['basic_sr']}, gplearn {totals['gplearn']}/{counts['gplearn']}"
            f"   (target BasicSR >= gplearn: {'PASS' if ok else 'FAIL'})   "
            f"time BasicSR {seconds['basic_sr']:.1f} s, gplearn {seconds['gplearn']:.1f} s"
        )
        own = column_totals["gplearn (own div)"]
        print(
            f"gplearn judged on its own predictions (protected div: 1 where |d| <= 0.001): {own}/{counts['gplearn']}"
            f"   (BasicSR >= that: {'PASS' if totals['basic_sr'] >= own else 'FAIL'})"
        )
        print(f"gplearn programs that failed to parse (counted unsolved): {len(failures)}")
        for r in failures:
            print(f"  {r['problem']} seed {r['seed']}: {r['parse_error']}")
        out.update({"parse_failures": len(failures), "pass": ok, "gplearn_solved_own_semantics": own})
    else:
        print(f"solved: BasicSR {totals['basic_sr']}/{counts['basic_sr']}   time {seconds['basic_sr']:.1f} s")
    return out


def gplearn_available() -> bool:
    try:
        import gplearn.genetic  # noqa: F401
    except ImportError:
        return False
    return True


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Solve rates of BasicSR on the harder tier (a) and against gplearn on the easy tiers (b).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--part", choices=["a", "b", "both"], default="both", help="which part to run")
    parser.add_argument("--workers", type=int, default=2, help="processes running (problem, seed) jobs; 1 = in-process")
    parser.add_argument("--skip_gplearn", action="store_true", help="part (b) without the gplearn runs")
    parser.add_argument("--seeds_a", type=int, default=len(PART_A["seeds"]), metavar="N",
                        help="part (a) over seeds 0..N-1 (the target is judged on the default 10; more seeds "
                             "estimate the solve rate better)")
    parser.add_argument("--json", metavar="PATH", help="also write every run and the summaries as JSON to PATH")
    return parser


def main(argv=None) -> int:
    args = build_arg_parser().parse_args(argv)
    PART_A["seeds"] = list(range(args.seeds_a))
    with_gplearn = not args.skip_gplearn
    if with_gplearn and args.part in ("b", "both") and not gplearn_available():
        print("note: gplearn is not installed (pip install gplearn): part (b) runs BasicSR only")
        with_gplearn = False
    parts = ["a", "b"] if args.part == "both" else [args.part]
    report = {"workers": args.workers, "max_size": MAX_SIZE, "max_depth": MAX_DEPTH,
              "part_a_settings": PART_A, "part_b_settings": PART_B, "gplearn_settings": dict(GPLEARN)}
    start = time.perf_counter()
    for part in parts:
        jobs = jobs_for(part, with_gplearn)
        part_start = time.perf_counter()
        results = run_jobs(jobs, args.workers)
        summary = report_a(results) if part == "a" else report_b(results, with_gplearn)
        print(f"part ({part}) wall time {time.perf_counter() - part_start:.1f} s with {args.workers} worker(s)\n")
        report[f"part_{part}"] = {"summary": summary, "runs": results}
    report["wall_seconds"] = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
