"""One verbose head-to-head: BasicSR against NeuralSR on one problem, same seed and budget.

    python neural_comparison.py --problem pythagorean_3d --checkpoint models/neuralsr-tiny --seed 0
    python neural_comparison.py --problem my_data.csv --num_generations 200 --every 10 --json head_to_head.json

Both fit `problem.sample(seed=seed)` (a CSV: its points) with population x
generations and the same seed. Printed: the best MSE of both side by side
every --every generations (and where each run stopped), then per method the
expression found, solved? (problems.is_solved), generations, evaluations and
seconds, and NeuralSR's well-formed rate, children from the model and
fallback count. For many problems and seeds use simple_evaluation.py; the
records here are the same (evaluation.py), and --json writes them with the
settings and provenance.
"""

from __future__ import annotations

import argparse
import sys

import file_io
from evaluation import (EvaluationInputError, add_budget_arguments, add_neural_arguments, aggregate,
                        budget_from_args, model_record, neural_options_from_args, prepare_output_file,
                        require_neural_module, resolve_tasks, run_basic, save_report, warm_up)
from expression_parser import parse
from expressions import simplified_string

LABELS = {"basic": "BasicSR", "neural": "NeuralSR"}


def compare(task, seed: int, budget, neural_options) -> list[dict]:
    """[BasicSR record, NeuralSR record] of one task, seed and budget."""
    from neural_sr import NeuralSR  # lazy: torch and the model only when a comparison runs

    warm_up()  # the compiled kernel's first load would be billed to BasicSR
    basic = run_basic(task, seed, budget)
    X, y = task.data(seed)
    model = NeuralSR(seed=seed, **neural_options.neural_params(budget)).fit(X, y)
    return [basic, model_record("neural", task, seed, model)]


def side_by_side(records: list[dict], every: int) -> str:
    """Best MSE per method every `every` generations, plus each run's last generation."""
    last = [record["generations"] for record in records]
    shown = sorted(set(range(0, max(last) + 1, every)) | set(last))
    header = f"{'generation':>10}" + "".join(f"  {LABELS[r['method']] + ' best MSE':>20}" for r in records)
    lines = [header, "-" * len(header)]
    for generation in shown:
        cells = []
        for record, final in zip(records, last):
            if generation > final:
                cells.append("")
            else:
                mse = record["best_mse_history"][generation]
                cells.append(f"{mse:.3e}" + (" (stop)" if generation == final else ""))
        lines.append(f"{generation:>10}" + "".join(f"  {cell:>20}" for cell in cells))
    return "\n".join(lines)


def outcome_lines(records: list[dict]) -> list[str]:
    """Per method: solved, generations, evaluations, time, size and the expressions found."""
    lines = []
    for record in records:
        label = LABELS[record["method"]]
        lines.append(
            f"{label:9s} solved {'yes' if record['solved'] else 'no '}  generations {record['generations']}  "
            f"evaluations {record['evaluations']:,}  {record['seconds']:.2f} s "
            f"({record['seconds_per_generation'] * 1000:.3g} ms/generation)  MSE {record['mse']:.3e}  size {record['size']}"
        )
        lines.append(f"{'':9s} expression {record['expression']}")
        lines.append(f"{'':9s} simplified {simplified_string(parse(record['expression']))}")
    neural = records[-1]
    lines.append(
        f"NeuralSR  well-formed {neural['well_formed_rate']:.1%} of {neural['n_proposals']:,} proposals; "
        f"{neural['n_neural']:,} children from the model, {neural['n_fallback']:,} fallbacks; "
        f"{neural['model_seconds']:.2f} s in the model"
    )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="pythagorean_3d",
                        help="one benchmark problem name or a CSV file (columns x0..xk then y) (default: pythagorean_3d)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both searches and of the problem's sample (default: 0)")
    add_budget_arguments(parser)
    add_neural_arguments(parser)
    parser.add_argument("--every", type=int, default=None,
                        help="print the best MSEs every this many generations (default: num_generations / 20)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write both run records, aggregates and provenance as JSON (simple_evaluation's fields)")
    return parser


def _plan(args):
    tasks = resolve_tasks(args.problem)
    if len(tasks) != 1:
        raise EvaluationInputError(f"--problem takes one problem or CSV file, got {args.problem!r} "
                                   f"({len(tasks)} problems); use simple_evaluation.py for several")
    if args.seed < 0:
        raise EvaluationInputError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.every is not None and args.every < 1:
        raise EvaluationInputError(f"--every must be >= 1, got {args.every}")
    budget = budget_from_args(args)
    options = neural_options_from_args(args)
    require_neural_module("neural_sr")
    if args.json:
        prepare_output_file(args.json, "--json")  # a bad path fails now, not after both searches
    return tasks[0], budget, options


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        task, budget, options = _plan(args)
    except EvaluationInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    every = args.every or max(1, budget.num_generations // 20)
    print(f"{task.name}, seed {args.seed}: population {budget.population_size} x {budget.num_generations} "
          f"generations ({budget.evaluations:,} evaluations); checkpoint {options.resolved_checkpoint()}, "
          f"temperature {options.temperature}, top_k {options.top_k}, top_p {options.top_p}", flush=True)
    records = compare(task, args.seed, budget, options)
    print()
    print(side_by_side(records, every))
    print()
    print("\n".join(outcome_lines(records)))
    if args.json:
        per_problem, totals = aggregate(records)
        settings = {"problem": task.name, "source": task.source, "seed": args.seed,
                    "budget": {**budget.search_params(), "evaluations": budget.evaluations},
                    "neural": {**vars(options), "checkpoint": options.resolved_checkpoint()}}
        recorded_argv = None if argv is None else ["neural_comparison.py", *argv]
        save_report(args.json, {
            "metadata": file_io.make_metadata(vars(args), args.seed, argv=recorded_argv),
            "settings": settings, "aggregates": per_problem, "totals": totals, "runs": records,
        })
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
