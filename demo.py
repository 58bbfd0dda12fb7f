"""`make demo`: BasicSR and NeuralSR (the shipped checkpoint) side by side on the five harder problems, on the CPU.

    python demo.py                         # both methods, 50 generations, seed 0 (1-1.5 minutes on a laptop)
    python demo.py --methods basic --num_generations 1000
    python demo.py --checkpoint checkpoints/onestep-tiny/final --constrained

Each problem is fitted once per method on its 50 sample points, with the
same population and generation budget; "solved" is problems.is_solved
(NMSE < 1e-10 on 1000 fresh points). NeuralSR runs the five problems in
lockstep (batched_neural_sr.BatchedNeuralSR) on the CPU unless --device
says otherwise; its model is models/neuralsr-tiny (docs/RESULTS.md), and a
missing checkpoint is a one-line error naming it.
"""

from __future__ import annotations

import argparse
import sys
import time

import problems
from basic_sr import BasicSR
from expressions import simplified_string

METHODS = ("basic", "neural")
SEARCH = dict(max_size=25, max_depth=10)


def run_basic(names: list[str], population_size: int, num_generations: int, seed: int) -> list[dict]:
    """BasicSR on every problem, one after the other; one row per problem."""
    rows = []
    for problem in problems.resolve_problems(names):
        X, y = problem.sample(seed=seed)
        start = time.perf_counter()
        model = BasicSR(population_size=population_size, num_generations=num_generations, seed=seed,
                        **SEARCH).fit(X, y)
        rows.append(row_of(problem, model, time.perf_counter() - start))
    return rows


def run_neural(names: list[str], population_size: int, num_generations: int, seed: int, proposer,
               constrained: bool) -> tuple[list[dict], float]:
    """NeuralSR on every problem, batched over a loaded Proposer; rows and the batch's wall time."""
    from batched_neural_sr import BatchedNeuralSR

    chosen = problems.resolve_problems(names)
    batched = BatchedNeuralSR(checkpoint=proposer, batch_size=len(chosen), population_size=population_size,
                              num_generations=num_generations, constrained=constrained, **SEARCH)
    start = time.perf_counter()
    fitted = batched.fit_many([problem.sample(seed=seed) for problem in chosen], seeds=[seed] * len(chosen),
                              progress=True)
    wall = time.perf_counter() - start
    return [row_of(problem, model, model.fit_time_, model.well_formed_rate_)
            for problem, model in zip(chosen, fitted)], wall


def row_of(problem, model, seconds: float, well_formed: float | None = None) -> dict:
    return {"problem": problem.name, "expression": simplified_string(model.best_tree_),
            "solved": problems.is_solved(model, problem), "generations": model.n_generations_,
            "seconds": seconds, "well_formed": well_formed}


def format_table(results: dict[str, list[dict]]) -> str:
    """Problems as rows, per method: solved, generations, expression found (simplified)."""
    methods = list(results)
    width = max([len("expression")] + [len(row["expression"]) for rows in results.values() for row in rows])
    width = min(width, 40)
    header = f"{'problem':32s}" + "".join(f" | {name:6s} {'gens':>5s} {'expression':{width}s}" for name in methods)
    lines = [header, "-" * len(header)]
    for index, first in enumerate(results[methods[0]]):
        cells = []
        for name in methods:
            row = results[name][index]
            text = row["expression"] if len(row["expression"]) <= width else row["expression"][:width - 3] + "..."
            cells.append(f" | {'yes' if row['solved'] else 'no':6s} {row['generations']:5d} {text:{width}s}")
        lines.append(f"{first['problem']:32s}" + "".join(cells))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="harder", help="problem names or tiers, comma-separated")
    parser.add_argument("--methods", default="basic,neural", help="comma-separated: basic, neural")
    parser.add_argument("--population_size", type=int, default=20, help="individuals per generation")
    parser.add_argument("--num_generations", type=int, default=50,
                        help="generation budget per problem and method (NeuralSR on a 2-core CPU: ~0.3 s per "
                             "problem-generation)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data sample and the searches")
    parser.add_argument("--checkpoint", default=None,
                        help="NeuralSR checkpoint folder (default: the shipped models/neuralsr-tiny)")
    parser.add_argument("--device", default="cpu", help="device for NeuralSR's model: cpu or cuda")
    parser.add_argument("--constrained", action="store_true",
                        help="NeuralSR samples under the expression grammar (every proposal well-formed)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    try:
        if unknown or not methods:
            raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
        names = [problem.name for problem in problems.resolve_problems(args.problems)]
        if args.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
        # The budget flags, checked by BasicSR now (a one-line ValueError), not after the first method's runs.
        BasicSR(population_size=args.population_size, num_generations=args.num_generations, seed=args.seed, **SEARCH)
        checkpoint, proposer = args.checkpoint, None
        if "neural" in methods:
            from neural_sr import DEFAULT_CHECKPOINT, Proposer

            checkpoint = checkpoint or str(DEFAULT_CHECKPOINT)
            proposer = Proposer.load(checkpoint, device=args.device)  # a bad checkpoint fails here, in one line
    except (problems.UnknownProblemError, ValueError) as error:  # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"population {args.population_size}, up to {args.num_generations} generations, seed {args.seed}, "
          f"max_size 25, max_depth 10" + (f"; NeuralSR: {checkpoint} on {args.device}"
                                           f"{', constrained decoding' if args.constrained else ''}"
                                           if "neural" in methods else "") + "\n")
    results, seconds = {}, {}
    if "basic" in methods:
        start = time.perf_counter()
        results["BasicSR"] = run_basic(names, args.population_size, args.num_generations, args.seed)
        seconds["BasicSR"] = time.perf_counter() - start
    if "neural" in methods:
        results["NeuralSR"], seconds["NeuralSR"] = run_neural(names, args.population_size, args.num_generations,
                                                              args.seed, proposer, args.constrained)
    print(format_table(results))
    print()
    for name, rows in results.items():
        generations = sum(row["generations"] for row in rows)
        line = (f"{name}: solved {sum(row['solved'] for row in rows)}/{len(rows)}, {generations} generations in "
                f"{seconds[name]:.1f} s ({1e3 * seconds[name] / max(1, generations):.1f} ms per problem-generation)")
        if name == "NeuralSR":
            line += f", well-formed proposals {sum(row['well_formed'] for row in rows) / len(rows):.1%} (mean)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
