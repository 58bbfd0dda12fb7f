"""Parse expression text into ttsr's prefix token tuples.

`parse` reads

- everything `expressions.to_string` prints: `((x0 * x0) + 1.0)`, `sin(x0)`,
  `(x0 - -2.5)`, `1e-05`, `-1.5e+20`;
- ordinary infix with the registry's precedences, all binary operators
  left-associative: `x0*x0 + 1` -> ('+', '*', 'x0', 'x0', 1.0),
  `x0 - x1 - x2` -> ('-', '-', 'x0', 'x1', 'x2');
- integer literals as floats (`2` -> 2.0), redundant parentheses and any
  whitespace (Unicode whitespace included);
- function-call spellings: the registry's unary operators `sin(...)` and the
  aliases `add(a, b)`, `sub`, `mul`, `div` (`operators.ALIASES`);
- variables `x0`, `x12` and the prototype's `x_1` (-> 'x1'). Names with a
  leading zero (`x01`, `x_01`) are rejected, as `expressions.is_well_formed`
  rejects them.

Unary minus: directly before a number literal it makes a negative constant
(`-2.5` -> -2.5, `- 2` -> -2.0); before anything else it multiplies by -1
(`-x0` -> ('*', -1.0, 'x0'), `-(x0 + 1)` -> ('*', -1.0, '+', 'x0', 1.0)),
binding tighter than every binary operator. Unary plus is not accepted.

There is no power operator: `^` and `**` are rejected (write `x0 * x0`).
Constants must be finite: `nan`, `inf` and literals that overflow (`1e999`)
are rejected.

Every failure on a string input is a `ParseError` (a ValueError) carrying the
0-based character `position` (len(text) at a premature end), e.g.
"unexpected ')' at position 6 in '(x0 + ))'"; no other exception escapes for
any string. A non-str argument raises TypeError. The parser is iterative (shunting-yard),
so arbitrarily deep nesting cannot exhaust the Python stack.

Operator symbols, arities, precedences and aliases all come from
`operators`; only the meaning of unary minus ties this module to the
registry's '-' and '*'.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Iterable

import expressions
from operators import ALIASES, BINARY_OPERATORS, OPERATORS, UNARY_OPERATORS

__all__ = ["ParseError", "parse", "parse_many", "main"]

_MINUS = "-"  # the binary operator that doubles as unary minus
_TIMES = "*"  # unary minus on a non-literal is multiplication by -1.0
_NEGATE = "\x00neg"  # operator-stack marker for unary minus (never a registry symbol)
_OPEN = "("  # operator-stack marker for an open parenthesis

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VARIABLE = re.compile(r"x_?(0|[1-9][0-9]*)\Z")
_LEADING_ZERO_VARIABLE = re.compile(r"x_?0[0-9]+\Z")
_NON_FINITE_NAMES = {"nan", "inf", "infinity"}
_POWER_SPELLINGS = [s for s in ("**", "^") if s not in OPERATORS]

# Function-call spellings -> registry symbol: the unary operators (sin, exp,
# ...), binary symbols that are identifiers, and all aliases (add, mul, ...).
_FUNCTIONS: dict[str, str] = {
    **{symbol: symbol for symbol in UNARY_OPERATORS},
    **{symbol: symbol for symbol in BINARY_OPERATORS if _IDENTIFIER.match(symbol)},
    **ALIASES,
}
# Infix spellings: every binary symbol (an identifier symbol is infix only
# after an operand, e.g. `(x0 max x1)`, and a function before '(').
_INFIX: dict[str, int] = {symbol: op.precedence for symbol, op in BINARY_OPERATORS.items()}
_ARITY: dict[str, int] = {symbol: op.arity for symbol, op in OPERATORS.items()}

# Binding strength on the operator stack: open parens never pop, unary minus
# pops before any binary operator.
_PRECEDENCE: dict[str, int] = {**_INFIX, _OPEN: -1, _NEGATE: max(_INFIX.values(), default=0) + 1}
_CAN_NEGATE = _MINUS in _INFIX and _TIMES in _INFIX


def _token_pattern() -> re.Pattern:
    """One regex whose single group is the next token (leading space skipped).

    Tokens never contain whitespace, parentheses or commas. Alternatives are
    ordered by how often they occur in printed expressions, which makes
    `findall` about three times faster than the natural order.
    """
    symbols = sorted(
        (s for s in [*OPERATORS, *_POWER_SPELLINGS] if not _IDENTIFIER.match(s)),
        key=len,
        reverse=True,  # longest first, so '**' wins over '*'
    )
    number = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    name = r"[A-Za-z_][A-Za-z0-9_]*"
    return re.compile(
        rf"\s*([()]|{name}|{'|'.join(map(re.escape, symbols))}|,|{number}|\S)"
    )


_TOKENS = _token_pattern()

# Token kinds. Fixed spellings are looked up in _KINDS; numbers, rare
# variable spellings and junk are classified by their first character.
_VARIABLE_TOKEN, _NUMBER, _NAME, _FUNCTION, _INFIX_SYMBOL, _LPAREN, _RPAREN, _COMMA, _OTHER = range(9)
_KINDS: dict[str, int] = {
    **{f"x{i}": _VARIABLE_TOKEN for i in range(100)},
    **{spelling: _FUNCTION for spelling in _FUNCTIONS},
    **{symbol: _INFIX_SYMBOL for symbol in _INFIX if symbol not in _FUNCTIONS},
    "(": _LPAREN,
    ")": _RPAREN,
    ",": _COMMA,
}
_NUMBER_START = frozenset("0123456789.")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")


def _classify(token: str) -> int:
    first = token[0]
    if first in _NUMBER_START:
        return _NUMBER
    if first in _NAME_START:
        return _NAME
    return _OTHER


class ParseError(ValueError):
    """Text that is not an expression.

    `position` is the 0-based index of the offending character (len(text)
    for a premature end of input), `detail` the message without the
    location, `text` the input. str() is one line: the text is quoted with
    repr and cut around the position when long.
    """

    def __init__(self, message: str, position: int, text: str):
        super().__init__(f"{message} at position {position} in {_excerpt(text, position)}")
        self.detail = message
        self.position = position
        self.text = text

    def __reduce__(self):  # picklable across worker processes
        return (self.__class__, (self.detail, self.position, self.text))


def _excerpt(text: str, position: int, width: int = 40) -> str:
    """The text, quoted; long texts are cut to a window around `position`."""
    if len(text) <= 2 * width:
        return repr(text)
    start = max(0, position - width)
    end = min(len(text), position + width)
    return repr(("..." if start else "") + text[start:end] + ("..." if end < len(text) else ""))


def _error(text: str, index: int, message: str | None = None) -> ParseError:
    """ParseError at token number `index` (past the last token: end of input).

    Positions are recomputed here, on the error path only, so the hot path
    can tokenise with `findall`, which yields no positions.
    """
    for number, match in enumerate(_TOKENS.finditer(text)):
        if number == index:
            token = match.group(1)
            if message is None:
                message = _describe_unexpected(token)
            return ParseError(message, match.start(1), text)
    return ParseError(message or "unexpected end of input", len(text), text)


def _describe_unexpected(token: str) -> str:
    if token in _POWER_SPELLINGS:
        return f"unsupported power operator {token!r}"
    if _classify(token) == _NAME:
        if token.lower() in _NON_FINITE_NAMES:
            return f"non-finite constant {token!r} is not allowed"
        if _LEADING_ZERO_VARIABLE.match(token):
            return f"invalid variable name {token!r} (leading zero)"
        if _variable(token) is None and token not in _KINDS:
            return f"unknown name {token!r}"
    return f"unexpected {token!r}"


def _variable(name: str) -> str | None:
    """'x3' / 'x_3' -> 'x3'; None if `name` is not a variable."""
    match = _VARIABLE.match(name)
    return "x" + match.group(1) if match else None


def _number(text: str, token: str, index: int) -> float:
    """A number token's finite float value."""
    try:
        value = float(token)
    except ValueError:  # a lone '.'
        raise _error(text, index) from None
    if not math.isfinite(value):  # 1e999 overflows to inf (nan cannot be spelled as a number)
        raise _error(text, index, "non-finite constant (overflow)")
    return value


def _apply(operator: str, operands: list) -> None:
    """Pop the operator's operands off `operands` and push the combined node.

    Nodes are nested tuples (symbol, child, ...); leaves are str/float.
    Building nested nodes is O(1) per operator; one flatten at the end keeps
    the whole parse linear even for long left-associative chains.
    """
    if operator is _NEGATE:
        operands[-1] = (_TIMES, -1.0, operands[-1])
    else:
        right = operands.pop()
        operands[-1] = (operator, operands[-1], right)


def _flatten(root) -> tuple:
    """Nested (symbol, children...) nodes -> prefix token tuple, iteratively."""
    if root.__class__ is not tuple:
        return (root,)
    tokens = []
    append = tokens.append
    pending = [root]
    pop = pending.pop
    push = pending.append
    while pending:
        node = pop()
        if node.__class__ is tuple:
            append(node[0])
            if len(node) == 3:
                push(node[2])
                push(node[1])
            else:
                pending.extend(reversed(node[1:]))
        else:
            append(node)
    return tuple(tokens)


def parse(text: str) -> tuple:
    """Parse expression text into a prefix token tuple (see module docstring).

    Raises ParseError (with .position) for any string that is not a valid
    expression, TypeError for a non-str argument.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() expects str, not {type(text).__name__}")
    tokens = _TOKENS.findall(text)
    operands: list = []  # parsed subtrees (nested-tuple nodes)
    operators: list[str] = []  # pending binary operators, _NEGATE and _OPEN markers
    calls: list = []  # per open paren: None, or a call frame [symbol, args done, token index, spelling]
    call = None  # the frame of a function name whose '(' comes next
    expect_operand = True
    precedence = _PRECEDENCE
    kinds = _KINDS
    steps = enumerate(tokens)

    for index, token in steps:
        kind = kinds.get(token)
        if kind is None:
            kind = _classify(token)
        if expect_operand:
            if kind == _VARIABLE_TOKEN:
                operands.append(token)
                expect_operand = False
            elif kind == _LPAREN:
                operators.append(_OPEN)
                calls.append(call)
                call = None
            elif kind == _NUMBER:
                operands.append(_number(text, token, index))
                expect_operand = False
            elif kind == _NAME:
                variable = _variable(token)
                if variable is None:
                    raise _error(text, index)
                operands.append(variable)
                expect_operand = False
            elif kind == _FUNCTION:
                if index + 1 == len(tokens) or tokens[index + 1] != "(":
                    raise _error(text, index + 1, f"expected '(' after {token!r}")
                call = [_FUNCTIONS[token], 0, index, token]
            elif token == _MINUS and _CAN_NEGATE:
                following = tokens[index + 1] if index + 1 < len(tokens) else ")"
                if following[0] in _NUMBER_START:  # '-' before a literal: a negative constant
                    next(steps)
                    operands.append(-_number(text, following, index + 1))
                    expect_operand = False
                else:
                    operators.append(_NEGATE)
            else:
                raise _error(text, index)
        elif kind == _INFIX_SYMBOL or (kind == _FUNCTION and token in _INFIX):
            strength = _INFIX[token]
            while operators and precedence[operators[-1]] >= strength:
                _apply(operators.pop(), operands)
            operators.append(token)
            expect_operand = True
        elif (kind == _RPAREN or kind == _COMMA) and calls:
            while operators[-1] is not _OPEN:
                _apply(operators.pop(), operands)
            frame = calls[-1]
            if kind == _RPAREN:
                operators.pop()
                calls.pop()
                if frame is not None:
                    frame[1] += 1
                    _close_call(text, frame, operands, index)
            elif frame is None:  # a comma outside a function call
                raise _error(text, index)
            else:
                frame[1] += 1
                if frame[1] >= _ARITY[frame[0]]:
                    raise _arity_error(text, frame, "more", index)
                expect_operand = True
        else:
            raise _error(text, index)

    if expect_operand:
        raise _error(text, len(tokens))
    if calls:
        opened = _error(text, _innermost_open_paren(tokens)).position
        raise _error(text, len(tokens), f"unclosed '(' (opened at position {opened})")
    while operators:
        _apply(operators.pop(), operands)
    return _flatten(operands[0])


def _close_call(text: str, frame: list, operands: list, index: int) -> None:
    """Replace a completed call's arguments on `operands` by its node."""
    symbol, n_args = frame[0], frame[1]
    arity = _ARITY[symbol]
    if n_args != arity:
        raise _arity_error(text, frame, n_args, index)
    node = (symbol, *operands[-arity:])
    del operands[-arity:]
    operands.append(node)


def _arity_error(text: str, frame: list, got, index: int) -> ParseError:
    arity = _ARITY[frame[0]]
    plural = "s" if arity != 1 else ""
    return _error(text, index, f"{frame[3]!r} takes {arity} argument{plural}, got {got}")


def _innermost_open_paren(tokens: list) -> int:
    """Token index of the innermost '(' still open at the end of input."""
    depth = 0
    for index in range(len(tokens) - 1, -1, -1):
        if tokens[index] == ")":
            depth += 1
        elif tokens[index] == "(":
            if depth == 0:
                return index
            depth -= 1
    return 0


def parse_many(texts: Iterable[str]) -> list[tuple | None]:
    """Parse each text; None for those that do not parse (model outputs)."""
    results: list[tuple | None] = []
    for text in texts:
        try:
            results.append(parse(text))
        except ParseError:
            results.append(None)
    return results


USAGE = "usage: python expression_parser.py EXPRESSION  (e.g. \"x0*x0 + 1\")"


def main(argv: list[str] | None = None) -> int:
    """CLI: print canonical form, size, depth and sympy-simplified form.

    The arguments are joined with spaces, so `x0 * x0 + 1` needs no quoting
    beyond the shell's; a leading `--` is dropped so `-- -x0` works.
    Bad input prints one `error: ...` line on stderr and returns 2.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not args:
        print(f"error: no expression given; {USAGE}", file=sys.stderr)
        return 2
    try:
        expression = parse(" ".join(args))
    except ParseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"expression: {expressions.to_string(expression)}")
    print(f"size: {expressions.size(expression)}")
    print(f"depth: {expressions.depth(expression)}")
    print(f"simplified: {expressions.simplified_string(expression)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
