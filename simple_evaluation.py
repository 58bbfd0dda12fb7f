"""Compare search methods on benchmark problems at equal budgets: BasicSR, NeuralSR, gplearn, Operon.

    python simple_evaluation.py --methods basic,neural --checkpoint models/neuralsr-tiny --seeds 3
    python simple_evaluation.py --methods basic,gplearn --problems harder,compound_fraction --seeds 10
    python simple_evaluation.py --methods basic --problems my_data.csv --seeds 0,5 --num_generations 200

For every method, problem and seed one run with the same budget (population
x generations, reported in evaluations too; the peers' mapping is in
peers.py). Runs are seeded and have no time limit, so the results (timings
aside) are the same for any --workers. BasicSR, gplearn and Operon runs are
spread over --workers processes; NeuralSR runs are batched: one
`BatchedNeuralSR.fit_many` call over every (problem, seed) pair, --batch_size
populations per model call.

Written to --output_dir:
    evaluation.json   every run record, the aggregates per method and problem
                      and per method, the settings and provenance (command,
                      parameters, code version); fields in evaluation.py.
                      Written last: its presence means the study completed.
    evaluation.md     settings and the table (also printed)
    best_mse.png      median best MSE against generation, one panel per problem

Input errors (unknown method or problem, bad seeds or budget, missing
checkpoint or package, unreadable CSV) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import file_io
import parallel
import peers
from evaluation import (Budget, EvaluationInputError, NeuralOptions, Task, add_budget_arguments,
                        add_neural_arguments, aggregate, budget_from_args, model_record,
                        neural_options_from_args, parse_seeds, prepare_output_dir, require_neural_module,
                        resolve_tasks, run_basic, save_report, share_batch_wall, warm_up)
from evaluation_report import markdown_report, plot_best_mse, results_table
from progress import Progress

METHODS = ("basic", "neural", "gplearn", "operon")
CPU_METHODS = ("basic", "gplearn", "operon")  # run in the worker pool; neural runs batched on its device
DATA_NOTE = "problem.sample(seed=seed), the problem's 50 points (a CSV: its own points for every seed)"
SOLVED_NOTE = ("problems.is_solved on the final expression in ttsr syntax: NMSE < 1e-10 on 1000 fresh points "
               "(a CSV: on its own points)")


@dataclass
class Plan:
    """Everything a study needs, checked before the first run."""

    methods: list[str]
    tasks: list[Task]
    seeds: list[int]
    budget: Budget
    neural: NeuralOptions | None
    gplearn_population: int


# --------------------------------------------------------------------------
# Running


def run_one(job: tuple) -> dict:
    """One CPU run: (method, task, seed, budget, gplearn population) -> run record."""
    method, task, seed, budget, gplearn_population = job
    if method == "basic":
        return run_basic(task, seed, budget)
    if method == "gplearn":
        return peers.run_gplearn(task, seed, budget, gplearn_population)
    return peers.run_operon(task, seed, budget)


def run_cpu_methods(plan: Plan, workers: int, progress: bool) -> list[dict]:
    """Records of every basic / gplearn / operon run, in (method, problem, seed) order."""
    jobs = [(method, task, seed, plan.budget, plan.gplearn_population)
            for method in plan.methods if method in CPU_METHODS for task in plan.tasks for seed in plan.seeds]
    if not jobs:
        return []
    # Slow peers first for a better load balance; the order of the results is restored below.
    ordered = sorted(range(len(jobs)), key=lambda i: jobs[i][0] == "basic")
    records: dict[int, dict] = {}
    with Progress(len(jobs), "runs", disable=not progress) as bar:
        for index, record in _finished_runs(jobs, ordered, max(1, min(workers, len(jobs)))):
            records[index] = record
            bar.update(1)
    return [records[index] for index in range(len(jobs))]


def _finished_runs(jobs: list[tuple], order: list[int], workers: int):
    """Yield (job index, record) as runs finish, in this process or in a pool."""
    items = [(index, jobs[index]) for index in order]
    if workers == 1:
        warm_up()
        yield from map(_indexed_run, items)
        return
    with parallel.pool(workers, initializer=warm_up) as pool:
        yield from pool.imap_unordered(_indexed_run, items)


def _indexed_run(item: tuple[int, tuple]) -> tuple[int, dict]:
    index, job = item
    return index, run_one(job)


def run_neural(plan: Plan, progress: bool) -> tuple[list[dict], float]:
    """(records, wall seconds) of all NeuralSR runs: one BatchedNeuralSR.fit_many call."""
    from batched_neural_sr import BatchedNeuralSR  # lazy: torch and the model only for neural runs

    pairs = [(task, seed) for task in plan.tasks for seed in plan.seeds]
    searcher = BatchedNeuralSR(batch_size=plan.neural.batch_size, **plan.neural.neural_params(plan.budget))
    start = time.perf_counter()
    models = searcher.fit_many([task.data(seed) for task, seed in pairs], [seed for _, seed in pairs],
                               progress=progress)
    wall = time.perf_counter() - start
    records = [model_record("neural", task, seed, model) for (task, seed), model in zip(pairs, models)]
    return share_batch_wall(records, wall), wall


def run_evaluation(plan: Plan, workers: int = 1, progress: bool = True) -> dict:
    """Run the study; the report (runs, aggregates, totals, settings, timing) without provenance."""
    start = time.perf_counter()
    records = run_cpu_methods(plan, workers, progress)
    cpu_wall = time.perf_counter() - start
    methods = {}
    for method in plan.methods:
        if method in CPU_METHODS:
            seconds = sum(record["seconds"] for record in records if record["method"] == method)
            methods[method] = {"seconds": seconds, "timing": "sum of its runs' fit times, one core each"}
    if "neural" in plan.methods:
        neural_records, neural_wall = run_neural(plan, progress)
        records += neural_records
        methods["neural"] = {"seconds": neural_wall, "timing": "one batched fit_many call for all its runs"}
    order = {method: index for index, method in enumerate(plan.methods)}
    records.sort(key=lambda record: order[record["method"]])  # stable: problem and seed order kept
    for method, info in methods.items():
        info["runs"] = sum(record["method"] == method for record in records)
        info["seconds_per_run"] = info["seconds"] / max(1, info["runs"])
    per_problem, totals = aggregate(records)
    return {
        "settings": settings_of(plan, workers),
        "methods": {method: methods[method] for method in plan.methods},
        "cpu_phase_wall_seconds": cpu_wall,
        "aggregates": per_problem,
        "totals": totals,
        "runs": records,
    }


def settings_of(plan: Plan, workers: int) -> dict:
    """The resolved settings recorded in the report."""
    settings = {
        "methods": plan.methods,
        "problems": [task.name for task in plan.tasks],
        "problem_sources": {task.name: task.source for task in plan.tasks},
        "seeds": plan.seeds,
        "budget": {**plan.budget.search_params(), "evaluations": plan.budget.evaluations},
        "data": DATA_NOTE,
        "solved": SOLVED_NOTE,
        "workers": workers,
    }
    if "gplearn" in plan.methods:
        population, generations = peers.gplearn_budget(plan.budget.evaluations, plan.gplearn_population)
        settings["gplearn"] = {"population_size": population, "generations": generations,
                               "evaluations": population * generations,
                               "note": "function_set add,sub,mul,div, n_jobs 1, random_state seed, other defaults"}
    if "operon" in plan.methods:
        settings["operon"] = {"note": f"population_size {plan.budget.population_size}, generations "
                                      f"{plan.budget.num_generations}, max_evaluations {plan.budget.evaluations}, "
                                      f"symbols {peers.OPERON_SYMBOLS}, n_threads 1, random_state seed"}
    if "neural" in plan.methods:
        settings["neural"] = {**vars(plan.neural), "checkpoint": plan.neural.resolved_checkpoint()}
    return settings


# --------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods: basic (BasicSR), neural (NeuralSR, needs a checkpoint), "
                             "gplearn, operon (peers, when installed) (default: basic,neural when the shipped "
                             "checkpoint models/neuralsr-tiny exists, else basic)")
    parser.add_argument("--problems", default="harder",
                        help="comma-separated problem names, tiers (ultra, simple, harder, extra, all) and/or CSV "
                             "files (columns x0..xk then y) (default: harder)")
    parser.add_argument("--seeds", default="3",
                        help="a count N (seeds 0..N-1) or a comma-separated list such as 4,7 (one seed: 7,) (default: 3)")
    add_budget_arguments(parser)
    parser.add_argument("--gplearn_population", type=int, default=peers.GPLEARN_POPULATION,
                        help="gplearn's population at most; its generations make up the equal evaluation budget "
                             f"(default: {peers.GPLEARN_POPULATION})")
    add_neural_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=NeuralOptions.batch_size,
                        help=f"NeuralSR populations per model call (default: {NeuralOptions.batch_size})")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes for the basic, gplearn and operon runs; results do not depend on it (default: 1)")
    parser.add_argument("--output_dir", default=None,
                        help="folder for evaluation.json, evaluation.md and best_mse.png "
                             "(default: results/evaluation_<UTC time>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_methods(text: str) -> list[str]:
    """Methods in the order given, each once; unknown or uninstalled ones raise EvaluationInputError."""
    methods = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise EvaluationInputError(f"unknown method {', '.join(map(repr, unknown)) or repr(text)}; "
                                   f"methods: {', '.join(METHODS)}")
    for method in methods:
        if method in peers.PACKAGES:
            peers.require(method)
    return methods


def plan_from_args(args: argparse.Namespace) -> Plan:
    """A checked Plan; EvaluationInputError on any bad input, before any run starts."""
    if args.methods is None:  # neural only once a checkpoint is shipped, so the bare command always runs
        args.methods = "basic,neural" if (Path(__file__).resolve().parent / "models" / "neuralsr-tiny").is_dir() \
            else "basic"
    methods = parse_methods(args.methods)
    tasks = resolve_tasks(args.problems)
    seeds = parse_seeds(args.seeds)
    budget = budget_from_args(args)
    if args.workers < 1 or args.gplearn_population < 1:
        raise EvaluationInputError("--workers and --gplearn_population must be >= 1")
    neural = None
    if "neural" in methods:
        neural = neural_options_from_args(args)
        require_neural_module("batched_neural_sr")  # fail now, not after the CPU runs
    return Plan(methods, tasks, seeds, budget, neural, args.gplearn_population)


def write_outputs(report: dict, output_dir: Path) -> list[Path]:
    """Plot, markdown, then the JSON last (its presence means the study completed)."""
    written = []
    budget = report["settings"]["budget"]
    if plot_best_mse(report["runs"], budget["population_size"], budget["num_generations"], output_dir / "best_mse.png"):
        written.append(output_dir / "best_mse.png")
    with file_io.atomic_open(output_dir / "evaluation.md", "w") as handle:
        handle.write(markdown_report(report))
    written.append(output_dir / "evaluation.md")
    written.append(save_report(output_dir / "evaluation.json", report))
    return written


def _default_output_dir() -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"evaluation_{stamp}"


def _neural_on_cpu(device: str | None) -> bool:
    """Whether NeuralSR's model will run on the CPU (neural_sr.resolve_device, as the Proposer decides)."""
    from neural_sr import resolve_device

    return resolve_device(device).type == "cpu"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = plan_from_args(args)
        output_dir = prepare_output_dir(args.output_dir if args.output_dir else _default_output_dir())
    except EvaluationInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = len(plan.methods) * len(plan.tasks) * len(plan.seeds)
    print(f"{runs} runs: {', '.join(plan.methods)} x {len(plan.tasks)} problems x seeds "
          f"{', '.join(map(str, plan.seeds))}; population {plan.budget.population_size} x "
          f"{plan.budget.num_generations} generations ({plan.budget.evaluations:,} evaluations)", flush=True)
    if plan.neural is not None and _neural_on_cpu(plan.neural.device):
        print("note: NeuralSR runs on the CPU (no CUDA device): about 0.3 s per problem-generation on a 2-core "
              "laptop, so a long budget takes a while; --num_generations and --seeds bound it", flush=True)
    report = run_evaluation(plan, args.workers, progress=not args.quiet)
    parameters = {**vars(args), "output_dir": str(output_dir)}
    recorded_argv = None if argv is None else ["simple_evaluation.py", *argv]
    report = {"metadata": file_io.make_metadata(parameters, plan.seeds, argv=recorded_argv), **report}
    written = write_outputs(report, output_dir)
    print()
    print(results_table(report["aggregates"], report["totals"]))
    print()
    print(" | ".join(f"{row['method']}: solved {row['solved']}/{row['runs']}, "
                     f"{report['methods'][row['method']]['seconds_per_run']:.3g} s/run"
                     for row in report["totals"]))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
