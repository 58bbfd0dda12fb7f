"""Evaluation runs and their metrics: one record per (method, problem, seed).

Shared by simple_evaluation.py (many runs; JSON, markdown and plot) and
neural_comparison.py (one head-to-head), so both count generations,
evaluations and "solved" the same way.

Tasks. A task is a benchmark problem (by name or tier, `problems.py`) or a
CSV data set (`csv_data.load_csv`). A benchmark run with seed s fits
`problem.sample(seed=s)` (the problem's 50 points, different per seed, as in
bench/bench_search_quality.py) and is solved when `problems.is_solved` holds
(NMSE < 1e-10 on 1000 fresh points). A CSV has no ground truth: every seed
fits the file's points and "solved" means NMSE < 1e-10 on those points.

Budget. `population_size` x `num_generations` generations after the initial
population, i.e. `population_size * (num_generations + 1)` evaluations for
BasicSR and NeuralSR (every generation scores exactly population_size
individuals, cached or not). Peers get the same number of evaluations
(mapping in peers.py).

Run record (a dict; `save_report` writes it as JSON, non-finite floats as null):

    method, problem, seed
    solved                 the success test above, on the final expression in
                           ttsr syntax (so every method is judged by one evaluator)
    expression             final expression in ttsr syntax; null when a peer's
                           program could not be read
    size                   its node count (a peer's own count when unreadable)
    mse                    final best MSE on the run's training points
    generations            generations run after the initial population
                           (gplearn: populations evaluated; Operon: its count)
    evaluations            individuals scored
    population_size        individuals per generation of this method: after
                           generation g a run has spent population_size * (g + 1)
                           evaluations (used to align curves of methods)
    generations_to_solve   solved runs: the first generation whose best MSE
                           reached max(final MSE, EARLY_STOP_MSE), i.e. where the
                           final accuracy was first reached; null otherwise or
                           without a history
    evaluations_to_solve   evaluations counted up to that generation (BasicSR and
                           NeuralSR report them: restarts also score the elite's
                           neighbours); else population_size * (generations_to_solve + 1)
    seconds                wall time of the fit; seconds_per_generation = seconds
                           / max(1, generations). Runs batched together
                           (simple_evaluation's NeuralSR) share one wall time:
                           each gets the share of its generations
                           (`share_batch_wall`), and its own start-to-finish
                           time is latency_seconds
    best_mse_history       best MSE per generation (index = generation), null
                           when the method does not expose it (Operon)
    neural runs also:      well_formed_rate, n_proposals, n_neural, n_fallback,
                           model_seconds (the fitted NeuralSR's attributes)
    peer runs also:        solved_own_semantics (the success test on the peer's
                           own predictions), native_expression, parse_error

Aggregate (per method and problem; `problem` = "ALL" for a method's total):
runs, solved, solve_rate, median_generations_to_solve,
median_evaluations_to_solve (over solved runs with a history), mean_mse,
median_mse (all runs), mean_seconds (per run), seconds_per_generation
(total seconds / total generations), mean_size, median_size,
well_formed_rate (neural: pooled, sum of well-formed / sum of proposals;
null for other methods).

Report file (`save_report`, JSON): format "ttsr-evaluation", version,
metadata (file_io.make_metadata: command, parameters, seed, code_version,
timestamp, ...), settings (methods, problems, problem_sources, seeds, budget
with evaluations, data, solved, workers, and per peer or neural method its
resolved settings), methods (per method: runs, seconds, seconds_per_run and
`timing`, how the seconds were measured), cpu_phase_wall_seconds,
aggregates, totals (the per-method aggregates) and runs (every record).
neural_comparison.py writes the same layout without methods.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import expressions as ex
import file_io
import problems
from basic_sr import BasicSR
from csv_data import CSVDataError, load_csv

EARLY_STOP_MSE = 3e-16  # BasicSR's default early_stop_threshold
ALL_PROBLEMS = "ALL"
REPORT_FORMAT = "ttsr-evaluation"
REPORT_VERSION = 1


class EvaluationInputError(ValueError):
    """Bad user input (method, problem, seeds, budget, checkpoint): one line, exit 2."""


# --------------------------------------------------------------------------
# Tasks and seeds


@dataclass(frozen=True, eq=False)
class Task:
    """A benchmark problem or a CSV data set, as the evaluation sees it."""

    name: str
    problem: problems.Problem | None = None
    X: np.ndarray | None = None  # CSV tasks only
    y: np.ndarray | None = None
    source: str = "benchmark"  # or the CSV path

    def data(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Training points for the run with this seed."""
        return self.problem.sample(seed=seed) if self.problem is not None else (self.X, self.y)

    def solved(self, expression: tuple | None) -> bool:
        """The success test on an expression tuple (None: not solved)."""
        if expression is None:
            return False
        if self.problem is not None:
            return problems.is_solved(expression, self.problem)
        return self.solved_by_predictions(lambda X: ex.evaluate(expression, X))

    def solved_by_predictions(self, predict) -> bool:
        """The success test on a model's own predictions."""
        if self.problem is not None:
            return problems.is_solved_by_predictions(predict, self.problem)
        with np.errstate(all="ignore"):
            predictions = np.asarray(predict(self.X), dtype=np.float64)
        return problems.nmse(predictions, self.y) < problems.NMSE_THRESHOLD


def resolve_tasks(spec: str) -> list[Task]:
    """Tasks for 'name,tier,file.csv,...', each once, in order."""
    tasks: dict[str, Task] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.lower().endswith(".csv") or Path(item).is_file():
            try:
                X, y = load_csv(item)
            except CSVDataError as error:
                raise EvaluationInputError(str(error)) from None
            name = Path(item).name  # with its suffix: never the name of a benchmark problem
            tasks.setdefault(name, Task(name, X=X, y=y, source=item))
            continue
        try:
            chosen = problems.resolve_problems([item])
        except problems.UnknownProblemError as error:
            raise EvaluationInputError(str(error)) from None
        for problem in chosen:
            tasks.setdefault(problem.name, Task(problem.name, problem=problem))
    if not tasks:
        raise EvaluationInputError(f"no problems selected by {spec!r}")
    return list(tasks.values())


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '4,7' -> [4, 7]; '7,' -> [7]."""
    usage = f"--seeds takes a count (3 means 0,1,2) or a comma-separated list (4,7 or 7,), got {text!r}"
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise EvaluationInputError(usage) from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise EvaluationInputError(usage + " (non-negative, distinct, at least one)")
    return seeds


# --------------------------------------------------------------------------
# Budget and neural settings (flags shared by both evaluation scripts)


@dataclass(frozen=True)
class Budget:
    """The search settings every method gets; defaults are the issue's study (20 x 1000)."""

    population_size: int = 20
    num_generations: int = 1000
    max_size: int = 25
    max_depth: int = 10

    @property
    def evaluations(self) -> int:
        """Individuals BasicSR scores in a full run (the initial population included)."""
        return self.population_size * (self.num_generations + 1)

    def search_params(self) -> dict:
        """BasicSR / NeuralSR constructor parameters (no seed)."""
        return asdict(self)

    def check(self) -> None:
        """Raise EvaluationInputError when BasicSR would refuse these settings."""
        try:
            BasicSR(**self.search_params())
        except ValueError as error:
            raise EvaluationInputError(str(error)) from None


@dataclass(frozen=True)
class NeuralOptions:
    """How NeuralSR samples: checkpoint (None: neural_sr.DEFAULT_CHECKPOINT) and decoding."""

    checkpoint: str | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    device: str | None = None
    batch_size: int = 256
    time_limit: float | None = None  # seconds for the whole batched NeuralSR call; None: no limit
    constrained: bool = False  # grammar-constrained decoding (NeuralSR's `constrained`)

    def resolved_checkpoint(self) -> str:
        """The checkpoint folder; EvaluationInputError when it does not exist.

        Checked before any run starts, so a typo does not cost a whole study.
        """
        if self.checkpoint is None:
            path = Path(require_neural_module("neural_sr").DEFAULT_CHECKPOINT)
        else:
            path = Path(self.checkpoint)
        if not path.is_dir():
            raise EvaluationInputError(
                f"checkpoint {path}: not found (a folder written by train.py; pass --checkpoint, "
                f"or leave out the neural method)"
            )
        return str(path)

    def neural_params(self, budget: Budget) -> dict:
        """NeuralSR constructor parameters but the seed (BatchedNeuralSR adds batch_size)."""
        return {
            **budget.search_params(),
            "checkpoint": self.resolved_checkpoint(),
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "device": self.device,
            "time_limit": self.time_limit,
            "constrained": self.constrained,
        }


def require_neural_module(name: str):
    """Import a NeuralSR module (neural_sr, batched_neural_sr) lazily: torch only for neural runs.

    Called while checking the input, so a broken install fails before any run.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise EvaluationInputError(f"the neural method needs {name}.py ({error})") from None


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """--population_size, --num_generations, --max_size, --max_depth."""
    budget = Budget()
    parser.add_argument("--population_size", type=int, default=budget.population_size,
                        help="individuals per generation, the same for every method (default: %(default)s)")
    parser.add_argument("--num_generations", type=int, default=budget.num_generations,
                        help="generations after the initial population (a run stops earlier when "
                             "its best MSE reaches 3e-16); the evaluation budget is "
                             "population_size x (num_generations + 1) (default: %(default)s)")
    parser.add_argument("--max_size", type=int, default=budget.max_size, help="maximum expression size in nodes (default: %(default)s)")
    parser.add_argument("--max_depth", type=int, default=budget.max_depth, help="maximum expression depth (default: %(default)s)")


def add_neural_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --temperature, --top_k, --top_p, --device."""
    options = NeuralOptions()
    parser.add_argument("--checkpoint", default=None,
                        help="NeuralSR checkpoint folder (default: neural_sr.DEFAULT_CHECKPOINT, models/neuralsr-tiny)")
    parser.add_argument("--temperature", type=float, default=options.temperature, help="NeuralSR sampling temperature (default: %(default)s)")
    parser.add_argument("--top_k", type=int, default=options.top_k, help="NeuralSR top-k sampling, 0: off (default: %(default)s)")
    parser.add_argument("--top_p", type=float, default=options.top_p, help="NeuralSR nucleus (top-p) sampling, 1: off (default: %(default)s)")
    parser.add_argument("--device", default=None, help="device for the model: cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--constrained", action="store_true",
                        help="NeuralSR decodes under the expression grammar: every proposal well-formed, within "
                             "max_size, of the search's symbols (default: free sampling, as trained)")
    parser.add_argument("--neural_time_limit", type=float, default=None, metavar="SECONDS",
                        help="a safety net for time-boxed studies: NeuralSR runs still going this long after the "
                             "batched call began stop there, unsolved (their generations show it); default: none")


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The checked Budget of parsed arguments."""
    budget = Budget(args.population_size, args.num_generations, args.max_size, args.max_depth)
    budget.check()
    return budget


def neural_options_from_args(args: argparse.Namespace) -> NeuralOptions:
    """NeuralOptions of parsed arguments (batch_size when the script has it); the checkpoint is checked."""
    options = NeuralOptions(args.checkpoint, args.temperature, args.top_k, args.top_p, args.device,
                            getattr(args, "batch_size", NeuralOptions.batch_size),
                            getattr(args, "neural_time_limit", None), bool(getattr(args, "constrained", False)))
    # NaN passes every comparison, so each float flag is checked with math.isfinite first.
    if not (math.isfinite(options.temperature) and options.temperature >= 0):
        raise EvaluationInputError(f"--temperature must be a finite number >= 0, got {options.temperature:g}")
    if options.top_k < 0:
        raise EvaluationInputError(f"--top_k must be >= 0 (0: off), got {options.top_k}")
    if not (math.isfinite(options.top_p) and 0 < options.top_p <= 1):
        raise EvaluationInputError(f"--top_p must be in (0, 1] (1: off), got {options.top_p:g}")
    if options.batch_size < 1:
        raise EvaluationInputError(f"--batch_size must be >= 1, got {options.batch_size}")
    if options.device is not None:
        from neural_sr import resolve_device

        try:
            resolve_device(options.device)
        except ValueError as error:
            raise EvaluationInputError(f"--device: {error}") from None
    if options.time_limit is not None and not (math.isfinite(options.time_limit) and options.time_limit > 0):
        raise EvaluationInputError(f"--neural_time_limit must be a finite number > 0 seconds, "
                                   f"got {options.time_limit:g}")
    checkpoint = options.resolved_checkpoint()
    # Load it now (neural_sr caches the loaded model for the runs): a damaged checkpoint is a one-line
    # error before any run starts, not a traceback after the CPU methods' runs.
    neural_sr = require_neural_module("neural_sr")
    try:
        neural_sr.load_proposer(checkpoint, options.device)
    except neural_sr.CheckpointError as error:
        raise EvaluationInputError(str(error)) from None
    return options


# --------------------------------------------------------------------------
# Run records


def generations_to_solve(history: list[float], final_mse: float, threshold: float = EARLY_STOP_MSE) -> int | None:
    """First generation whose best MSE reached max(final MSE, threshold); None without a history."""
    if not history:
        return None
    goal = max(final_mse, threshold)
    return next((generation for generation, mse in enumerate(history) if mse <= goal), len(history) - 1)


def make_record(method: str, task: Task, seed: int, *, expression: tuple | None, mse: float, generations: int,
                evaluations: int, population_size: int, seconds: float, history: list[float] | None,
                solved: bool, size: int | None = None, evaluations_history: list[int] | None = None,
                **extra) -> dict:
    """A run record (fields in the module docstring); `extra` adds method-specific fields.

    `evaluations_history`: evaluations counted by the end of each generation,
    where the method reports them (BasicSR and NeuralSR: restarts also score
    the elite's neighbours); else population_size per generation.
    """
    to_solve = generations_to_solve(history, mse) if solved and history else None
    if to_solve is None:
        evaluations_to_solve = None
    elif evaluations_history:
        evaluations_to_solve = int(evaluations_history[to_solve])
    else:
        evaluations_to_solve = int(population_size) * (to_solve + 1)
    record = {
        "method": method,
        "problem": task.name,
        "seed": int(seed),
        "solved": bool(solved),
        "expression": None if expression is None else ex.to_string(expression),
        "size": len(expression) if expression is not None else size,
        "mse": float(mse),
        "generations": int(generations),
        "evaluations": int(evaluations),
        "population_size": int(population_size),
        "generations_to_solve": to_solve,
        "evaluations_to_solve": evaluations_to_solve,
        "seconds": float(seconds),
        "seconds_per_generation": float(seconds) / max(1, int(generations)),
        "best_mse_history": None if history is None else [float(mse) for mse in history],
    }
    record.update(extra)
    return record


def share_batch_wall(records: list[dict], wall: float) -> list[dict]:
    """Records of runs fitted together in one batched call, each charged its share of the call's `wall` seconds.

    A run's share is proportional to its generations (a problem-generation is
    the unit a batched step serves), so the shares add up to `wall`: mean
    seconds per run and seconds per generation then measure cost, as they do
    for runs fitted one per core. The run's own start-to-finish time (which
    overlaps the others') is kept as latency_seconds.
    """
    generations = [max(1, record["generations"]) for record in records]
    total = sum(generations)
    for record, count in zip(records, generations):
        record["latency_seconds"] = record["seconds"]
        record["seconds"] = float(wall) * count / total
        record["seconds_per_generation"] = record["seconds"] / count
    return records


def model_record(method: str, task: Task, seed: int, model: BasicSR) -> dict:
    """The record of a fitted BasicSR or NeuralSR (method 'neural' adds the model's counters)."""
    extra = {}
    if method == "neural":
        extra = {
            "well_formed_rate": float(model.well_formed_rate_),
            "n_proposals": int(model.n_proposals_),
            "n_neural": int(model.n_neural_),
            "n_fallback": int(model.n_fallback_),
            "model_seconds": float(model.model_seconds_),
        }
    return make_record(
        method, task, seed,
        expression=model.best_tree_, mse=model.best_mse_, generations=model.n_generations_,
        evaluations=model.n_evaluations_, population_size=model.population_size, seconds=model.fit_time_,
        history=model.best_mse_history_, solved=task.solved(model.best_tree_),
        evaluations_history=model.evaluations_history_, **extra,
    )


def warm_up() -> None:
    """Load the compiled fitness kernel before any run is timed.

    numba compiles it, or loads it from its cache, on first use: 0.5 s to
    several seconds that would otherwise be billed to the first run of each
    process.
    """
    X = np.linspace(1.0, 2.0, 8)[:, None]
    BasicSR(population_size=4, num_generations=1, seed=0).fit(X, X[:, 0])


def run_basic(task: Task, seed: int, budget: Budget) -> dict:
    """One seeded BasicSR run (no time limit: the same result on any machine or worker)."""
    X, y = task.data(seed)
    model = BasicSR(**budget.search_params(), seed=seed).fit(X, y)
    return model_record("basic", task, seed, model)


# --------------------------------------------------------------------------
# Aggregates


def _median(values: list) -> float | None:
    return statistics.median(values) if values else None


def _mean(values: list) -> float | None:
    return statistics.fmean(values) if values else None


def summarize_runs(method: str, problem: str, runs: list[dict]) -> dict:
    """The aggregate of one method's runs (fields in the module docstring)."""
    solved = [run for run in runs if run["solved"]]
    timed = [run for run in solved if run["generations_to_solve"] is not None]
    mses = [math.inf if run["mse"] is None else run["mse"] for run in runs]
    sizes = [run["size"] for run in runs if run["size"] is not None]
    proposals = sum(run.get("n_proposals", 0) for run in runs)
    well_formed = sum(run["well_formed_rate"] * run["n_proposals"] for run in runs if "n_proposals" in run)
    return {
        "method": method,
        "problem": problem,
        "runs": len(runs),
        "solved": len(solved),
        "solve_rate": len(solved) / len(runs) if runs else None,
        "median_generations_to_solve": _median([run["generations_to_solve"] for run in timed]),
        "median_evaluations_to_solve": _median([run["evaluations_to_solve"] for run in timed]),
        "mean_mse": _mean(mses),
        "median_mse": _median(mses),
        "mean_seconds": _mean([run["seconds"] for run in runs]),
        "seconds_per_generation": sum(run["seconds"] for run in runs) / max(1, sum(run["generations"] for run in runs)),
        "mean_size": _mean(sizes),
        "median_size": _median(sizes),
        "well_formed_rate": well_formed / proposals if proposals else None,
    }


def aggregate(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(per method and problem, per method over all problems), in the records' order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    by_method: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault((record["method"], record["problem"]), []).append(record)
        by_method.setdefault(record["method"], []).append(record)
    per_problem = [summarize_runs(method, problem, runs) for (method, problem), runs in groups.items()]
    totals = [summarize_runs(method, ALL_PROBLEMS, runs) for method, runs in by_method.items()]
    return per_problem, totals


# --------------------------------------------------------------------------
# The results file


def json_safe(value):
    """Plain JSON values: non-finite floats become None, numpy scalars and tuples plain ones."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def prepare_output_dir(path, flag: str = "--output_dir") -> Path:
    """Create the output folder now, before any run; EvaluationInputError (one line naming it) when it cannot be."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = "a file is in the way" if isinstance(error, (FileExistsError, NotADirectoryError)) else error.strerror
        raise EvaluationInputError(f"{flag} {folder}: cannot create the folder ({reason})") from None
    return folder


def prepare_output_file(path, flag: str = "--json") -> Path:
    """Check an output file's place now, before any run (file_io.check_writable: not a folder, its folder
    created and writable); EvaluationInputError (one line naming the flag and the path) otherwise."""
    try:
        return file_io.check_writable(path)
    except file_io.OutputError as error:
        raise EvaluationInputError(f"{flag} {error}") from None


def save_report(path, report: dict) -> Path:
    """Atomically write an evaluation report as JSON (format and version added)."""
    payload = {"format": REPORT_FORMAT, "version": REPORT_VERSION, **report}
    with file_io.atomic_open(path, "w") as handle:
        json.dump(json_safe(payload), handle, indent=1, allow_nan=False)
        handle.write("\n")
    return Path(path)


def load_report(path) -> dict:
    """Read a report written by `save_report`; DataFileError when it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise file_io.DataFileError(f"{path}: cannot read an evaluation report ({error})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise file_io.DataFileError(f"{path}: not a {REPORT_FORMAT} file")
    if report.get("version", 0) > REPORT_VERSION:
        raise file_io.DataFileError(f"{path}: report version {report['version']} is newer than this code")
    return report
