"""The one registry of operators.

Every part of ttsr that knows about operators reads this table: the random
tree generator, the evaluator, the printer, the parser, the tokenizer
vocabulary and the sympy export. Adding an operator here makes it available
everywhere; nothing else lists operators.

Protected semantics (so evaluation never raises and never depends on numpy
warnings):
- division: a denominator with |d| < 1e-10 is replaced by 1e-10 with d's sign,
  where an exact zero counts as positive whatever its sign bit (so an
  expression's value never depends on -0.0 versus 0.0, and equal token tuples
  always mean equal values);
- exp: the input is clipped to [-EXP_CLIP, EXP_CLIP];
- log and sqrt: applied to |x| (log(0) is -inf, which marks the individual
  invalid downstream).
The sympy mapping mirrors these semantics where sympy can express them (log
and sqrt of Abs); protected division and the exp clip only differ from plain
sympy at points an evaluation would mark invalid or near-singular.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DIVISION_GUARD = 1e-10
EXP_CLIP = 50.0


def protected_divide(numerator, denominator):
    """numerator / denominator, with |denominator| < 1e-10 replaced by ±1e-10."""
    denominator = np.asarray(denominator, dtype=np.float64)
    small = np.abs(denominator) < DIVISION_GUARD
    if small.any():
        guard = np.where(denominator < 0, -DIVISION_GUARD, DIVISION_GUARD)
        denominator = np.where(small, guard, denominator)
    return np.divide(numerator, denominator)


def protected_exp(x):
    """exp with its input clipped, so it overflows to a large finite value at most."""
    return np.exp(np.clip(x, -EXP_CLIP, EXP_CLIP))


def protected_log(x):
    """log(|x|)."""
    return np.log(np.abs(x))


def protected_sqrt(x):
    """sqrt(|x|)."""
    return np.sqrt(np.abs(x))


def _sympy():
    """sympy, imported on first use: only exports and reports need it, and it costs every start 0.6 s."""
    import sympy
    return sympy


@dataclass(frozen=True)
class Operator:
    """One operator: how it is written, evaluated and exported."""

    symbol: str
    arity: int
    function: Callable  # numpy, vectorised, protected
    to_sympy: Callable  # sympy builder with the same semantics where expressible
    precedence: int = 0  # infix binding strength (binary operators only)
    aliases: tuple[str, ...] = field(default=())  # other spellings the parser accepts


BINARY_OPERATORS: dict[str, Operator] = {
    op.symbol: op
    for op in (
        Operator("+", 2, np.add, lambda a, b: a + b, precedence=1, aliases=("add",)),
        Operator("-", 2, np.subtract, lambda a, b: a - b, precedence=1, aliases=("sub",)),
        Operator("*", 2, np.multiply, lambda a, b: a * b, precedence=2, aliases=("mul",)),
        Operator("/", 2, protected_divide, lambda a, b: a / b, precedence=2, aliases=("div",)),
    )
}

UNARY_OPERATORS: dict[str, Operator] = {
    op.symbol: op
    for op in (
        Operator("sin", 1, np.sin, lambda a: _sympy().sin(a)),
        Operator("cos", 1, np.cos, lambda a: _sympy().cos(a)),
        Operator("exp", 1, protected_exp, lambda a: _sympy().exp(a)),
        Operator("log", 1, protected_log, lambda a: _sympy().log(_sympy().Abs(a))),
        Operator("sqrt", 1, protected_sqrt, lambda a: _sympy().sqrt(_sympy().Abs(a))),
        Operator("abs", 1, np.abs, lambda a: _sympy().Abs(a)),
    )
}

OPERATORS: dict[str, Operator] = {**BINARY_OPERATORS, **UNARY_OPERATORS}

ALIASES: dict[str, str] = {alias: op.symbol for op in OPERATORS.values() for alias in op.aliases}

DEFAULT_BINARY_OPERATORS: tuple[str, ...] = ("+", "-", "*", "/")
DEFAULT_UNARY_OPERATORS: tuple[str, ...] = ()

# Named operator sets used by the data pipeline (`--operator_set arith|full`):
# "arith" means arithmetic only (no unary functions), "full" adds every unary.
# File names use the same words (`arith_1k_c05_...`): an expressions file made
# with the default `+,-,*` is "arith" too.
OPERATOR_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "arith": (DEFAULT_BINARY_OPERATORS, ()),
    "full": (DEFAULT_BINARY_OPERATORS, tuple(UNARY_OPERATORS)),
}


def check_operators(binary_operators, unary_operators) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate operator names against the registry; return them as tuples."""
    binary = tuple(binary_operators)
    unary = tuple(unary_operators)
    for name, known in (("binary", BINARY_OPERATORS), ("unary", UNARY_OPERATORS)):
        chosen = binary if name == "binary" else unary
        for symbol in chosen:
            if symbol not in known:
                raise ValueError(
                    f"unknown {name} operator {symbol!r}; known: {', '.join(known)}"
                )
    if not binary and not unary:
        raise ValueError("at least one operator is required")
    return binary, unary
