"""`make demo`: BasicSR on the five harder benchmark problems, as a table.

    python demo.py [--seed 0] [--population_size 20] [--num_generations 1000]

Each problem is fitted once on its 50 sample points; "solved" is
problems.is_solved (NMSE < 1e-10 on 1000 fresh points).
"""

from __future__ import annotations

import argparse
import sys
import time

import problems
from basic_sr import BasicSR
from expressions import simplified_string


def run_demo(problem_names: list[str], population_size: int, num_generations: int, seed: int) -> list[dict]:
    """Fit every problem once; one result row per problem."""
    rows = []
    for problem in problems.resolve_problems(problem_names):
        X, y = problem.sample(seed=seed)
        start = time.perf_counter()
        model = BasicSR(
            population_size=population_size,
            num_generations=num_generations,
            max_size=25,
            max_depth=10,
            seed=seed,
        ).fit(X, y)
        rows.append(
            {
                "problem": problem.name,
                "expression": simplified_string(model.best_tree_),
                "solved": problems.is_solved(model, problem),
                "generations": model.n_generations_,
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table of demo rows."""
    width = max([len("expression found (simplified)")] + [len(row["expression"]) for row in rows])
    header = f"{'problem':32s} {'expression found (simplified)':{width}s} {'solved':6s} {'gens':>5s} {'seconds':>7s}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['problem']:32s} {row['expression']:{width}s} {str(row['solved']):6s}"
            f" {row['generations']:5d} {row['seconds']:7.2f}"
        )
    solved = sum(row["solved"] for row in rows)
    lines.append(f"solved {solved}/{len(rows)} in {sum(row['seconds'] for row in rows):.1f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="harder", help="problem names or tiers, comma-separated")
    parser.add_argument("--population_size", type=int, default=20, help="individuals per generation")
    parser.add_argument("--num_generations", type=int, default=1000, help="generation budget per problem")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data sample and the search")
    args = parser.parse_args(argv)
    try:
        names = problems.resolve_problems(args.problems)
    except problems.UnknownProblemError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"BasicSR, population {args.population_size}, up to {args.num_generations} generations, seed {args.seed}\n")
    print(format_rows(run_demo([p.name for p in names], args.population_size, args.num_generations, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
