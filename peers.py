"""Peer symbolic-regression methods run at an equal budget: gplearn and Operon.

Both packages are optional and imported only when a run asks for them;
`require(method)` turns a missing one into one line for the CLI.

Equal budgets, in evaluations (individuals scored). BasicSR with population P
and G generations scores E = P * (G + 1) individuals (evaluation.Budget).

- gplearn scores its whole population every generation, initial one
  included, and works best with a large population. It gets population
  min(gplearn_population, E) (default 1000, bench/bench_search_quality.py's
  setting) and max(1, round(E / population)) generations, so
  population * generations is within half a generation of E: the issue's
  20 x 1000 study (E = 20,020) gives gplearn 1000 x 20 = 20,000. Other
  settings as the benchmark: function_set add/sub/mul/div, n_jobs=1,
  random_state=seed, gplearn's defaults otherwise (its early stop at a mean
  absolute error of 0 included). Evaluations reported = population x
  generations run.
- Operon (pyoperon.sklearn.SymbolicRegressor) gets population_size=P,
  generations=G and max_evaluations=E, max_length / max_depth = max_size /
  max_depth, symbols add,sub,mul,div,constant,variable, n_threads=1,
  random_state=seed; Operon's defaults otherwise (it fits constants and a
  linear scaling). Evaluations reported = Operon's own evaluation count.

Judging. Each final program is written in ttsr syntax and judged by the same
success test as BasicSR (`solved`); `solved_own_semantics` judges the peer's
own predictions instead (gplearn's protected division returns 1 where
|d| <= 0.001, and gplearn finds programs exact only under that rule). A
program that does not parse counts as unsolved; its text and the parse error
are kept. Best-MSE curves: gplearn's is the training MSE of each
generation's best program (by gplearn's own fitness; gplearn keeps no
elite, so it need not decrease); Operon exposes none.
"""

from __future__ import annotations

import importlib
import time
import warnings
from functools import lru_cache

import numpy as np

from evaluation import Budget, EvaluationInputError, Task, make_record
from expression_parser import ParseError, parse

GPLEARN_FUNCTIONS = ("add", "sub", "mul", "div")
GPLEARN_POPULATION = 1000
OPERON_SYMBOLS = "add,sub,mul,div,constant,variable"
OPERON_PRECISION = 17  # digits of constants in Operon's infix output: the full double

# method -> (module imported lazily, how to install it)
PACKAGES = {
    "gplearn": ("gplearn.genetic", "pip install gplearn"),
    "operon": ("pyoperon.sklearn", "pip install pyoperon"),
}


def available(method: str) -> bool:
    """True when the peer's package imports."""
    try:
        importlib.import_module(PACKAGES[method][0])
    except ImportError:
        return False
    return True


def require(method: str) -> None:
    """EvaluationInputError (one line) when the peer's package is not installed."""
    if not available(method):
        module, install = PACKAGES[method]
        raise EvaluationInputError(f"method {method!r} needs {module.split('.')[0]}, which is not installed ({install})")


# --------------------------------------------------------------------------
# gplearn


def gplearn_budget(evaluations: int, population: int = GPLEARN_POPULATION) -> tuple[int, int]:
    """(population, generations) for gplearn with about `evaluations` evaluations (module docstring)."""
    population = max(1, min(population, evaluations))
    return population, max(1, round(evaluations / population))


def gplearn_program_to_text(program) -> str:
    """A gplearn `_Program` (or its node list) as function-call text in ttsr's syntax.

    Functions keep their names (add, sub, mul, div: aliases the parser
    knows), feature i becomes `xi` and constants are written with repr (full
    precision; gplearn's own printing rounds them to 3 decimals).
    """
    nodes = getattr(program, "program", program)
    parts: list[str] = []
    pending: list[int] = []  # arguments still expected by each open call
    for node in nodes:
        if hasattr(node, "arity"):
            parts.append(f"{node.name}(")
            pending.append(node.arity)
            continue
        parts.append(f"x{node}" if isinstance(node, int) else repr(float(node)))
        while pending:
            pending[-1] -= 1
            if pending[-1] > 0:
                parts.append(", ")
                break
            pending.pop()
            parts.append(")")
    return "".join(parts)


def parse_peer_text(text: str) -> tuple[tuple | None, str | None]:
    """(expression tuple or None, parse error or None) of a peer's program text."""
    try:
        return parse(text), None
    except ParseError as error:
        return None, str(error)


def gplearn_expression(program) -> tuple[tuple | None, str, str | None]:
    """(expression tuple or None, our text, parse error or None)."""
    text = gplearn_program_to_text(program)
    expression, error = parse_peer_text(text)
    return expression, text, error


@lru_cache(maxsize=1)
def _recording_regressor():
    """gplearn's SymbolicRegressor, remembering each generation's best program.

    By the end of a fit gplearn has dropped the programs of earlier
    generations that left no offspring, so their best cannot be looked up
    afterwards. With verbose on, gplearn calls `_verbose_reporter` after
    every generation (and once, without details, before the first): we
    record the generation's best there instead of printing.
    """
    from gplearn.genetic import SymbolicRegressor

    class RecordingSymbolicRegressor(SymbolicRegressor):
        def _verbose_reporter(self, run_details=None):
            if run_details is None:
                self.generation_best_ = []
                return
            population = self._programs[-1]
            fitness = [program.raw_fitness_ for program in population]
            pick = np.argmax if self._metric.greater_is_better else np.argmin
            self.generation_best_.append(population[int(pick(fitness))])

    return RecordingSymbolicRegressor


def _training_mse(predictions: np.ndarray, y: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        mse = float(np.mean((np.asarray(predictions, dtype=np.float64) - y) ** 2))
    return mse if np.isfinite(mse) else float("inf")


def run_gplearn(task: Task, seed: int, budget: Budget, population: int = GPLEARN_POPULATION) -> dict:
    """One gplearn run at the equal budget; a run record (peer fields included)."""
    X, y = task.data(seed)
    population, generations = gplearn_budget(budget.evaluations, population)
    model = _recording_regressor()(
        population_size=population, generations=generations, function_set=GPLEARN_FUNCTIONS,
        n_jobs=1, random_state=seed, verbose=1,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    seconds = time.perf_counter() - start
    history = [_training_mse(program.execute(X), y) for program in model.generation_best_]
    ran = len(model.run_details_["generation"])
    if len(history) != ran:  # the private hook changed: report no curve rather than a wrong one
        history = None
    expression, text, error = gplearn_expression(model._program)
    return make_record(
        "gplearn", task, seed, expression=expression, mse=_training_mse(model.predict(X), y), generations=ran,
        evaluations=population * ran, population_size=population, seconds=seconds, history=history,
        solved=task.solved(expression), size=model._program.length_,
        solved_own_semantics=task.solved_by_predictions(model.predict),
        native_expression=str(model._program), parse_error=error,
    )


# --------------------------------------------------------------------------
# Operon


def run_operon(task: Task, seed: int, budget: Budget) -> dict:
    """One Operon run at the equal budget; a run record (peer fields included)."""
    from pyoperon.sklearn import SymbolicRegressor

    X, y = task.data(seed)
    model = SymbolicRegressor(
        allowed_symbols=OPERON_SYMBOLS, population_size=budget.population_size,
        generations=budget.num_generations, max_evaluations=budget.evaluations,
        max_length=budget.max_size, max_depth=budget.max_depth, n_threads=1, random_state=seed,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    seconds = time.perf_counter() - start
    names = [f"x{i}" for i in range(X.shape[1])]
    text = model.get_model_string(model.model_, OPERON_PRECISION, names=names)
    expression, error = parse_peer_text(text)
    return make_record(
        "operon", task, seed, expression=expression, mse=_training_mse(model.predict(X), y),
        generations=model.stats_["generations"], evaluations=model.stats_["evaluation_count"],
        population_size=budget.population_size, seconds=seconds, history=None,
        solved=task.solved(expression), size=model.stats_["model_length"],
        solved_own_semantics=task.solved_by_predictions(model.predict),
        native_expression=text, parse_error=error,
    )

