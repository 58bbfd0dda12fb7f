"""Tests for expression_parser: round trips, infix, errors, fuzzing, CLI."""

import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import expression_parser
import expressions
from expression_parser import ParseError, parse, parse_many
from operators import ALIASES, BINARY_OPERATORS, OPERATORS, UNARY_OPERATORS
from random_stream import RandomStream

REPO_ROOT = Path(__file__).resolve().parent.parent

VARIABLES = ["x0", "x1", "x2", "x10", "x11"]
CONSTANTS = [1.0, -2.5, 1e-05, 3.14159, 1e20, -1.5e20, 0.0, -0.0, 123456.789, 5e-324, -1.7976931348623157e308, 2.0]


def random_trees(count, seed=0):
    """`count` seeded random trees over every registry operator."""
    stream = RandomStream(np.random.default_rng(seed))
    operators = list(OPERATORS)
    for _ in range(count):
        yield expressions.random_tree(
            stream, VARIABLES, CONSTANTS, operators, max_depth=stream.below(8), leaf_prob=0.25
        )


def typed(expression):
    """Tokens with their exact type and spelling (tells -0.0 from 0.0)."""
    return [(type(token), repr(token)) for token in expression]


# --------------------------------------------------------------------------
# Round trips


def test_round_trip_of_printed_random_trees():
    for tree in random_trees(4000):
        text = expressions.to_string(tree)
        parsed = parse(text)
        assert parsed == tree, text
        assert typed(parsed) == typed(tree), text


def function_call_form(expression):
    """Prototype spelling: add(a, b), mul(a, b), sin(a)."""
    spelling = {symbol: alias for alias, symbol in ALIASES.items()}
    stack = []
    for token in reversed(expression):
        if token in OPERATORS:
            arguments = [stack.pop() for _ in range(OPERATORS[token].arity)]
            stack.append(f"{spelling.get(token, token)}({', '.join(arguments)})")
        else:
            stack.append(expressions.format_constant(token) if isinstance(token, float) else token)
    return stack[0]


def test_minimal_parentheses_infix_round_trip():
    for tree in random_trees(2000, seed=1):
        text = expressions.to_string(tree, parentheses="minimal")
        parsed = parse(text)
        assert parsed == tree, text
        assert typed(parsed) == typed(tree), text


def test_function_call_spelling_round_trip():
    for tree in random_trees(1000, seed=2):
        text = function_call_form(tree)
        assert parse(text) == tree, text


def test_random_whitespace_is_ignored():
    rng = np.random.default_rng(3)
    spaces = [" ", "\t", "\n", "  ", "\u00a0", "\u3000", "\r\n"]
    for tree in random_trees(300, seed=3):
        pieces = expressions.to_string(tree).replace("(", " ( ").replace(")", " ) ").split()
        text = "".join(p + str(rng.choice(spaces)) for p in pieces)
        assert parse(text) == tree


# --------------------------------------------------------------------------
# Specific inputs


@pytest.mark.parametrize(
    "text, expected",
    [
        ("((x0 * x0) + 1.0)", ("+", "*", "x0", "x0", 1.0)),
        ("x0*x0 + 1", ("+", "*", "x0", "x0", 1.0)),
        ("x0 - x1 - x2", ("-", "-", "x0", "x1", "x2")),
        ("x0 / x1 / x2", ("/", "/", "x0", "x1", "x2")),
        ("x0 / x1 * x2", ("*", "/", "x0", "x1", "x2")),
        ("x0 - (x1 - x2)", ("-", "x0", "-", "x1", "x2")),
        ("x0 + x1 * x2", ("+", "x0", "*", "x1", "x2")),
        ("(x0 + x1) * x2", ("*", "+", "x0", "x1", "x2")),
        ("2*x0", ("*", 2.0, "x0")),
        ("((((x0))))", ("x0",)),
        ("(x0 - -2.5)", ("-", "x0", -2.5)),
        ("-2.5", (-2.5,)),
        ("- 2", (-2.0,)),
        ("1e-05", (1e-05,)),
        ("-1.5e+20", (-1.5e20,)),
        ("1E5", (1e5,)),
        (".5", (0.5,)),
        ("5.", (5.0,)),
        ("-x0", ("*", -1.0, "x0")),
        ("-(x0 + 1)", ("*", -1.0, "+", "x0", 1.0)),
        ("-x0 * x1", ("*", "*", -1.0, "x0", "x1")),
        ("x0 * -x1", ("*", "x0", "*", -1.0, "x1")),
        ("-sin(x0)", ("*", -1.0, "sin", "x0")),
        ("sin(-2)", ("sin", -2.0)),
        ("sin(x0)", ("sin", "x0")),
        ("sqrt(abs(x0)) / log(exp(x1))", ("/", "sqrt", "abs", "x0", "log", "exp", "x1")),
        ("cos ( x0 )", ("cos", "x0")),
        ("add(x0, mul(x1, 2))", ("+", "x0", "*", "x1", 2.0)),
        ("sub(x0, div(x1, x2))", ("-", "x0", "/", "x1", "x2")),
        ("x_1 + x_0", ("+", "x1", "x0")),
        ("x12", ("x12",)),
        ("  x0\t+\n1  ", ("+", "x0", 1.0)),
    ],
)
def test_specific_cases(text, expected):
    assert typed(parse(text)) == typed(expected)


def test_integer_literals_become_floats():
    parsed = parse("2 * x0 + 10")
    assert [type(t) for t in parsed if not isinstance(t, str)] == [float, float]


def test_every_registry_spelling_parses():
    for symbol in UNARY_OPERATORS:
        assert parse(f"{symbol}(x0)") == (symbol, "x0")
    for alias, symbol in ALIASES.items():
        arity = OPERATORS[symbol].arity
        assert parse(f"{alias}({', '.join(['x0'] * arity)})") == (symbol, *["x0"] * arity)


@pytest.mark.parametrize(
    "text",
    [
        "x0 ^ 2", "x0 ** 2", "x0^2", "x01", "x_01", "x", "y0", "nan", "inf", "-inf", "Infinity",
        "1e999", "-1e999", "9" * 400, "", "   ", "(", ")", "()", "(x0", "x0)", "x0 +", "+ x0",
        "+x0", "* x0", "x0 x1", "2x0", "2 3", "sin", "sin x0", "sin()", "sin(x0, x1)",
        "add(x0)", "add(x0, x1, x2)", "x0, x1", "(x0, x1)", "1.2.3", ".", "-", "--", "x0 = 1",
        "é", "\x00", "x0 + 1 )", "pow(x0, 2)", "x0 add x1", "1e", "1e+", "x0 +\n",
    ],
)
def test_rejected_inputs_raise_parse_error(text):
    with pytest.raises(ParseError) as caught:
        parse(text)
    assert 0 <= caught.value.position <= len(text)
    assert "\n" not in str(caught.value)  # texts are quoted with repr: one line


@pytest.mark.parametrize(
    "text, position, fragment",
    [
        ("(x0 + ))", 6, "unexpected ')'"),  # after '+' an operand is due, so the first ')' is wrong
        ("x0 ^ 2", 3, "power operator '^'"),
        ("x0 ** 2", 3, "power operator '**'"),
        ("x0 x1", 3, "unexpected 'x1'"),
        ("x0 +", 4, "end of input"),
        ("(x0", 3, "unclosed '(' (opened at position 0)"),
        ("sin(x0", 6, "opened at position 3"),
        ("1 + foo", 4, "unknown name 'foo'"),
        ("x0 * x01", 5, "leading zero"),
        ("x0 + 1e999", 5, "non-finite"),
        ("x0 + nan", 5, "non-finite constant 'nan'"),
        ("add(x0)", 6, "'add' takes 2 arguments, got 1"),
        ("sin(x0, x1)", 6, "'sin' takes 1 argument"),
        ("sin x0", 4, "expected '(' after 'sin'"),
    ],
)
def test_error_positions_and_messages(text, position, fragment):
    with pytest.raises(ParseError) as caught:
        parse(text)
    assert caught.value.position == position
    assert fragment in str(caught.value)
    assert f"at position {position} in {text!r}" in str(caught.value)


def test_parse_error_is_a_value_error_and_pickles():
    with pytest.raises(ValueError):
        parse("x0 +")
    try:
        parse("x0 ^ 2")
    except ParseError as error:
        copy = pickle.loads(pickle.dumps(error))
        assert (str(copy), copy.position) == (str(error), error.position)


def test_non_str_input_raises_type_error():
    for value in (None, 1.0, b"x0", ("x0",)):
        with pytest.raises(TypeError):
            parse(value)


def test_deep_nesting_and_long_chains_do_not_recurse():
    depth = 100_000
    assert parse("(" * depth + "x0" + ")" * depth) == ("x0",)
    assert parse("sin(" * depth + "x0" + ")" * depth) == ("sin",) * depth + ("x0",)
    assert parse("-" * depth + "x0")[:3] == ("*", -1.0, "*")
    chain = parse(" - ".join(["x0"] * depth))
    assert chain[: depth - 1] == ("-",) * (depth - 1) and len(chain) == 2 * depth - 1
    with pytest.raises(ParseError):
        parse("(" * depth)


def test_long_error_messages_are_cut_around_the_position():
    text = "x0 + " * 1000 + "^"
    with pytest.raises(ParseError) as caught:
        parse(text)
    assert caught.value.position == len(text) - 1
    assert len(str(caught.value)) < 200


def test_parse_many_maps_failures_to_none():
    assert parse_many(["x0 + 1", "x0 +", "sin(x1)"]) == [("+", "x0", 1.0), None, ("sin", "x1")]


def test_parse_is_fast_for_typical_printed_expressions():
    import timeit

    text = "(((x0 * x1) + (x0 - -2.5)) * ((x1 / 1e-05) + (x0 * x2)))"  # 15 tokens
    assert len(parse(text)) == 15
    per_call = min(timeit.repeat(lambda: parse(text), number=200, repeat=5)) / 200
    assert per_call < 200e-6  # ~15 µs on a dev machine; loose bound for slow CI


# --------------------------------------------------------------------------
# Fuzzing: nothing but ParseError, ever

GRAMMAR_ALPHABET = "x0123456789.e+-*/() sincoexplgqrtab_,"


def parse_or_parse_error(text):
    try:
        result = parse(text)
    except ParseError as error:
        assert 0 <= error.position <= len(text)
        return None
    assert expressions.is_well_formed(result)
    assert all(not isinstance(t, float) or math.isfinite(t) for t in result)
    return result


@settings(max_examples=1500, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text(text):
    parse_or_parse_error(text)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=GRAMMAR_ALPHABET, max_size=60))
def test_fuzz_grammar_alphabet(text):
    result = parse_or_parse_error(text)
    if result is not None:  # anything accepted prints and reads back the same
        assert parse(expressions.to_string(result)) == result


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["x0", "x_1", "2", "-", "+", "*", "/", "(", ")", ",", "sin", "add", "1e5", "^", " "]), max_size=25))
def test_fuzz_token_soup(pieces):
    parse_or_parse_error("".join(pieces))
    parse_or_parse_error(" ".join(pieces))


# --------------------------------------------------------------------------
# CLI


def test_cli_prints_canonical_form_size_depth_and_simplified(capsys):
    assert expression_parser.main(["x0*x0 + 1"]) == 0
    out = capsys.readouterr().out
    assert "((x0 * x0) + 1.0)" in out
    assert "size: 5" in out and "depth: 2" in out
    assert "x0**2 + 1" in out


def test_cli_accepts_leading_minus_after_double_dash(capsys):
    assert expression_parser.main(["--", "-x0"]) == 0
    assert "expression: (-1.0 * x0)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["x0 ^ 2"], ["(x0 +\n ))"], []])
def test_cli_bad_input_exits_2_with_one_error_line(capsys, argv):
    assert expression_parser.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_cli_subprocess_exit_code():
    result = subprocess.run(
        [sys.executable, "expression_parser.py", "x0 ** 2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
