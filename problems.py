"""The benchmark problems: 21 rows in four tiers, for evaluation only.

These formulas are never training data: the data pipeline calls
`matches_benchmark` to drop generated expressions equivalent to any of them.

Rows and names. The benchmark table has 21 rows but 20 distinct names:
`mixed_polynomial` is listed in both the simple and the harder tier. The
registry `PROBLEMS` is keyed by name and holds one `Problem` per name; the
tier lists hold names and may share one. `get_problem('mixed_polynomial')`
is that one Problem, whose `.tier` is 'simple' (the first tier listing it);
`tiers_of(name)` gives every tier that lists a name. `TIERS['all']` has all
21 rows in table order, while `resolve_problems` returns each Problem once
(so `resolve_problems('all')` has 20), since solving the same problem twice
on the same data would only count it twice.

Success. `is_solved` is the one success test used everywhere: NMSE below
1e-10 on 1000 fresh points drawn from the problem's range with a fixed seed
(plain MSE below 1e-10 when the target is constant). `solution_report` adds
a sympy equivalence check beside it, for reports only.
"""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

import numpy as np

import expressions
from expression_parser import ParseError, parse
from operators import OPERATORS

NMSE_THRESHOLD = 1e-10
SOLVED_POINTS = 1000
SOLVED_SEED = 12345


@dataclass(frozen=True)
class Problem:
    """One benchmark problem; `formula` is in ttsr's expression syntax."""

    name: str
    tier: str
    formula: str
    n_vars: int
    x_range: tuple[float, float]
    n_points: int = 50

    @cached_property
    def expression(self) -> tuple:
        """The formula as a prefix token tuple."""
        return parse(self.formula)

    def sample(self, seed: int = 0, n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """X ~ Uniform(x_range) of shape (n, n_vars) and exact targets y (n,)."""
        n = self.n_points if n_points is None else n_points
        rng = np.random.default_rng(seed)
        low, high = self.x_range
        X = rng.uniform(low, high, size=(n, self.n_vars))
        return X, expressions.evaluate(self.expression, X)


def _table() -> list[tuple[str, str, str, int, tuple[float, float]]]:
    """The 21 benchmark rows: (tier, name, formula, n_vars, x_range)."""
    return [
        ("ultra", "single_variable", "x0", 1, (-5.0, 5.0)),
        ("ultra", "single_constant", "2.0", 1, (-5.0, 5.0)),
        ("ultra", "variable_plus_constant", "x0 + 1.0", 1, (-5.0, 5.0)),
        ("ultra", "variable_times_constant", "2.0 * x0", 1, (-5.0, 5.0)),
        ("ultra", "simple_square", "x0 * x0", 1, (-3.0, 3.0)),
        ("simple", "quadratic", "x0 * x0 + x0 + 1.0", 1, (-5.0, 5.0)),
        ("simple", "cubic", "x0 * x0 * x0 - 2.0 * x0 * x0 + x0", 1, (-3.0, 3.0)),
        ("simple", "simple_rational", "1.0 / (1.0 + x0 * x0)", 1, (-4.0, 4.0)),
        ("simple", "bivariate_product", "x0 * x1 * x1", 2, (0.1, 10.0)),
        ("simple", "rational_division", "x0 / (x0 + 1.0)", 1, (0.1, 10.0)),
        ("simple", "quartic", "x0 * x0 * x0 * x0 - x0 * x0 * x0 + x0 * x0", 1, (-2.0, 2.0)),
        ("simple", "bivariate_sum", "x0 * x0 + x1 * x1", 2, (-3.0, 3.0)),
        ("simple", "trivariate_product", "x0 * x1 * x2", 3, (0.5, 3.0)),
        ("simple", "mixed_polynomial", "x0 * x0 - x0 * x1 + x1 * x1", 2, (-2.0, 2.0)),
        ("simple", "complex_rational", "(x0 + x1) / (x0 - x1 + 1.0)", 2, (0.1, 5.0)),
        ("harder", "pythagorean_3d", "x0 * x0 + x1 * x1 + x2 * x2", 3, (-3.0, 3.0)),
        ("harder", "quadratic_formula_discriminant", "x1 * x1 - 4.0 * x0 * x2", 3, (-2.0, 2.0)),
        ("harder", "mixed_polynomial", "x0 * x0 - x0 * x1 + x1 * x1", 2, (-2.0, 2.0)),
        ("harder", "polynomial_product", "(x0 + 1.0) * (x1 + 2.0)", 2, (-2.0, 2.0)),
        ("harder", "surface_area_sphere_approx", "8.0 * x0 * x0", 1, (0.5, 3.0)),
        ("extra", "compound_fraction", "(x0 + x1) / (x0 * x1 + 1.0)", 2, (0.5, 3.0)),
    ]


def _build_registry():
    problems: dict[str, Problem] = {}
    tiers: dict[str, list[str]] = {"ultra": [], "simple": [], "harder": [], "extra": []}
    for tier, name, formula, n_vars, x_range in _table():
        tiers[tier].append(name)
        row = Problem(name, tier, formula, n_vars, x_range)
        first = problems.setdefault(name, row)  # a repeated name keeps its first tier
        if (first.formula, first.n_vars, first.x_range) != (formula, n_vars, x_range):
            raise ValueError(f"benchmark rows for {name!r} disagree")
    tiers["all"] = [name for tier in ("ultra", "simple", "harder", "extra") for name in tiers[tier]]
    return problems, tiers


PROBLEMS, TIERS = _build_registry()
ULTRA_SIMPLE: list[str] = TIERS["ultra"]
SIMPLE: list[str] = TIERS["simple"]
HARDER: list[str] = TIERS["harder"]
EXTRA: list[str] = TIERS["extra"]


class UnknownProblemError(KeyError, ValueError):
    """A name that is neither a problem nor a tier; the message lists both."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:  # KeyError would print the repr of the name only
        return (
            f"unknown problem {self.name!r}; problems: {', '.join(PROBLEMS)}; "
            f"tiers: {', '.join(TIERS)}"
        )


def get_problem(name: str) -> Problem:
    """The Problem called `name` (raises UnknownProblemError)."""
    try:
        return PROBLEMS[name]
    except (KeyError, TypeError):
        raise UnknownProblemError(name) from None


def tiers_of(name: str) -> list[str]:
    """Every tier listing `name` (mixed_polynomial: ['simple', 'harder'])."""
    get_problem(name)
    return [tier for tier, names in TIERS.items() if tier != "all" and name in names]


def resolve_problems(spec: str | Iterable[str]) -> list[Problem]:
    """Problems for 'name,tier,...' (or a list of such items), each once, in order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: dict[str, Problem] = {}
    for item in (item.strip() for item in items):
        if not item:
            continue
        names = TIERS[item] if item in TIERS else [get_problem(item).name]
        for name in names:
            chosen.setdefault(name, PROBLEMS[name])
    if not chosen:
        raise ValueError(f"no problems selected by {spec!r}")
    return list(chosen.values())


# --------------------------------------------------------------------------
# Success


def _as_expression(candidate) -> tuple | None:
    """An expression tuple from a tuple, text or fitted model; None if invalid."""
    if hasattr(candidate, "best_expression_"):
        candidate = candidate.best_expression_
        if candidate is None:  # an unfitted model
            return None
    if isinstance(candidate, str):
        try:
            return parse(candidate)
        except ParseError:
            return None
    if isinstance(candidate, (tuple, list)):
        candidate = tuple(candidate)
        return candidate if expressions.is_well_formed(candidate) else None
    raise TypeError(
        f"expected an expression tuple, text or an object with best_expression_, "
        f"not {type(candidate).__name__}"
    )


def nmse(predictions: np.ndarray, y: np.ndarray) -> float:
    """MSE / var(y), or MSE when y is constant; inf when a prediction is not finite.

    The one definition of "normalised error" used by is_solved and every evaluation.
    """
    with np.errstate(all="ignore"):
        if not np.all(np.isfinite(predictions)):
            return math.inf
        mse = float(np.mean((predictions - y) ** 2))
        variance = float(np.var(y))
    if not math.isfinite(mse):
        return math.inf
    return mse / variance if variance > 0 else mse


def _nmse(expression: tuple, problem: Problem, n_points: int, seed: int) -> float:
    """NMSE on fresh points of the problem's range."""
    X, y = problem.sample(seed=seed, n_points=n_points)
    return nmse(expressions.evaluate(expression, X), y)


def is_solved(model_or_expression, problem: Problem, n_points: int = SOLVED_POINTS, seed: int = SOLVED_SEED) -> bool:
    """THE success test: NMSE < 1e-10 on `n_points` fresh points of the range.

    Accepts an expression tuple, expression text, or anything with a
    `best_expression_` attribute (e.g. a fitted BasicSR). Unparseable text,
    ill-formed tuples and non-finite predictions count as not solved.
    """
    expression = _as_expression(model_or_expression)
    if expression is None:
        return False
    return _nmse(expression, problem, n_points, seed) < NMSE_THRESHOLD


def is_solved_by_predictions(predict, problem: Problem, n_points: int = SOLVED_POINTS, seed: int = SOLVED_SEED) -> bool:
    """is_solved's test on a model's own predictions (`predict(X) -> y_hat`).

    For peers (gplearn, Operon) whose expression semantics differ from ours
    (gplearn's protected division returns 1 where |d| <= 0.001): the same
    points and threshold, judged on what the model itself computes.
    """
    X, y = problem.sample(seed=seed, n_points=n_points)
    with np.errstate(all="ignore"):
        predictions = np.asarray(predict(X), dtype=np.float64)
    return nmse(predictions, y) < NMSE_THRESHOLD


def symbolically_equivalent(expression: tuple, problem: Problem, max_size: int = 40) -> bool | None:
    """sympy's verdict on expression == problem; None when undetermined.

    True when the difference simplifies to 0. False only when the difference
    is a rational function (where `cancel` is a canonical form, so a nonzero
    result is proof). None for large expressions (simplify can take minutes),
    transcendental differences sympy could not zero, or sympy failures.
    """
    if len(expression) > max_size:
        return None
    import sympy  # here, not at the top: it costs every start 0.6 s and only reports need it

    try:
        difference = expressions.to_sympy(expression) - expressions.to_sympy(problem.expression)
        if sympy.simplify(difference) == 0:
            return True
        if difference.is_rational_function():
            return sympy.cancel(difference) == 0
        return None
    except Exception:  # sympy raises many types on exotic trees; report only
        return None


def solution_report(model_or_expression, problem: Problem) -> dict:
    """nmse, solved (is_solved's verdict) and sympy equivalence, for reports."""
    expression = _as_expression(model_or_expression)
    if expression is None:
        nmse, text, equivalent = math.inf, None, None
    else:
        nmse = _nmse(expression, problem, SOLVED_POINTS, SOLVED_SEED)
        text = expressions.to_string(expression)
        equivalent = symbolically_equivalent(expression, problem)
    return {
        "problem": problem.name,
        "expression": text,
        "nmse": nmse,
        "solved": nmse < NMSE_THRESHOLD,
        "symbolically_equivalent": equivalent,
    }


# --------------------------------------------------------------------------
# Leakage check for the data pipeline

_FINGERPRINT_POINTS = 64
_FINGERPRINT_SEED = 20240601
# Positive and away from 0 (log, sqrt, division are tame there). With this
# seed no benchmark comes near a pole (complex_rational's x0 - x1 + 1 could
# vanish in this range); tests check the values are well conditioned.
_FINGERPRINT_RANGE = (0.5, 2.0)
_FINGERPRINT_COLUMNS = 64  # variables a candidate may use (after relabelling)
_FINGERPRINT_SLOTS = max(p.n_vars for p in PROBLEMS.values())  # benchmark vars go in these columns
_RELATIVE_TOLERANCE = 1e-9
_ABSOLUTE_TOLERANCE = 1e-12  # for values that are ~0 at some point


class _Fingerprints:
    """Benchmark values on fixed points, for every placement of their variables.

    Row r holds problem `names[r]` evaluated with its k variables assigned to
    k distinct columns among the first 3 (all injective placements, at most
    6 per problem). Candidates are relabelled to x0, x1, ... before the
    comparison, so they match whatever they call their variables.
    Rows are sorted by the problem's n_vars, so `limit[n]` rows cover the
    problems with at most n variables.
    """

    def __init__(self):
        rng = np.random.default_rng(_FINGERPRINT_SEED)
        points = rng.uniform(*_FINGERPRINT_RANGE, size=(_FINGERPRINT_POINTS, _FINGERPRINT_COLUMNS))
        self.evaluator = expressions.Evaluator(points)
        # Most candidates already differ from every benchmark at the first
        # point; checking it alone first is several times cheaper.
        self.probe = expressions.Evaluator(points[:1])
        rows, names, n_vars = [], [], []
        for problem in sorted(PROBLEMS.values(), key=lambda p: p.n_vars):
            for placement in itertools.permutations(range(_FINGERPRINT_SLOTS), problem.n_vars):
                renamed = _rename(problem.expression, {f"x{i}": f"x{j}" for i, j in enumerate(placement)})
                rows.append(self.evaluator(renamed))
                names.append(problem.name)
                n_vars.append(problem.n_vars)
        self.values = np.array(rows)
        self.tolerance = _RELATIVE_TOLERANCE * np.abs(self.values) + _ABSOLUTE_TOLERANCE
        self.first = np.ascontiguousarray(self.values[:, 0])
        self.first_tolerance = np.ascontiguousarray(self.tolerance[:, 0])
        self.names = names
        self.limit = [int(np.searchsorted(n_vars, n, side="right")) for n in range(_FINGERPRINT_SLOTS + 1)]
        self.prefixes = [frozenset(f"x{i}" for i in range(m)) for m in range(_FINGERPRINT_COLUMNS + 1)]

    def match(self, expression: tuple, n_vars: int | None) -> str | None:
        used = {t for t in expression if t.__class__ is str}
        used -= _OPERATOR_SYMBOLS
        if len(used) > _FINGERPRINT_COLUMNS:
            return None
        if not used <= self.prefixes[len(used)]:  # relabel to x0, x1, ... in index order
            try:
                order = sorted(used, key=expressions.variable_index)
            except ValueError:  # not a variable name: not an expression
                return None
            expression = _rename(expression, {name: f"x{i}" for i, name in enumerate(order)})
        rows = len(self.names) if n_vars is None else self.limit[max(0, min(n_vars, _FINGERPRINT_SLOTS))]
        with np.errstate(all="ignore"):
            try:
                first = self.probe.raw(expression)
                near = np.flatnonzero(np.abs(self.first[:rows] - first) <= self.first_tolerance[:rows])
                if not near.size:
                    return None
                values = self.evaluator.raw(expression)
            except (KeyError, IndexError, TypeError, AttributeError):  # ill-formed expression
                return None
            for row in near:
                if np.all(np.abs(self.values[row] - values) <= self.tolerance[row]):
                    return self.names[row]
        return None


_OPERATOR_SYMBOLS = frozenset(OPERATORS)


def _rename(expression: tuple, mapping: dict[str, str]) -> tuple:
    return tuple(mapping.get(t, t) if t.__class__ is str else t for t in expression)


_fingerprints: _Fingerprints | None = None


def matches_benchmark(expression: tuple, n_vars: int | None = None) -> str | None:
    """Name of a benchmark problem equivalent to `expression`, else None.

    Numerical check on 64 fixed points with every variable U(0.5, 2):
    equal within relative tolerance 1e-9 at all points. Variable names do not
    matter (the candidate's variables are relabelled in index order and each
    benchmark is tried under every assignment of its variables), so
    x1 * x0 * x0 matches bivariate_product. A candidate that really depends
    on more variables than a problem never matches it. `n_vars`, the
    dataset's input count, restricts matches to problems with at most that
    many variables (None: no restriction). Non-finite values never match.
    """
    global _fingerprints
    if _fingerprints is None:  # built on first use: importing stays cheap
        _fingerprints = _Fingerprints()
    return _fingerprints.match(expression, n_vars)


def is_equivalent_to_benchmark(expression: tuple, n_vars: int | None = None) -> bool:
    """True when `matches_benchmark` finds an equivalent benchmark problem."""
    return matches_benchmark(expression, n_vars) is not None


# --------------------------------------------------------------------------
# CLI


def format_table() -> str:
    """All 21 rows: tier, name, formula, vars, range."""
    header = ("tier", "name", "formula", "vars", "range")
    rows = [
        (tier, name, PROBLEMS[name].formula, str(PROBLEMS[name].n_vars),
         "({:g}, {:g})".format(*PROBLEMS[name].x_range))
        for tier in ("ultra", "simple", "harder", "extra")
        for name in TIERS[tier]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    """`python problems.py`: list the benchmark problems as a table."""
    argparse.ArgumentParser(description="List the ttsr benchmark problems.").parse_args(argv)
    print(format_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
