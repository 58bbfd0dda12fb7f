"""Tests for problems: the benchmark table, sampling, is_solved, leakage check."""

import timeit

import numpy as np
import pytest

import expressions
import problems
from expression_parser import parse
from problems import (
    EXTRA, HARDER, PROBLEMS, SIMPLE, TIERS, ULTRA_SIMPLE, UnknownProblemError,
    get_problem, is_equivalent_to_benchmark, is_solved, matches_benchmark,
    resolve_problems, solution_report, tiers_of,
)


class FittedModel:
    """Stands in for a fitted BasicSR: only best_expression_ matters."""

    def __init__(self, best_expression_):
        self.best_expression_ = best_expression_


# --------------------------------------------------------------------------
# The table


def test_tier_sizes_and_rows():
    assert (len(ULTRA_SIMPLE), len(SIMPLE), len(HARDER), len(EXTRA)) == (5, 10, 5, 1)
    assert len(TIERS["all"]) == 21
    assert len(ULTRA_SIMPLE) + len(SIMPLE) == 15
    assert TIERS["all"] == ULTRA_SIMPLE + SIMPLE + HARDER + EXTRA
    assert len(PROBLEMS) == 20  # mixed_polynomial is listed twice
    assert set(TIERS["all"]) == set(PROBLEMS)


def test_mixed_polynomial_is_one_problem_in_two_tiers():
    problem = get_problem("mixed_polynomial")
    assert problem.tier == "simple"
    assert "mixed_polynomial" in SIMPLE and "mixed_polynomial" in HARDER
    assert tiers_of("mixed_polynomial") == ["simple", "harder"]
    assert len(resolve_problems("all")) == 20
    assert [p.name for p in resolve_problems("harder")] == HARDER


def test_every_formula_parses_and_uses_its_variables():
    for problem in PROBLEMS.values():
        expression = problem.expression
        assert expressions.is_well_formed(expression), problem.name
        assert expressions.n_variables_needed(expression) <= problem.n_vars
        assert problem.x_range[0] < problem.x_range[1]
        assert problem.n_points == 50
    assert get_problem("single_constant").expression == (2.0,)
    assert get_problem("bivariate_product").expression == ("*", "*", "x0", "x1", "x1")


@pytest.mark.parametrize(
    "name, x, expected",
    [
        ("cubic", [2.0], 8 - 8 + 2),
        ("quartic", [2.0], 16 - 8 + 4),
        ("simple_rational", [2.0], 1 / 5),
        ("complex_rational", [2.0, 1.0], 3 / 2),
        ("quadratic_formula_discriminant", [1.0, 3.0, 0.5], 9 - 2),
        ("polynomial_product", [1.0, 1.0], 6.0),
        ("surface_area_sphere_approx", [0.5], 2.0),
        ("compound_fraction", [1.0, 2.0], 1.0),
    ],
)
def test_formulas_mean_what_the_table_says(name, x, expected):
    value = expressions.evaluate(get_problem(name).expression, np.array([x]))
    assert value[0] == pytest.approx(expected)


def test_sample_is_deterministic_in_range_and_float64():
    for problem in PROBLEMS.values():
        X, y = problem.sample(seed=7)
        X2, y2 = problem.sample(seed=7)
        assert X.shape == (50, problem.n_vars) and y.shape == (50,)
        assert X.dtype == np.float64 and y.dtype == np.float64
        np.testing.assert_array_equal(X, X2)
        np.testing.assert_array_equal(y, y2)
        low, high = problem.x_range
        assert np.all((X >= low) & (X < high))
        assert np.all(np.isfinite(y))
    X_a, _ = get_problem("quadratic").sample(seed=1)
    X_b, _ = get_problem("quadratic").sample(seed=2)
    assert not np.array_equal(X_a, X_b)
    X_big, _ = get_problem("quadratic").sample(seed=1, n_points=200)
    assert X_big.shape == (200, 1)


def test_sample_does_not_touch_global_random_state():
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    get_problem("cubic").sample(seed=3)
    assert np.random.random() == before


def test_unknown_problem_lists_the_valid_names():
    with pytest.raises(UnknownProblemError) as caught:
        get_problem("nope")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "'nope'" in message
    for name in PROBLEMS:
        assert name in message
    assert "harder" in message


def test_resolve_problems_mixes_names_and_tiers():
    chosen = resolve_problems("quadratic, harder,quadratic")
    assert [p.name for p in chosen] == ["quadratic", *HARDER]
    assert [p.name for p in resolve_problems(["extra"])] == ["compound_fraction"]
    with pytest.raises(UnknownProblemError):
        resolve_problems("quadratic,nope")
    with pytest.raises(ValueError):
        resolve_problems(" , ")


def test_cli_lists_all_rows(capsys):
    assert problems.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 22  # header + 21 rows
    assert lines[0].split() == ["tier", "name", "formula", "vars", "range"]
    assert sum("mixed_polynomial" in line for line in lines) == 2


# --------------------------------------------------------------------------
# Success


def test_each_problem_solves_itself_in_every_form():
    for problem in PROBLEMS.values():
        assert is_solved(problem.expression, problem), problem.name
        assert is_solved(problem.formula, problem)
        assert is_solved(expressions.to_string(problem.expression), problem)
        assert is_solved(FittedModel(expressions.to_string(problem.expression)), problem)


def test_equivalent_rewrites_are_solved():
    assert is_solved("x0 * (x0 + 1) + 1", get_problem("quadratic"))
    assert is_solved("x0 * (x0 - 1) * (x0 - 1)", get_problem("cubic"))
    assert is_solved(FittedModel("mul(x1, mul(x1, x0))"), get_problem("bivariate_product"))


def test_wrong_expressions_are_not_solved():
    quadratic = get_problem("quadratic")
    assert not is_solved("x0 * x0 + x0", quadratic)
    assert not is_solved("x0 * x0 + x0 + 1.0001", quadratic)
    assert not is_solved(FittedModel("x0"), quadratic)
    assert not is_solved("x0 * x0 + x0 + x1", quadratic)  # a variable the problem lacks
    assert not is_solved("x0 +", quadratic)  # unparseable text
    assert not is_solved(("+", "x0"), quadratic)  # ill-formed tuple
    assert not is_solved(FittedModel(None), quadratic)  # unfitted model
    assert not is_solved("exp(x0 * 100)", get_problem("single_variable"))  # huge values
    with pytest.raises(TypeError):
        is_solved(42, quadratic)


def test_constant_problem_uses_plain_mse():
    single_constant = get_problem("single_constant")
    assert np.var(single_constant.sample()[1]) == 0.0
    assert is_solved("2.0", single_constant)
    assert is_solved("x0 - x0 + 2", single_constant)
    assert is_solved("2.000001", single_constant)  # MSE 1e-12 < 1e-10
    assert not is_solved("2.0001", single_constant)  # MSE 1e-8
    assert not is_solved("x0", single_constant)


def test_is_solved_uses_fresh_points_from_its_own_seed():
    # Agrees with the problem's 50-point training sample would not be enough:
    # is_solved draws 1000 points with seed 12345 whatever the training seed.
    problem = get_problem("rational_division")
    X, y = problem.sample(seed=problems.SOLVED_SEED, n_points=problems.SOLVED_POINTS)
    assert X.shape == (1000, 1)
    assert is_solved("x0 / (x0 + 1)", problem, n_points=10, seed=0)


def test_is_solved_by_predictions_judges_a_models_own_outputs():
    problem = get_problem("rational_division")
    assert problems.is_solved_by_predictions(lambda X: X[:, 0] / (X[:, 0] + 1.0), problem)
    assert not problems.is_solved_by_predictions(lambda X: X[:, 0], problem)
    assert not problems.is_solved_by_predictions(lambda X: np.full(len(X), np.nan), problem)


def test_solution_report():
    cubic = get_problem("cubic")
    good = solution_report("x0 * (x0 - 1) * (x0 - 1)", cubic)
    assert good["solved"] is True and good["nmse"] < 1e-10
    assert good["symbolically_equivalent"] is True
    assert good["expression"] == "((x0 * (x0 - 1.0)) * (x0 - 1.0))"
    bad = solution_report(FittedModel("x0 * x0"), cubic)
    assert bad["solved"] is False and bad["nmse"] > 1e-3
    assert bad["symbolically_equivalent"] is False  # a rational difference: decidable
    trig = solution_report("sin(x0) * sin(x0) + cos(x0) * cos(x0) + 1", get_problem("single_constant"))
    assert trig["solved"] is True and trig["symbolically_equivalent"] is True
    undecided = solution_report("sin(x0)", get_problem("single_constant"))
    assert undecided["solved"] is False and undecided["symbolically_equivalent"] in (False, None)
    big = " + ".join(["x0"] * 40)
    assert solution_report(big, cubic)["symbolically_equivalent"] is None  # size cap
    unparseable = solution_report("x0 +", cubic)
    assert unparseable["solved"] is False and unparseable["expression"] is None


# --------------------------------------------------------------------------
# Leakage check


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(x1 * (x0 * x0))", "bivariate_product"),  # x0 * x1^2 with x0, x1 swapped
        ("x0 * x1 * x1", "bivariate_product"),
        ("x2 * x0 * x0", "bivariate_product"),  # renamed variables
        ("((x0 + 1.0) * (x1 + (1.0 + 1.0)))", "polynomial_product"),
        ("(x1 + 1) * (x0 + 2)", "polynomial_product"),
        ("x0 * x0 + x0 + 1", "quadratic"),
        ("x1 * x1 + x1 + 1", "quadratic"),
        ("x2 * x2 + x0 * x0 + x1 * x1", "pythagorean_3d"),
        ("x1 * x1 - 4 * x2 * x0", "quadratic_formula_discriminant"),
        ("(x1 + x0) / (x0 * x1 + 1)", "compound_fraction"),
        ("1 + 1", "single_constant"),
        ("x3", "single_variable"),
        ("x0 * x1 * x1 + x2 - x2", "bivariate_product"),  # the extra variable cancels
        ("(x0 * x1)", None),
        ("x0 * x1 * x1 + x2", None),  # depends on a variable the problem lacks
        ("x0 * x1 * x1 * 1.001", None),
        ("x0 * x0 * x0", None),
        ("sin(x0)", None),
        ("3.0", None),
    ],
)
def test_matches_benchmark(text, expected):
    assert matches_benchmark(parse(text)) == expected
    assert is_equivalent_to_benchmark(parse(text)) == (expected is not None)


def test_matches_benchmark_n_vars_limits_to_problems_that_fit():
    assert matches_benchmark(parse("x1 * x0 * x0"), 2) == "bivariate_product"
    assert matches_benchmark(parse("x1 * x0 * x0"), 1) is None
    assert matches_benchmark(parse("x0 * x0"), 1) == "simple_square"
    assert matches_benchmark(parse("x0 * x1 * x2"), 5) == "trivariate_product"


def test_matches_benchmark_every_problem_under_every_permutation():
    import itertools

    for problem in PROBLEMS.values():
        for order in itertools.permutations(["x0", "x1", "x2", "x7"][: problem.n_vars + 1], problem.n_vars):
            mapping = {f"x{i}": name for i, name in enumerate(order)}
            renamed = tuple(mapping.get(t, t) if isinstance(t, str) else t for t in problem.expression)
            assert matches_benchmark(renamed, problem.n_vars) == problem.name


def test_matches_benchmark_never_raises_on_odd_input():
    assert matches_benchmark(("+", "x0")) is None  # ill-formed
    assert matches_benchmark(("+", "foo", "x0")) is None  # unknown token
    assert matches_benchmark(("/", "x0", 0.0)) is None  # protected division: huge values
    assert matches_benchmark(("log", "-", "x0", "x0")) is None  # -inf


def test_fingerprint_values_are_well_conditioned():
    matches_benchmark(("x0",))
    values = problems._fingerprints.values
    assert np.all(np.isfinite(values)) and np.abs(values).max() < 1e4


def test_matches_benchmark_is_fast():
    expression = parse("((x0 * x1) + (x0 / (x1 - 2.5)))")
    matches_benchmark(expression, 2)
    per_call = min(timeit.repeat(lambda: matches_benchmark(expression, 2), number=200, repeat=5)) / 200
    assert per_call < 500e-6  # ~30 µs on a dev machine; loose bound for slow CI
