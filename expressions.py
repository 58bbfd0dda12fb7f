"""Expression trees as flat prefix tuples: printing, evaluation, export.

An expression is a tuple of tokens in prefix (Polish) order:

    ("+", "*", "x0", "x0", 1.0)   is   ((x0 * x0) + 1.0)

Tokens are operator symbols from `operators.OPERATORS` (str), variables
`"x0".."xN"` (str) and constants (Python float). The flat form is what makes
the evolutionary loop fast: a node is an index, a subtree is a slice, crossover
is tuple concatenation, and a tuple is hashable, so fitnesses can be cached by
expression.

Printing is fully parenthesised with single spaces (or, on request, with
only the parentheses precedence needs), constants as Python floats (`1.0`,
`-2.5`, `1e-05`); `expression_parser.parse` reads either back exactly.
Size is the node count; depth counts edges (a lone leaf has depth 0).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from operators import BINARY_OPERATORS, DIVISION_GUARD, OPERATORS, UNARY_OPERATORS

Expression = tuple  # tuple[str | float, ...] in prefix order

# Predictions with a magnitude above this mark an individual invalid.
HUGE = 1e10

_ARITY = {symbol: op.arity for symbol, op in OPERATORS.items()}
ARITY = _ARITY  # symbol -> number of children, for hot loops that cannot afford a call per token
_BINARY_FUNCTIONS = {symbol: op.function for symbol, op in BINARY_OPERATORS.items()}
_UNARY_FUNCTIONS = {symbol: op.function for symbol, op in UNARY_OPERATORS.items()}


def arity(token) -> int:
    """Number of children of a token (0 for variables and constants)."""
    return _ARITY.get(token, 0)


def is_variable(token) -> bool:
    return token.__class__ is str and token not in _ARITY


def variable_index(token: str) -> int:
    """The column index of a variable token: 'x3' -> 3."""
    return int(token[1:])


def subtree_end(expression: Expression, start: int) -> int:
    """Index one past the subtree rooted at `start`."""
    need = 1
    position = start
    arities = _ARITY
    while need:
        token = expression[position]
        need += arities.get(token, 0) - 1
        position += 1
    return position


def size(expression: Expression) -> int:
    """Node count."""
    return len(expression)


def depth(expression: Expression) -> int:
    """Longest root-to-leaf path in edges; a single leaf has depth 0."""
    # Each pending child slot carries its depth; a token fills the last slot.
    pending = [0]
    pop = pending.pop
    push = pending.append
    arities = _ARITY
    deepest = 0
    for token in expression:
        level = pop()
        if level > deepest:
            deepest = level
        children = arities.get(token, 0)
        if children:
            level += 1
            push(level)
            if children == 2:
                push(level)
    return deepest


def node_depths(expression: Expression) -> list[int]:
    """Depth of every node, in prefix order."""
    depths = []
    open_slots: list[int] = []
    for token in expression:
        depths.append(len(open_slots))
        if open_slots:
            open_slots[-1] -= 1
        children = arity(token)
        if children:
            open_slots.append(children)
        while open_slots and open_slots[-1] == 0:
            open_slots.pop()
    return depths


def is_well_formed(expression: Sequence) -> bool:
    """True if the tokens form exactly one complete tree of known tokens."""
    need = 1
    for token in expression:
        if need == 0:
            return False
        if token.__class__ is float:
            if not math.isfinite(token):
                return False
        elif token.__class__ is not str or not (token in _ARITY or is_variable_name(token)):
            return False
        need += arity(token) - 1
    return need == 0 and len(expression) > 0


def is_variable_name(token: str) -> bool:
    """Whether a text is a variable's name: x0, x1, ..., x12 (no leading zeros)."""
    digits = token[1:]
    return len(token) > 1 and token[0] == "x" and digits.isascii() and digits.isdigit() and (
        token == "x0" or token[1] != "0"
    )


def format_constant(value: float) -> str:
    """Constants print as Python floats: 1.0, -2.5, 1e-05."""
    return repr(float(value))


PARENTHESES = ("full", "minimal")  # how to_string parenthesises binary operations


def to_string(expression: Expression, parentheses: str = "full") -> str:
    """Infix text with single spaces: '((x0 * x0) + 1.0)', or with `parentheses="minimal"` 'x0 * x0 + 1.0'.

    Either text parses back to the same tuple (the rule: `infix_pieces`).
    """
    return infix_pieces(expression, parentheses, _atom_text, "(", ")", " ")


def check_parentheses(parentheses: str) -> str:
    """`parentheses` when it is one of PARENTHESES, else a ValueError naming it."""
    if parentheses not in PARENTHESES:
        raise ValueError(f"parentheses must be one of {', '.join(PARENTHESES)}, got {parentheses!r}")
    return parentheses


def _atom_text(token) -> str:
    return format_constant(token) if token.__class__ is float else token


ATOM_PRECEDENCE = math.inf  # leaves and function calls never need brackets
PRECEDENCE = {symbol: op.precedence for symbol, op in BINARY_OPERATORS.items()}


def infix_pieces(expression: Expression, parentheses: str, atom, opening, closing, space):
    """The infix printing rule over any pieces that `+` joins: text, or lists of token ids.

    `atom(token)` is the piece of one token (leaf, operator or function
    name); `opening`, `closing` and `space` are the pieces of `(`, `)` and
    the gap around a binary operator. Full parentheses bracket every binary
    operation, `(left op right)`; minimal ones only the operands that need
    it under the registry's precedences and left associativity: a left
    operand binding more loosely than its operator, a right operand binding
    no tighter (`x0 - (x1 - x2)`, `x0 / (x1 * x2)`). Functions are `name(child)`.
    (token_codec.PromptEncoder assembles prompt ids with this same rule.)
    """
    minimal = check_parentheses(parentheses) == "minimal"
    stack: list = []  # (piece, precedence of its outermost operator)
    for token in reversed(expression):
        piece = atom(token)
        arity = _ARITY.get(token, 0)
        if arity == 0:
            stack.append((piece, ATOM_PRECEDENCE))
        elif arity == 2:
            precedence = PRECEDENCE[token]
            left, left_precedence = stack.pop()
            right, right_precedence = stack.pop()
            if space:
                piece = space + piece + space
            if not minimal:
                stack.append((opening + left + piece + right + closing, precedence))
                continue
            if left_precedence < precedence:
                left = opening + left + closing
            if right_precedence <= precedence:
                right = opening + right + closing
            stack.append((left + piece + right, precedence))
        else:
            stack.append((piece + opening + stack.pop()[0] + closing, ATOM_PRECEDENCE))
    return stack[0][0]


def variables_used(expression: Expression) -> set[str]:
    return {token for token in expression if is_variable(token)}


def n_variables_needed(expression: Expression) -> int:
    """1 + the highest variable index used (0 when no variable appears)."""
    indices = [variable_index(t) for t in expression if is_variable(t)]
    return max(indices) + 1 if indices else 0


# --------------------------------------------------------------------------
# Evaluation


def _divide(numerator, denominator):
    # Fast path for constant denominators; arrays go through the registry's
    # protected division.
    if denominator.__class__ is float:
        if -DIVISION_GUARD < denominator < DIVISION_GUARD:
            denominator = -DIVISION_GUARD if denominator < 0 else DIVISION_GUARD
        return numerator / denominator
    return _BINARY_FUNCTIONS["/"](numerator, denominator)


_FAST_BINARY = {**_BINARY_FUNCTIONS, "/": _divide}


class Evaluator:
    """Evaluates expressions on fixed data X (n_points x n_vars), vectorised."""

    def __init__(self, X: np.ndarray):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        self.n_points, self.n_vars = X.shape
        self._leaves = {f"x{i}": np.ascontiguousarray(X[:, i]) for i in range(self.n_vars)}

    def raw(self, expression: Expression):
        """Evaluate assuming numpy warnings are silenced by the caller.

        Returns an array of n_points values or a scalar for constant
        expressions. Raises KeyError for a variable beyond X's columns.
        """
        stack: list = []
        push = stack.append
        pop = stack.pop
        leaves = self._leaves
        binary = _FAST_BINARY
        for token in reversed(expression):
            leaf = leaves.get(token)
            if leaf is not None:
                push(leaf)
            elif token.__class__ is float:
                push(token)
            else:
                function = binary.get(token)
                if function is not None:
                    left = pop()
                    push(function(left, pop()))
                else:
                    push(_UNARY_FUNCTIONS[token](pop()))
        return stack[0]

    def __call__(self, expression: Expression) -> np.ndarray:
        """Predictions as a float64 array; never raises (NaN where undefined)."""
        with np.errstate(all="ignore"):
            try:
                values = self.raw(expression)
            except (KeyError, IndexError, TypeError, AttributeError):
                return np.full(self.n_points, np.nan)
            return np.broadcast_to(np.asarray(values, dtype=np.float64), (self.n_points,)).copy()


def evaluate(expression: Expression, X: np.ndarray) -> np.ndarray:
    """Evaluate on the rows of X; never raises (NaN marks undefined points)."""
    return Evaluator(X)(expression)


def division_guard_mask(expression: Expression, X: np.ndarray) -> np.ndarray:
    """True at the points where some division's denominator has |d| < 1e-10.

    There the protected division replaces the denominator, so the value is an
    artefact of the guard rather than of the formula (e.g. x0 / (x1 - x1)).
    """
    evaluator = Evaluator(X)
    guarded = np.zeros(evaluator.n_points, dtype=bool)
    for position, token in enumerate(expression):
        if token == "/":
            start = subtree_end(expression, position + 1)
            denominator = evaluator(expression[start : subtree_end(expression, start)])
            guarded |= np.abs(denominator) < DIVISION_GUARD
    return guarded


def is_valid_prediction(values: np.ndarray) -> bool:
    """All finite and not huge."""
    with np.errstate(all="ignore"):
        return bool(np.all(np.abs(values) <= HUGE))  # False for NaN and inf too


# --------------------------------------------------------------------------
# Export


def _sympy_constant(value: float):
    import sympy  # here, not at the top: it costs every start 0.6 s and only exports need it

    return sympy.Integer(int(value)) if value.is_integer() and abs(value) < 1e15 else sympy.Float(value)


def to_sympy(expression: Expression):
    """A sympy expression with symbols x0..xN (log/sqrt of Abs, like evaluation)."""
    import sympy

    stack: list = []
    for token in reversed(expression):
        if token.__class__ is float:
            stack.append(_sympy_constant(token))
        elif token in OPERATORS:
            operands = [stack.pop() for _ in range(OPERATORS[token].arity)]
            stack.append(OPERATORS[token].to_sympy(*operands))
        else:
            stack.append(sympy.Symbol(token, real=True))
    return stack[0]


def simplified_string(expression: Expression, timeout_nodes: int = 60) -> str:
    """A sympy-simplified form for display (the raw text when too large)."""
    if len(expression) > timeout_nodes:
        return to_string(expression)
    import sympy

    try:
        return str(sympy.simplify(to_sympy(expression)))
    except Exception:  # sympy can fail on exotic trees; display only
        return to_string(expression)


# --------------------------------------------------------------------------
# Random generation


def random_leaf(stream, variables: Sequence[str], constants: Sequence[float], variable_prob: float = 0.7):
    """A variable with probability `variable_prob` (always without constants), else a constant."""
    if not constants or stream.random() < variable_prob:
        return stream.choice(variables)
    return stream.choice(constants)


def random_tree(
    stream,
    variables: Sequence[str],
    constants: Sequence[float],
    operators: Sequence[str],
    max_depth: int,
    leaf_prob: float = 0.3,
    variable_prob: float = 0.7,
) -> Expression:
    """Grow a random tree: a node becomes a leaf at max_depth or with prob leaf_prob.

    Grown depth-first with an explicit stack of the depths of the slots still
    to fill (the same draws, in the same order, as the recursive definition;
    mutation calls this tens of thousands of times per run).
    """
    random = stream.random
    tokens: list = []
    pending = [0]
    while pending:
        level = pending.pop()
        if level >= max_depth or random() < leaf_prob:
            if not constants or random() < variable_prob:
                tokens.append(variables[int(random() * len(variables))])
            else:
                tokens.append(constants[int(random() * len(constants))])
        else:
            symbol = operators[int(random() * len(operators))]
            tokens.append(symbol)
            pending.extend([level + 1] * ARITY[symbol])
    return tuple(tokens)
