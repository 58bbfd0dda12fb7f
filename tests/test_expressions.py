"""Tests for expressions: printing, size/depth, well-formedness, evaluation.

The central check compares the numpy Evaluator with a sympy `lambdify` of
`to_sympy(tree)` on a few hundred random trees using every operator, at the
points where none of the protections (division guard, exp clip, log(0))
engage.
"""

import math

import numpy as np
import pytest
import sympy

import expressions as ex
from expression_parser import parse
from operators import BINARY_OPERATORS, DIVISION_GUARD, EXP_CLIP, OPERATORS, UNARY_OPERATORS
from random_stream import RandomStream, make_generator

ALL_OPERATORS = tuple(BINARY_OPERATORS) + tuple(UNARY_OPERATORS)


# --------------------------------------------------------------------------
# Printing


@pytest.mark.parametrize(
    "tree, text",
    [
        (("+", "*", "x0", "x0", 1.0), "((x0 * x0) + 1.0)"),
        (("sin", "x0"), "sin(x0)"),
        ((1.0,), "1.0"),
        ((-2.5,), "-2.5"),
        ((1e-05,), "1e-05"),
        (("x12",), "x12"),
        (("-", "x0", -2.5), "(x0 - -2.5)"),
        (("/", "x1", "+", "x0", 1e-05), "(x1 / (x0 + 1e-05))"),
        (("sqrt", "abs", "-", "x0", "x1"), "sqrt(abs((x0 - x1)))"),
        (("*", "exp", "x0", "log", "cos", "x1"), "(exp(x0) * log(cos(x1)))"),
        (("+", "+", "x0", "x1", "x2"), "((x0 + x1) + x2)"),
        (("+", "x0", "+", "x1", "x2"), "(x0 + (x1 + x2))"),
    ],
)
def test_to_string_format(tree, text):
    assert ex.to_string(tree) == text


@pytest.mark.parametrize(
    "tree, text",
    [
        (("+", "*", "x0", "x0", 1.0), "x0 * x0 + 1.0"),
        (("*", "+", "x0", 1.0, "x1"), "(x0 + 1.0) * x1"),
        (("+", "+", "x0", "x1", "x2"), "x0 + x1 + x2"),
        (("+", "x0", "+", "x1", "x2"), "x0 + (x1 + x2)"),
        (("-", "x0", "-", "x1", "x2"), "x0 - (x1 - x2)"),
        (("/", "x0", "*", "x1", "x2"), "x0 / (x1 * x2)"),
        (("/", "*", "x0", "x1", "x2"), "x0 * x1 / x2"),
        (("-", "x0", -2.5), "x0 - -2.5"),
        (("*", -2.5, "x0"), "-2.5 * x0"),
        (("sqrt", "abs", "-", "x0", "x1"), "sqrt(abs(x0 - x1))"),
        (("*", "sin", "+", "x0", "x1", "x2"), "sin(x0 + x1) * x2"),
        ((1e-05,), "1e-05"),
    ],
)
def test_to_string_minimal_parentheses(tree, text):
    assert ex.to_string(tree, parentheses="minimal") == text
    assert parse(text) == tree


def test_to_string_rejects_an_unknown_parentheses_style():
    with pytest.raises(ValueError, match="parentheses must be one of full, minimal, got 'none'"):
        ex.to_string(("x0",), parentheses="none")


@pytest.mark.parametrize("value, text", [(1.0, "1.0"), (-2.5, "-2.5"), (1e-05, "1e-05"), (2.0, "2.0"), (1e20, "1e+20"), (0.1, "0.1")])
def test_format_constant(value, text):
    assert ex.format_constant(value) == text


def test_to_string_round_trips_through_parser():
    stream = RandomStream(make_generator(7))
    for _ in range(200):
        tree = ex.random_tree(stream, ["x0", "x1"], [1.0, -2.5, 1e-05, 3.25], ALL_OPERATORS, 5)
        assert parse(ex.to_string(tree)) == tree
        assert parse(ex.to_string(tree, parentheses="minimal")) == tree


# --------------------------------------------------------------------------
# Size, depth, subtree_end


@pytest.mark.parametrize(
    "tree, size, depth",
    [
        (("x0",), 1, 0),
        ((1.0,), 1, 0),
        (("sin", "x0"), 2, 1),
        (("sin", "cos", "exp", "x0"), 4, 3),
        (("+", "x0", 1.0), 3, 1),
        (("+", "*", "x0", "x0", 1.0), 5, 2),
        (("+", 1.0, "*", "x0", "x0"), 5, 2),
        (("+", "x0", "sin", "cos", "x1"), 5, 3),
        (("*", "sin", "sin", "sin", "x0", "x1"), 6, 4),
        (("-", "+", "*", "x0", "x0", "x1", "/", "x2", "sqrt", "x0"), 10, 3),
    ],
)
def test_size_and_depth(tree, size, depth):
    assert ex.size(tree) == size
    assert ex.depth(tree) == depth


def _reference_depth(tree, start=0):
    """(depth, end) by plain recursion."""
    arity = ex.arity(tree[start])
    position = start + 1
    deepest = -1
    for _ in range(arity):
        child_depth, position = _reference_depth(tree, position)
        deepest = max(deepest, child_depth)
    return deepest + 1, position


def test_depth_and_node_depths_match_recursive_reference():
    stream = RandomStream(make_generator(11))
    for _ in range(300):
        tree = ex.random_tree(stream, ["x0", "x1"], [1.0], ALL_OPERATORS, 6)
        expected_depth, end = _reference_depth(tree)
        assert end == len(tree)
        assert ex.depth(tree) == expected_depth
        node_depths = ex.node_depths(tree)
        assert len(node_depths) == len(tree)
        assert node_depths[0] == 0
        assert max(node_depths) == expected_depth


def test_subtree_end():
    tree = ("+", "*", "x0", "x0", "sin", 1.0)
    assert ex.subtree_end(tree, 0) == 6
    assert ex.subtree_end(tree, 1) == 4
    assert ex.subtree_end(tree, 2) == 3
    assert ex.subtree_end(tree, 3) == 4
    assert ex.subtree_end(tree, 4) == 6
    assert ex.subtree_end(tree, 5) == 6
    assert ex.subtree_end(("x0",), 0) == 1
    chain = ("sin", "cos", "exp", "x0")
    assert [ex.subtree_end(chain, i) for i in range(4)] == [4, 4, 4, 4]


def test_subtree_end_slices_are_well_formed():
    stream = RandomStream(make_generator(3))
    for _ in range(200):
        tree = ex.random_tree(stream, ["x0", "x1"], [1.0, 2.0], ALL_OPERATORS, 5)
        for start in range(len(tree)):
            end = ex.subtree_end(tree, start)
            assert start < end <= len(tree)
            assert ex.is_well_formed(tree[start:end])
            _, reference_end = _reference_depth(tree, start)
            assert end == reference_end


# --------------------------------------------------------------------------
# is_well_formed


@pytest.mark.parametrize(
    "tokens",
    [
        ("x0",),
        (1.0,),
        (-2.5,),
        ("x10",),
        ("sin", "x0"),
        ("+", "*", "x0", "x0", 1.0),
        ("sqrt", "abs", "log", "exp", "cos", "x3"),
        ["+", "x0", "x1"],  # any sequence
    ],
)
def test_is_well_formed_good(tokens):
    assert ex.is_well_formed(tokens)


@pytest.mark.parametrize(
    "tokens",
    [
        (),
        ("+",),
        ("+", "x0"),
        ("x0", "x1"),
        ("+", "x0", "x1", "x2"),
        ("sin",),
        ("sin", "x0", "x1"),
        ("foo",),
        ("x",),
        ("X0",),
        ("x01",),
        ("x-1",),
        ("x1.5",),
        ("x\u0661",),  # a non-ASCII digit
        ("y0",),
        (float("nan"),),
        (float("inf"),),
        ("+", "x0", -float("inf")),
        (1,),  # an int is not a constant token
        (None,),
        ("^", "x0", "x1"),
    ],
)
def test_is_well_formed_bad(tokens):
    assert not ex.is_well_formed(tokens)


def test_random_trees_are_well_formed_and_within_depth():
    stream = RandomStream(make_generator(5))
    for max_depth in range(0, 6):
        for _ in range(50):
            tree = ex.random_tree(stream, ["x0", "x1", "x2"], [1.0, -2.5], ALL_OPERATORS, max_depth)
            assert ex.is_well_formed(tree)
            assert ex.depth(tree) <= max_depth


# --------------------------------------------------------------------------
# Evaluation vs sympy


def _subtree_values(evaluator, tree):
    """Values of every subtree (index -> array), with warnings silenced."""
    values = {}
    with np.errstate(all="ignore"):
        for start in range(len(tree)):
            values[start] = evaluator(tree[start : ex.subtree_end(tree, start)])
    return values


def _valid_points(tree, values):
    """Mask of points where no protection engages and every value is finite and not huge."""
    n = len(values[0])
    valid = np.ones(n, dtype=bool)
    scale = np.zeros(n)
    with np.errstate(all="ignore"):
        for start, token in enumerate(tree):
            value = values[start]
            valid &= np.isfinite(value) & (np.abs(value) <= ex.HUGE)
            scale = np.maximum(scale, np.where(np.isfinite(value), np.abs(value), 0.0))
            if token == "/":
                denominator = values[ex.subtree_end(tree, start + 1)]
                valid &= np.abs(denominator) >= DIVISION_GUARD
            elif token == "exp":
                valid &= np.abs(values[start + 1]) <= EXP_CLIP
            elif token == "log":
                valid &= values[start + 1] != 0.0
    return valid, scale


def test_evaluation_matches_sympy_lambdify_on_random_trees():
    stream = RandomStream(make_generator(2024))
    rng = np.random.default_rng(1)
    X = rng.uniform(-3.0, 3.0, size=(40, 2))
    X[:4] = [[0.0, 1.0], [1.0, 0.0], [-1.0, 2.0], [0.5, -0.5]]  # some exact values
    evaluator = ex.Evaluator(X)
    symbols = [sympy.Symbol("x0", real=True), sympy.Symbol("x1", real=True)]
    n_trees = 300
    trees_with_valid_points = 0
    compared_points = 0
    for _ in range(n_trees):
        tree = ex.random_tree(stream, ["x0", "x1"], [1.0, -2.5, 0.5, 3.0], ALL_OPERATORS, 5)
        values = _subtree_values(evaluator, tree)
        valid, scale = _valid_points(tree, values)
        if not valid.any():
            continue
        trees_with_valid_points += 1
        function = sympy.lambdify(symbols, ex.to_sympy(tree), modules="numpy")
        with np.errstate(all="ignore"):
            expected = np.broadcast_to(np.asarray(function(X[:, 0], X[:, 1])), (len(X),))
        actual = values[0][valid]
        expected = expected[valid]
        assert np.isrealobj(expected) or np.all(np.imag(expected) == 0), ex.to_string(tree)
        expected = np.real(expected).astype(np.float64)
        # rtol 1e-9, atol 1e-12, widened by the largest intermediate value at
        # the point (sympy may reorder sums and cancel terms, so cancellation
        # error of order eps * intermediate magnitude is legitimate).
        tolerance = 1e-12 + 1e-9 * np.maximum(np.abs(expected), scale[valid])
        bad = ~(np.abs(actual - expected) <= tolerance)
        assert not bad.any(), (
            f"{ex.to_string(tree)}: numpy {actual[bad][:3]} sympy {expected[bad][:3]} "
            f"at {X[valid][bad][:3].tolist()}"
        )
        compared_points += int(valid.sum())
    assert trees_with_valid_points >= 0.7 * n_trees
    assert compared_points >= 0.5 * n_trees * len(X)


def test_to_sympy_structure():
    x0 = sympy.Symbol("x0", real=True)
    x1 = sympy.Symbol("x1", real=True)
    assert ex.to_sympy(("+", "*", "x0", "x0", 1.0)) == x0**2 + 1
    assert ex.to_sympy(("log", "x0")) == sympy.log(sympy.Abs(x0))
    assert ex.to_sympy(("sqrt", "x0")) == sympy.sqrt(sympy.Abs(x0))
    assert ex.to_sympy(("-", "x0", "x1")) == x0 - x1
    assert ex.to_sympy(("/", "x0", "x1")) == x0 / x1
    assert ex.to_sympy((2.0,)) == 2 and isinstance(ex.to_sympy((2.0,)), sympy.Integer)
    assert ex.to_sympy((-2.5,)) == sympy.Float(-2.5)


# --------------------------------------------------------------------------
# Protected semantics


X_SMALL = np.array([[2.0, 0.0], [-3.0, -0.0], [0.5, 1e-12], [-0.5, -1e-12], [1.0, 4.0]])


def test_division_by_zero_constant_is_guarded_sign_preserving():
    x0 = X_SMALL[:, 0]
    assert np.array_equal(ex.evaluate(("/", "x0", 0.0), X_SMALL), x0 / 1e-10)
    # An exact zero is guarded as +1e-10 whatever its sign bit (operators.py).
    assert np.array_equal(ex.evaluate(("/", "x0", -0.0), X_SMALL), x0 / 1e-10)
    assert np.array_equal(ex.evaluate(("/", "x0", 1e-12), X_SMALL), x0 / 1e-10)
    assert np.array_equal(ex.evaluate(("/", "x0", -1e-12), X_SMALL), x0 / -1e-10)
    assert np.array_equal(ex.evaluate(("/", "x0", 2.0), X_SMALL), x0 / 2.0)


def test_division_by_zero_array_is_guarded_sign_preserving():
    # x1 column: 0.0, -0.0, 1e-12, -1e-12, 4.0
    result = ex.evaluate(("/", 1.0, "x1"), X_SMALL)
    assert np.array_equal(result, [1e10, 1e10, 1e10, -1e10, 0.25])  # -0.0 counts as +0
    assert np.all(np.isfinite(result))
    # x0 - x0 is +0.0 everywhere
    assert np.array_equal(ex.evaluate(("/", "x0", "-", "x0", "x0"), X_SMALL), X_SMALL[:, 0] / 1e-10)


def test_division_guard_boundary():
    X = np.array([[1e-10], [-1e-10], [9.999999e-11]])
    result = ex.evaluate(("/", 1.0, "x0"), X)
    assert result[0] == 1.0 / 1e-10
    assert result[1] == -1.0 / 1e-10
    assert result[2] == 1.0 / 1e-10


def test_exp_is_clipped():
    X = np.array([[100.0], [-100.0], [50.0], [1.0], [1e308], [-np.inf]])
    result = ex.evaluate(("exp", "x0"), X)
    assert result[0] == math.exp(EXP_CLIP)
    assert result[1] == math.exp(-EXP_CLIP)
    assert result[2] == math.exp(50.0)
    assert result[3] == pytest.approx(math.e, rel=1e-15)
    assert result[4] == math.exp(EXP_CLIP)
    assert result[5] == math.exp(-EXP_CLIP)
    assert ex.evaluate(("exp", 1000.0), X)[0] == math.exp(EXP_CLIP)


def test_log_and_sqrt_use_absolute_value():
    X = np.array([[-4.0], [4.0], [0.0], [-0.0]])
    log = ex.evaluate(("log", "x0"), X)
    assert log[0] == log[1] == pytest.approx(math.log(4.0))
    assert log[2] == -np.inf and log[3] == -np.inf
    assert np.array_equal(ex.evaluate(("sqrt", "x0"), X), [2.0, 2.0, 0.0, 0.0])
    assert np.array_equal(ex.evaluate(("abs", "x0"), X), [4.0, 4.0, 0.0, 0.0])
    assert not ex.is_valid_prediction(log)


def test_is_valid_prediction():
    assert ex.is_valid_prediction(np.array([0.0, -ex.HUGE, ex.HUGE]))
    assert not ex.is_valid_prediction(np.array([0.0, ex.HUGE * 1.0001]))
    assert not ex.is_valid_prediction(np.array([np.nan, 1.0]))
    assert not ex.is_valid_prediction(np.array([np.inf]))
    assert not ex.is_valid_prediction(np.array([-np.inf]))


# --------------------------------------------------------------------------
# Robustness and shapes


@pytest.mark.parametrize(
    "tree",
    [
        ("x5",),  # beyond X's columns
        ("+", "x0", "x2"),
        ("sin", "x7"),
        ("foo",),
        ("+", "x0"),
        (),
        ("sin",),
        (None,),
        (1,),
        ("^", "x0", "x1"),
        ([],),
    ],
)
def test_evaluate_never_raises_on_nonsense(tree):
    X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    result = ex.evaluate(tree, X)
    assert result.shape == (3,)
    assert result.dtype == np.float64
    assert np.all(np.isnan(result))


def test_unknown_variable_gives_all_nan_but_known_ones_work():
    X = np.arange(6.0).reshape(3, 2)
    assert np.all(np.isnan(ex.evaluate(("x2",), X)))
    assert np.array_equal(ex.evaluate(("x1",), X), X[:, 1])


@pytest.mark.parametrize("tree, value", [((2.0,), 2.0), (("+", 1.0, 2.0), 3.0), (("sin", 0.0), 0.0), (("/", 1.0, 0.0), 1e10)])
def test_constant_expressions_broadcast(tree, value):
    X = np.zeros((7, 2))
    result = ex.evaluate(tree, X)
    assert result.shape == (7,)
    assert result.dtype == np.float64
    assert np.all(result == value)
    result[0] = 99.0  # a writable, independent array
    assert np.all(ex.evaluate(tree, X) == value)


def test_evaluator_accepts_one_dimensional_X():
    x = np.array([1.0, 2.0, 3.0])
    evaluator = ex.Evaluator(x)
    assert (evaluator.n_points, evaluator.n_vars) == (3, 1)
    assert np.array_equal(evaluator(("*", "x0", "x0")), x * x)
    assert np.array_equal(ex.evaluate(("+", "x0", 1.0), x), x + 1.0)


def test_evaluate_does_not_warn(recwarn):
    X = np.array([[0.0], [1e300], [-1e300]])
    ex.evaluate(("*", "/", 1.0, "x0", "*", "x0", "x0"), X)
    ex.evaluate(("log", "-", "x0", "x0"), X)
    ex.evaluate(("sin", "*", "x0", "x0"), X)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_evaluator_result_does_not_alias_data():
    X = np.array([[1.0], [2.0]])
    result = ex.evaluate(("x0",), X)
    result[0] = 100.0
    assert X[0, 0] == 1.0


def test_variables_helpers():
    tree = ("+", "x3", "*", "x0", 1.0)
    assert ex.variables_used(tree) == {"x3", "x0"}
    assert ex.n_variables_needed(tree) == 4
    assert ex.n_variables_needed((1.0,)) == 0
    assert ex.variable_index("x12") == 12
    assert all(ex.arity(s) == op.arity for s, op in OPERATORS.items())
    assert ex.arity("x0") == 0 and ex.arity(1.0) == 0


def test_division_guard_mask_marks_points_where_the_guard_engages():
    X = np.array([[1.0, 0.0], [2.0, 3.0], [3.0, 1e-12], [4.0, -2.0]])
    assert ex.division_guard_mask(("/", "x0", "x1"), X).tolist() == [True, False, True, False]
    # Nested: the inner denominator (x1 - x1) is zero everywhere.
    assert ex.division_guard_mask(("+", 1.0, "/", "x0", "-", "x1", "x1"), X).all()
    assert not ex.division_guard_mask(("*", "x0", "x1"), X).any()
