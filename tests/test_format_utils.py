"""Tests for format_utils: the one writer of model-visible text."""

import math
import re

import numpy as np
import pytest

import expressions as ex
import format_utils as fu
from basic_sr import BasicSR
from expression_parser import ParseError
from operators import BINARY_OPERATORS, OPERATORS, UNARY_OPERATORS
from problems import get_problem
from random_stream import RandomStream, make_generator
from trajectory import population_at

ARITH = ("+", "-", "*", "/")
CONSTANTS = (1.0, -2.5, 1e-05, 0.5, 3.0, -1.5e20, 123.456, -0.0)


def random_trees(count, seed, n_vars=3, operators=tuple(OPERATORS), constants=CONSTANTS, max_depth=5):
    stream = RandomStream(make_generator(seed))
    variables = [f"x{i}" for i in range(n_vars)]
    return [ex.random_tree(stream, variables, constants, operators, max_depth) for _ in range(count)]


def sample_data(n_vars, seed=0, n_points=50):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n_points, n_vars))
    y = X[:, 0] ** 2 - X[:, -1] + 0.5
    return X, y


# --------------------------------------------------------------------------
# Expressions


def test_model_text_is_the_printed_form_without_spaces():
    tree = ("+", "*", "x0", "x0", 1.0)
    assert fu.expression_to_model_text(tree) == "((x0*x0)+1.0)"
    assert fu.expression_to_model_text(("*", "x0", -2.5)) == "(x0*-2.5)"
    assert fu.expression_to_model_text(("sin", "-", "x1", 1e-05)) == "sin((x1-1e-05))"
    assert fu.expression_to_model_text("x0*x0 + 1") == "((x0*x0)+1.0)"  # text is canonicalised


def test_model_text_round_trips_thousands_of_random_trees():
    trees = random_trees(3000, seed=1) + random_trees(500, seed=2, operators=ARITH, max_depth=8)
    assert any(t in UNARY_OPERATORS for tree in trees for t in tree)
    assert any(t == -2.5 for tree in trees for t in tree) and any(t == 1e-05 for tree in trees for t in tree)
    for tree in trees:
        text = fu.expression_to_model_text(tree)
        assert " " not in text
        assert fu.model_text_to_expression(text) == tree
        assert fu.expression_to_model_text(text) == text


def test_model_text_to_expression_raises_parse_error():
    with pytest.raises(ParseError):
        fu.model_text_to_expression("((x0*x0)+")


# --------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(
    "value, text",
    [
        (-0.11, "-.11"),
        (-0.1100001, "-.11"),
        (-0.1, "-.1"),
        (-1.23456, "-1.23"),
        (-12.34, "-12.3"),
        (-123.4, "-123"),
        (-1234.5, "-1230"),
        (-123456.0, "-123000"),  # tie with -1.23e5: positional wins
        (-1234567.0, "-1.23e6"),
        (-0.00123, "-.00123"),
        (-0.0001234, "-.000123"),  # tie with -1.23e-4
        (-0.00001234, "-1.23e-5"),
        (-1.2345e-05, "-1.23e-5"),
        (-1e-5, "-1e-5"),
        (-9.9951, "-10"),
        (2.5, "2.5"),
        (4.5e7, "4.5e7"),
        (0.0, "0"),
        (-0.0, "0"),
    ],
)
def test_format_number(value, text):
    assert fu.format_number(value) == text


@pytest.mark.parametrize("value", [-math.inf, math.inf, math.nan, np.float32("-inf"), -1e39])
def test_non_finite_fitness_is_one_token(value):
    # -1e39 overflows float32, exactly as it does when a trace stores it.
    assert fu.format_fitness(value) == fu.INVALID


def test_format_number_keeps_three_significant_digits_and_is_shortest():
    rng = np.random.default_rng(0)
    values = -(10.0 ** rng.uniform(-8, 12, 3000)) * rng.uniform(1, 10, 3000)
    for value in values.tolist():
        text = fu.format_number(value)
        assert float(text) == float(f"{value:.2e}")
        general = re.sub(r"^(-?)0\.", r"\1.", f"{value:.3g}")
        general = general.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
        assert len(text) <= len(general)


def test_fitness_is_rounded_through_float32():
    # -12.35 is -12.3499... in float64 but -12.35000038 in float32 (what traces store).
    assert fu.format_number(-12.35) == "-12.3"
    assert fu.format_fitness(-12.35) == fu.format_fitness(np.float32(-12.35)) == "-12.4"


# --------------------------------------------------------------------------
# Population, prompt, target, generated text


def test_population_prompt_and_target_layout():
    population = [("+", "*", "x0", "x0", 1.0), ("sin", "x1"), (1.0,)]
    population_text = fu.format_population(population, [-0.11, -math.inf, -2.345])
    assert population_text == "((x0*x0)+1.0)<FITNESS>-.11;sin(x1)<FITNESS><INVALID>;1.0<FITNESS>-2.35"
    prompt = fu.build_prompt("gen:3", population_text)
    assert prompt == "<BOS><CONTEXT>gen:3<POPULATION>" + population_text + "<TARGET>"
    assert fu.format_target(("*", "x0", -2.5)) == "(x0*-2.5)<EOS>"
    assert fu.format_population_target(population) == "((x0*x0)+1.0);sin(x1);1.0<EOS>"


def test_format_population_checks_lengths():
    with pytest.raises(ValueError):
        fu.format_population([("x0",)], [-1.0, -2.0])


def test_parse_generated():
    assert fu.parse_generated("((x0*x0)+1.0)<EOS>") == ("+", "*", "x0", "x0", 1.0)
    assert fu.parse_generated("sin(x0)<EOS>((junk<PAD><PAD>") == ("sin", "x0")
    assert fu.parse_generated("(x0*-2.5)") == ("*", "x0", -2.5)  # no <EOS>: the whole text
    for malformed in ["((x0*x0)+<EOS>", "", "<EOS>", "x0;x1<EOS>", "x0<FITNESS>-.1<EOS>", "<UNK>"]:
        assert fu.parse_generated(malformed) is None


def test_parse_generated_population():
    population = random_trees(20, seed=3)
    target = fu.format_population_target(population)
    assert fu.parse_generated_population(target) == population
    assert fu.parse_generated_population("x0;((x0+;1.0<EOS>x1") == [("x0",), None, (1.0,)]
    assert fu.parse_generated_population("<EOS>") == []


# --------------------------------------------------------------------------
# Contexts


def test_basic_context_text():
    text = fu.build_context("basic", 12, 3, ARITH, ("sin", "exp"), (1.0, -2.5))
    assert text == "gen:12vars:3ops:+-*/sinexpconsts:1.0,-2.5"


def test_context_types_differ_and_are_deterministic():
    for n_vars in (1, 3):
        X, y = sample_data(n_vars)
        texts = [fu.build_context(t, 7, n_vars, ARITH, (), (1.0,), X, y) for t in fu.CONTEXT_TYPES]
        again = [fu.build_context(t, 7, n_vars, ARITH, (), (1.0,), X.copy(), y.copy()) for t in fu.CONTEXT_TYPES]
        assert texts == again
        basic, rich, superrich = texts
        assert rich.startswith(basic) and superrich.startswith(rich) and len(set(texts)) == 3


def rich_fields(text):
    """The rich part of a context as {key: value}, keys in order."""
    keys = [k for k in fu.KEYS.values()]
    fields, position = {}, 0
    while position < len(text):
        key = next(k for k in keys if text.startswith(k, position))
        end = min([text.find(k, position + len(key)) for k in keys if text.find(k, position + len(key)) >= 0],
                  default=len(text))
        fields[key] = text[position + len(key):end]
        position = end
    return fields


def test_rich_statistics_1d():
    x = np.linspace(-2, 3, 50)
    fields = rich_fields(fu.build_context("rich", 0, 1, ARITH, (), (1.0,), x[:, None], 2 * x))
    assert list(fields) == [
        "gen:", "vars:", "ops:", "consts:", "range:", "mean:", "var:", "skew:", "mono:", "zc:", "tv:",
    ]
    assert fields["range:"] == "-4,6" and fields["mean:"] == "1" and fields["skew:"] == "0"
    assert fields["mono:"] == "inc" and fields["zc:"] == "1" and fields["tv:"] == "10"
    assert fields["var:"] == fu.format_number(np.var(2 * x))
    square = rich_fields(fu.build_context("rich", 0, 1, ARITH, (), (1.0,), x[:, None], x * x - 1))
    assert square["mono:"] == "no" and square["zc:"] == "2"
    shuffled = np.random.default_rng(0).permutation(x)  # rows need not be sorted by x0
    rising = rich_fields(fu.build_context("rich", 0, 1, ARITH, (), (1.0,), shuffled[:, None], shuffled))
    falling = rich_fields(fu.build_context("rich", 0, 1, ARITH, (), (1.0,), shuffled[:, None], -shuffled))
    assert rising["mono:"] == "inc" and falling["mono:"] == "dec"
    constant = rich_fields(fu.build_context("rich", 0, 1, ARITH, (), (1.0,), x[:, None], np.full(50, 2.0)))
    assert constant["mono:"] == "no" and constant["skew:"] == "0" and constant["var:"] == "0"


def test_rich_statistics_multivariate_are_per_variable():
    X, y = sample_data(3)
    fields = rich_fields(fu.build_context("rich", 0, 3, ARITH, (), (1.0,), X, y))
    assert "mono:" not in fields
    assert len(fields["zc:"].split(",")) == 3 and len(fields["tv:"].split(",")) == 3


def test_statistics_skip_non_finite_points():
    X, y = sample_data(1)
    y_bad = y.copy()
    y_bad[[3, 7]] = [np.nan, np.inf]
    keep = np.isfinite(y_bad)
    assert fu.build_context("superrich", 0, 1, ARITH, (), (1.0,), X, y_bad) == fu.build_context(
        "superrich", 0, 1, ARITH, (), (1.0,), X[keep], y[keep]
    )


def plot_of(text):
    return text.split("plot:")[1].split(fu.ROW_SEPARATOR)


def test_superrich_plot_1d_is_a_fixed_grid():
    X, y = sample_data(1)
    rows = plot_of(fu.build_context("superrich", 0, 1, ARITH, (), (1.0,), X, y))
    assert len(rows) == fu.PLOT_ROWS and all(len(row) == fu.PLOT_COLUMNS for row in rows)
    assert set("".join(rows)) <= {fu.PLOT_FILLED, fu.PLOT_EMPTY}
    spread = np.linspace(-3, 3, 50)[:, None]
    columns = zip(*plot_of(fu.build_context("superrich", 0, 1, ARITH, (), (1.0,), spread, spread[:, 0] ** 2)))
    assert all(fu.PLOT_FILLED in column for column in columns)  # evenly spread points fill every x bin
    # A rising line fills the bottom-left and top-right corners.
    line = plot_of(fu.build_context("superrich", 0, 1, ARITH, (), (1.0,), X, X[:, 0]))
    assert line[-1][0] == fu.PLOT_FILLED and line[0][-1] == fu.PLOT_FILLED


def test_superrich_plot_multivariate_is_one_level_row_per_variable():
    X, y = sample_data(3)
    rows = plot_of(fu.build_context("superrich", 0, 3, ARITH, (), (1.0,), X, y))
    assert len(rows) == 3 and all(len(row) == fu.PLOT_COLUMNS for row in rows)
    levels = set("0123456789"[: fu.PLOT_LEVELS])
    assert set("".join(rows)) <= levels | {fu.PLOT_EMPTY}
    # y = x0^2 - x2 + 0.5: x0's row is U-shaped, x2's falls.
    assert rows[0][0] > min(rows[0]) < rows[0][-1]
    assert rows[2][0] > rows[2][-1]
    assert rows == fu.plot_rows(X, y)


def test_context_errors():
    with pytest.raises(ValueError, match="unknown context_type"):
        fu.build_context("fancy", 0, 1, ARITH, (), (1.0,))
    with pytest.raises(ValueError, match="needs X and y"):
        fu.build_context("rich", 0, 1, ARITH, (), (1.0,))


def test_context_cache_is_keyed_by_content():
    cache = fu.ContextCache(max_entries=2)
    X, y = sample_data(2)
    first = cache.get("rich", 2, ARITH, (), (1.0,), X, y)
    assert cache.get("rich", 2, list(ARITH), (), [1.0], X.copy(), y.copy()) is first
    assert cache.get("rich", 2, ARITH, (), (1.0,), X, y + 1) is not first
    assert first.text(4) == fu.build_context("rich", 4, 2, ARITH, (), (1.0,), X, y)
    cache.get("basic", 2, ARITH, (), (1.0,))
    assert cache.get("rich", 2, ARITH, (), (1.0,), X, y) is not first  # evicted (least recently used)


# --------------------------------------------------------------------------
# Training and inference prompts are the same bytes


class RecordingSR(BasicSR):
    """BasicSR that keeps every state it updates from, as NeuralSR sees them (float64 fitnesses)."""

    def generate_new_population(self, population, fitnesses, generation):
        self.live_states.append((generation - 1, list(population), np.array(fitnesses, dtype=np.float64)))
        return super().generate_new_population(population, fitnesses, generation)


@pytest.mark.parametrize("problem_name", ["cubic", "pythagorean_3d"])
def test_prompt_from_trace_equals_prompt_from_live_search(problem_name):
    problem = get_problem(problem_name)
    X, y = problem.sample(seed=0)
    model = RecordingSR(population_size=20, num_generations=10, max_size=25, max_depth=10, seed=0,
                        collect_trajectory=True)
    model.live_states = []
    model.fit(X, y)
    trajectory = model.trajectory_
    assert len(model.live_states) == 10
    ops = (tuple(model.binary_operators), tuple(model.unary_operators), tuple(model.constants))
    for generation, population, fitnesses in model.live_states:
        for context_type in fu.CONTEXT_TYPES:
            live = fu.PromptState(generation, population, fitnesses, problem.n_vars, *ops, X, y, context_type)
            traced = fu.PromptState(
                generation, population_at(trajectory, generation), trajectory["fitnesses"][generation],
                problem.n_vars, *ops, X, y, context_type,
            )
            live_prompt = fu.prompt_for_state(live, fu.ContextCache())
            assert live_prompt == fu.prompt_for_state(traced)
            assert live_prompt.encode() == fu.prompt_for_state(traced).encode()
            assert f"gen:{generation}vars:{problem.n_vars}" in live_prompt
    if problem_name == "cubic":
        assert any(fu.INVALID in fu.format_population(p, f) for _, p, f in model.live_states)
