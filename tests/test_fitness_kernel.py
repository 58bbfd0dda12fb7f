"""Tests for fitness_kernel: the compiled batch scorer against the numpy reference."""

import math

import numpy as np
import pytest

import expressions as ex
import fitness_kernel
from fitness_kernel import OPCODES, BatchScorer, check_registry_coverage
from operators import BINARY_OPERATORS, OPERATORS, UNARY_OPERATORS
from random_stream import RandomStream, make_generator

ALL_OPERATORS = tuple(BINARY_OPERATORS) + tuple(UNARY_OPERATORS)

requires_numba = pytest.mark.skipif(
    fitness_kernel.numba is None, reason="numba not installed: no compiled kernel to compare"
)


def _data(n_points=30, n_vars=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3.0, 3.0, size=(n_points, n_vars))
    y = X[:, 0] * X[:, 0] + np.sin(X[:, -1]) - 0.5
    return X, y


def _assert_same_sse(compiled, reference, trees):
    compiled_inf = np.isinf(compiled)
    reference_inf = np.isinf(reference)
    mismatch = np.flatnonzero(compiled_inf != reference_inf)
    assert not mismatch.size, [
        (ex.to_string(trees[i]), compiled[i], reference[i]) for i in mismatch[:5]
    ]
    finite = ~compiled_inf
    assert not np.isnan(compiled).any() and not np.isnan(reference).any()
    close = np.isclose(compiled[finite], reference[finite], rtol=1e-9, atol=0.0)
    bad = np.flatnonzero(finite)[~close]
    assert not bad.size, [(ex.to_string(trees[i]), compiled[i], reference[i]) for i in bad[:5]]


# --------------------------------------------------------------------------
# Registry


def test_registry_coverage_is_complete():
    assert check_registry_coverage() == []
    assert set(OPCODES) == set(OPERATORS)
    assert len(OPCODES) == len(set(OPCODES))
    # The kernel treats opcodes < 4 as binary and the rest as unary.
    assert all(OPERATORS[symbol].arity == 2 for symbol in OPCODES[:4])
    assert all(OPERATORS[symbol].arity == 1 for symbol in OPCODES[4:])


def test_default_uses_compiled_kernel_when_numba_is_available():
    X, y = _data()
    assert BatchScorer(X, y).compiled == (fitness_kernel.numba is not None)
    assert BatchScorer(X, y, use_compiled=False).compiled is False


# --------------------------------------------------------------------------
# Compiled vs reference


@requires_numba
def test_compiled_matches_reference_on_random_trees():
    X, y = _data(n_points=40, n_vars=2, seed=1)
    stream = RandomStream(make_generator(99))
    constants = [1.0, -2.5, 0.5, 3.0, 0.0]
    trees = [
        ex.random_tree(stream, ["x0", "x1"], constants, ALL_OPERATORS, 1 + i % 6) for i in range(500)
    ]
    assert {t for tree in trees for t in tree if t in OPERATORS} == set(OPERATORS)
    compiled_scorer = BatchScorer(X, y, use_compiled=True)
    reference = BatchScorer(X, y, use_compiled=False).sse(trees)
    compiled = compiled_scorer.sse(trees)
    assert compiled.shape == reference.shape == (500,)
    _assert_same_sse(compiled, reference, trees)
    assert np.isfinite(compiled).sum() > 250  # most random trees are valid here
    assert np.isinf(compiled).any()  # and some are not (log(0), huge values)
    # Scoring again (constants now registered), in other batch splits, gives the same.
    again = np.concatenate([compiled_scorer.sse(trees[i : i + 37]) for i in range(0, 500, 37)])
    assert np.array_equal(again, compiled)


def test_reference_sse_equals_direct_computation():
    X, y = _data(n_points=25, seed=2)
    stream = RandomStream(make_generator(5))
    trees = [ex.random_tree(stream, ["x0", "x1"], [1.0, 2.0], ALL_OPERATORS, 4) for _ in range(100)]
    sse = BatchScorer(X, y, use_compiled=False).sse(trees)
    for tree, value in zip(trees, sse):
        predictions = ex.evaluate(tree, X)
        if ex.is_valid_prediction(predictions):
            assert value == pytest.approx(float(np.sum((predictions - y) ** 2)), rel=1e-12)
        else:
            assert value == math.inf


@pytest.mark.parametrize("compiled", [True, False])
def test_known_values(compiled):
    if compiled and fitness_kernel.numba is None:
        pytest.skip("numba not installed")
    X = np.array([[1.0, 2.0], [2.0, 3.0], [3.0, -1.0]])
    y = np.array([1.0, 4.0, 9.0])
    scorer = BatchScorer(X, y, use_compiled=compiled)
    sse = scorer.sse([("*", "x0", "x0"), ("x0",), (0.0,), ("-", "x1", "x0"), ("/", "x0", "x1")])
    expected_div = np.sum((X[:, 0] / X[:, 1] - y) ** 2)
    assert sse[:4].tolist() == [0.0, 0.0 + 4.0 + 36.0, 1.0 + 16.0 + 81.0, 0.0 + 9.0 + 169.0]
    assert sse[4] == pytest.approx(expected_div, rel=1e-15)


# --------------------------------------------------------------------------
# Invalid trees


INVALID_TREES = [
    ("/", "x0", 0.0),  # |x0 / 1e-10| > HUGE
    ("*", "exp", 50.0, "exp", 50.0),  # ~2.7e43
    ("log", "-", "x0", "x0"),  # log(0) = -inf
    ("-", "log", 0.0, "log", 0.0),  # -inf - -inf = NaN
    ("exp", "-", "log", 0.0, "log", 0.0),  # exp(NaN) must stay NaN (not be clipped)
    ("sin", "log", 0.0),  # sin(-inf) = NaN
    ("sqrt", "log", 0.0),  # inf
    ("*", 0.0, "log", 0.0),  # 0 * -inf = NaN
    ("*", "*", "exp", 50.0, "exp", 50.0, "*", "exp", 50.0, "exp", 50.0),  # 1e86: finite but huge
    (2e10,),
    (-2e10,),
]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("tree", INVALID_TREES, ids=[ex.to_string(t) for t in INVALID_TREES])
def test_invalid_trees_score_inf(tree, compiled):
    if compiled and fitness_kernel.numba is None:
        pytest.skip("numba not installed")
    X = np.array([[1.0], [2.0], [-3.0]])
    y = np.zeros(3)
    scorer = BatchScorer(X, y, use_compiled=compiled)
    sse = scorer.sse([("x0",), tree, ("x0",)])
    assert sse[0] == sse[2] == 14.0
    assert sse[1] == math.inf


@pytest.mark.parametrize("compiled", [True, False])
def test_huge_boundary(compiled):
    if compiled and fitness_kernel.numba is None:
        pytest.skip("numba not installed")
    X = np.array([[0.0], [0.0]])
    scorer = BatchScorer(X, np.zeros(2), use_compiled=compiled)
    sse = scorer.sse([(ex.HUGE,), (-ex.HUGE,), (np.nextafter(ex.HUGE, math.inf),)])
    assert sse[0] == sse[1] == 2 * ex.HUGE**2
    assert sse[2] == math.inf


@pytest.mark.parametrize("compiled", [True, False])
def test_unknown_variable_marks_only_that_tree(compiled):
    if compiled and fitness_kernel.numba is None:
        pytest.skip("numba not installed")
    X, y = _data(n_points=10, n_vars=2)
    scorer = BatchScorer(X, y, use_compiled=compiled)
    good = [("x0",), ("+", "x1", 7.5), ("*", "x0", "x1")]
    expected = BatchScorer(X, y, use_compiled=False).sse(good)
    batch = [good[0], ("+", "x0", "x2"), good[1], ("x9",), ("+", 4.25, "x5"), good[2]]
    sse = scorer.sse(batch)
    assert sse[1] == sse[3] == sse[4] == math.inf
    assert np.array_equal(sse[[0, 2, 5]], expected)
    # A constant first seen in a rejected tree does not disturb later scoring.
    assert scorer.sse([("+", 4.25, "x0")])[0] == BatchScorer(X, y, use_compiled=False).sse([("+", 4.25, "x0")])[0]


@pytest.mark.parametrize("compiled", [True, False])
def test_unknown_operator_token_is_inf(compiled):
    if compiled and fitness_kernel.numba is None:
        pytest.skip("numba not installed")
    X, y = _data(n_points=5)
    sse = BatchScorer(X, y, use_compiled=compiled).sse([("^", "x0", "x1"), ("x0",)])
    assert sse[0] == math.inf and math.isfinite(sse[1])


@pytest.mark.parametrize("compiled", [True, False])
def test_empty_batch(compiled):
    if compiled and fitness_kernel.numba is None:
        pytest.skip("numba not installed")
    X, y = _data(n_points=5)
    scorer = BatchScorer(X, y, use_compiled=compiled)
    sse = scorer.sse([])
    assert isinstance(sse, np.ndarray) and sse.shape == (0,)
    assert scorer.sse([("x0",)]).shape == (1,)  # still usable afterwards


# --------------------------------------------------------------------------
# Long trees (beyond the initial 32-row stack)


def _right_chain(n_leaves):
    """x0 + (x1 + (x0 + ...)): needs a stack as deep as its leaf count."""
    tree = []
    for i in range(n_leaves - 1):
        tree += ["+", f"x{i % 2}"]
    return tuple(tree) + (1.0,)


def _left_chain(n_leaves):
    """((x0 + x1) + x0) + ...: shallow stack, long tree."""
    tree = ["+"] * (n_leaves - 1) + ["x0"]
    for i in range(n_leaves - 1):
        tree.append(f"x{(i + 1) % 2}")
    return tuple(tree)


@requires_numba
@pytest.mark.parametrize("n_leaves", [31, 32, 33, 40, 100])
def test_trees_longer_than_initial_stack(n_leaves):
    X, y = _data(n_points=8, n_vars=2)
    trees = [("x0",), _right_chain(n_leaves), _left_chain(n_leaves), ("sin", "x1")]
    assert all(ex.is_well_formed(tree) for tree in trees)
    compiled = BatchScorer(X, y, use_compiled=True).sse(trees)
    reference = BatchScorer(X, y, use_compiled=False).sse(trees)
    assert np.all(np.isfinite(compiled))
    np.testing.assert_allclose(compiled, reference, rtol=1e-12)


@requires_numba
def test_long_tree_after_short_batches_and_long_unary_chain():
    X, y = _data(n_points=8, n_vars=2)
    scorer = BatchScorer(X, y, use_compiled=True)
    reference = BatchScorer(X, y, use_compiled=False)
    short = [("x0",), ("+", "x0", "x1")]
    np.testing.assert_allclose(scorer.sse(short), reference.sse(short), rtol=1e-12)
    long_trees = [_right_chain(80), ("sin",) * 60 + ("x0",), ("cos", "abs") * 30 + ("x1",)]
    np.testing.assert_allclose(scorer.sse(long_trees), reference.sse(long_trees), rtol=1e-12)
    np.testing.assert_allclose(scorer.sse(short), reference.sse(short), rtol=1e-12)


# --------------------------------------------------------------------------
# Protected semantics in the kernel


@pytest.mark.parametrize("compiled", [True, False])
def test_protected_operations_match_evaluator(compiled):
    if compiled and fitness_kernel.numba is None:
        pytest.skip("numba not installed")
    X = np.array([[0.0, -4.0], [-0.0, 4.0], [1e-12, 200.0], [-1e-12, -200.0], [2.0, 0.5]])
    y = np.linspace(-1.0, 1.0, 5)
    trees = [
        ("/", 1e-5, "x0"),  # guarded, sign-preserving (also for -0.0)
        ("log", "x1"),
        ("sqrt", "x1"),
        ("exp", "*", 0.1, "x1"),  # +-20: inside the clip
        ("exp", "*", 0.5, "x1"),  # 100 -> clipped to 50
        ("abs", "x1"),
        ("/", "x1", "-", "x0", "x0"),
    ]
    sse = BatchScorer(X, y, use_compiled=compiled).sse(trees)
    for tree, value in zip(trees, sse):
        predictions = ex.evaluate(tree, X)
        expected = float(np.sum((predictions - y) ** 2)) if ex.is_valid_prediction(predictions) else math.inf
        assert value == pytest.approx(expected, rel=1e-12), ex.to_string(tree)


@requires_numba
def test_negative_zero_constant_after_positive_zero():
    X = np.array([[1.0], [2.0]])
    y = np.full(2, -1e5)
    trees = [("/", 1e-5, 0.0), ("/", 1e-5, -0.0)]
    # An exact zero denominator is guarded as +1e-10 whatever its sign bit
    # (operators.py), so equal token tuples always mean equal values.
    reference = BatchScorer(X, y, use_compiled=False).sse(trees)
    assert reference[0] == reference[1] == 2 * (2e5) ** 2
    compiled = BatchScorer(X, y, use_compiled=True).sse(trees)
    assert compiled.tolist() == reference.tolist()
