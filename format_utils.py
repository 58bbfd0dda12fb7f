"""The one place that writes model-visible text: context, population, prompt, target.

The trace conversions (one-step and autoregressive datasets) and NeuralSR at
inference both build their prompts with `prompt_for_state`, so the text a
model is trained on and the text it is asked to continue are the same bytes
(prototype defect 1). The tokenizer (`tokenizer.py`) derives its vocabulary
from the constants defined here, so the formatter cannot emit a character or
word the vocabulary lacks.

Layout (SPEC "Traces and training data"; loss only on the target):

    <BOS><CONTEXT>{context}<POPULATION>{population}<TARGET>{target}<EOS>

Expressions are `expressions.to_string` with every space removed:
`((x0*x0)+1.0)`, `sin(x0)`, `(x0*-2.5)`, `(x0-1e-05)`;
`expression_parser.parse` reads this back exactly. With `parentheses=
"minimal"` (a data set's `--parentheses minimal`, recorded in its sidecar
and in every checkpoint trained on it) only the parentheses precedence needs
are kept: `x0*x0+1.0`, `(x0+1.0)*x1`, `x0-(x1-x2)`, 30% fewer tokens per
expression on BasicSR's traces. Full parentheses are the default (and the
shipped model's).

Population: the individuals in population order, each
`{expression}<FITNESS>{fitness}`, joined by `;` (one token; some separator is
needed because a fitness followed by a constant leaf, `-.11` then `1.0`,
would otherwise run together). The autoregressive target is the next
population's expressions joined the same way, then `<EOS>`.

Numbers (fitnesses and context statistics), `format_number`: 3 significant
digits, written positionally without a leading zero (`-.11`, `.00123`,
`12.3`, `1230`) or in short scientific form (`-1.23e-5`, `4.5e7`: no `+`, no
exponent padding), whichever is shorter, positional on a tie; trailing zeros
are dropped (`-.1`, not `-.100`); zero is `0`. Fitnesses are rounded to float32
first (`format_fitness`): traces store float32 and a live search float64, and
both must print the same. An invalid individual (fitness -inf, or any
non-finite value) is the single token `<INVALID>`. Fitness stays fitness
(-MSE - 0.01 * size), as SPEC says, so a solved size-11 tree reads `-.11`.

Context (`build_context`), fields written `key:value` with no separator
between fields (each key is one token ending in `:`, so it delimits itself):

    basic      gen:12vars:3ops:+-*/sinconsts:1.0
               generation, number of variables, binary then unary operators
               (registry symbols, concatenated), the constants as the
               expressions print them (so the model copies the same spelling),
               joined by `,`.
    rich       basic + range:{min},{max}mean:{m}var:{v}skew:{s}
               [mono:inc|dec|no]zc:{z}tv:{t}
               statistics of y over the finite rows of (X, y): population
               variance, skewness (0 for a constant y); a mean, variance or
               skew below 1e-9 of y's scale (max |y|, its square, 1) is
               rounding noise and written 0. Along a variable means
               with the points sorted by that variable. 1-D: mono is `inc`
               (y never decreases along x0 and rises somewhere), `dec`, or
               `no` (neither, or constant); zc is the number of sign changes
               of y along x0 (exact zeros skipped); tv is the total variation
               sum |y[i+1] - y[i]| along x0. d > 1: mono is omitted (y sorted
               by one variable is not a function of it) and zc and tv are
               given once per variable, `,`-joined in variable order.
    superrich  rich + plot:{rows joined by |}
               1-D: a scatter of y against x0 on a PLOT_ROWS x PLOT_COLUMNS
               grid, top row = highest y, `#` = at least one point in the
               cell, `_` = none. d > 1: one row per variable, PLOT_COLUMNS
               cells: the mean of y over the points in that equal-width bin of
               x_i as a level digit 0..PLOT_LEVELS-1 (0 = min y, top = max y
               over all points), `_` for an empty bin.
    Bins are equal-width between the minimum and maximum of the axis; a
    constant axis puts everything in the first bin / bottom level.

The context of a problem except `gen:` depends only on the problem, so it is
computed once (`problem_context`, `ContextCache`) and reused every generation.

Generated text goes back through `parse_generated` /
`parse_generated_population`, which return None for a malformed expression.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

import expressions as ex
from expression_parser import ParseError, parse

# --------------------------------------------------------------------------
# The alphabet: everything the formatter can emit. tokenizer.py builds its
# vocabulary from these names, so they are the single source for both.

BOS, EOS, PAD, UNK = "<BOS>", "<EOS>", "<PAD>", "<UNK>"
CONTEXT, POPULATION, FITNESS, TARGET = "<CONTEXT>", "<POPULATION>", "<FITNESS>", "<TARGET>"
INVALID = "<INVALID>"  # the fitness of an invalid individual
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, CONTEXT, POPULATION, FITNESS, TARGET, INVALID)

CONTEXT_TYPES: tuple[str, ...] = ("basic", "rich", "superrich")
PARENTHESES: tuple[str, ...] = ex.PARENTHESES  # how expressions are written: "full" (default) or "minimal"

INDIVIDUAL_SEPARATOR = ";"  # between individuals of a population
LIST_SEPARATOR = ","  # between the items of one context value
ROW_SEPARATOR = "|"  # between plot rows
PLOT_FILLED, PLOT_EMPTY = "#", "_"
PLOT_ROWS, PLOT_COLUMNS, PLOT_LEVELS = 6, 16, 8

# Context keys (one token each, colon included) and the words used as values.
KEYS = {
    "generation": "gen:",
    "n_vars": "vars:",
    "operators": "ops:",
    "constants": "consts:",
    "range": "range:",
    "mean": "mean:",
    "variance": "var:",
    "skew": "skew:",
    "monotonic": "mono:",
    "zero_crossings": "zc:",
    "total_variation": "tv:",
    "plot": "plot:",
}
MONOTONIC_WORDS = {"increasing": "inc", "decreasing": "dec", "neither": "no"}
CONTEXT_WORDS: tuple[str, ...] = (*KEYS.values(), *MONOTONIC_WORDS.values())

# Characters of numbers (constants as Python prints them, compact numbers)
# and of the layout; operator symbols and variable names come from the
# registry and `x{i}`.
NUMBER_CHARACTERS = "0123456789.e-+"
LAYOUT_CHARACTERS = "()" + INDIVIDUAL_SEPARATOR + LIST_SEPARATOR + ROW_SEPARATOR + PLOT_FILLED + PLOT_EMPTY

SIGNIFICANT_DIGITS = 3
FLOAT32_MAX = float(np.finfo(np.float32).max)
NOISE_LEVEL = 1e-9  # statistics below this fraction of y's scale are written 0


# --------------------------------------------------------------------------
# Expressions


def expression_to_model_text(expression, parentheses: str = "full") -> str:
    """A prefix tuple (or any text `parse` reads) as model text: the printed form without spaces."""
    if isinstance(expression, str):
        expression = parse(expression)
    return _tree_model_text(expression, parentheses)


# Conversions print every individual of every generation, and the same trees
# recur across generations (the elite, parents, duplicates): memoise. (A -0.0
# constant may print as 0.0 when an equal tree was seen first; the two are
# the same value everywhere, see operators.py.)
@lru_cache(maxsize=1 << 18)
def _tree_model_text(tree: tuple, parentheses: str) -> str:
    return ex.to_string(tree, parentheses).replace(" ", "")


def model_text_to_expression(text: str) -> tuple:
    """Model text back to a prefix tuple; raises expression_parser.ParseError."""
    return parse(text)


# --------------------------------------------------------------------------
# Numbers


def format_number(value: float, digits: int = SIGNIFICANT_DIGITS) -> str:
    """`value` to `digits` significant digits, shortest form (see module docstring)."""
    value = float(value)
    if not math.isfinite(value):
        return INVALID
    if value == 0:
        return "0"
    mantissa, exponent_text = f"{abs(value):.{digits - 1}e}".split("e")
    exponent = int(exponent_text)
    significant = mantissa.replace(".", "").rstrip("0")  # '110' -> '11'
    if exponent >= 0:
        whole = exponent + 1
        positional = significant.ljust(whole, "0")
        if len(significant) > whole:
            positional = f"{significant[:whole]}.{significant[whole:]}"
    else:
        positional = "." + "0" * (-exponent - 1) + significant
    scientific = significant[0] + ("." + significant[1:] if len(significant) > 1 else "") + f"e{exponent}"
    body = positional if len(positional) <= len(scientific) else scientific
    return ("-" if value < 0 else "") + body


@lru_cache(maxsize=1 << 16)
def format_fitness(value: float) -> str:
    """A fitness as model text: float32-rounded, 3 significant digits; `<INVALID>` when not finite."""
    if -FLOAT32_MAX <= value <= FLOAT32_MAX:  # no overflow possible: no errstate (a few us per call)
        rounded = np.float32(value)
    else:
        with np.errstate(over="ignore"):  # beyond float32 is -inf, as a stored trace has it
            rounded = np.float32(value)
    return format_number(float(rounded))


# --------------------------------------------------------------------------
# Population, prompt, target


def format_population(population: Sequence[tuple], fitnesses: Sequence[float], parentheses: str = "full") -> str:
    """`{expr}<FITNESS>{fitness}` per individual, in population order, joined by `;`."""
    if len(population) != len(fitnesses):
        raise ValueError(f"{len(population)} expressions but {len(fitnesses)} fitnesses")
    return INDIVIDUAL_SEPARATOR.join(
        expression_to_model_text(tree, parentheses) + FITNESS + format_fitness(fitness)
        for tree, fitness in zip(population, np.asarray(fitnesses, dtype=np.float64).tolist())
    )


def build_prompt(context: str, population_text: str) -> str:
    """`<BOS><CONTEXT>{context}<POPULATION>{population}<TARGET>`: what the model continues."""
    return f"{BOS}{CONTEXT}{context}{POPULATION}{population_text}{TARGET}"


def format_target(expression, parentheses: str = "full") -> str:
    """One-step target: `{expr}<EOS>`."""
    return expression_to_model_text(expression, parentheses) + EOS


def format_population_target(population: Sequence, parentheses: str = "full") -> str:
    """Autoregressive target: the whole next population, `;`-joined, then `<EOS>`."""
    return INDIVIDUAL_SEPARATOR.join(expression_to_model_text(tree, parentheses) for tree in population) + EOS


def _until_eos(text: str) -> str:
    """The generated text before the first <EOS>, without padding or a stray <BOS>."""
    return text.split(EOS, 1)[0].replace(PAD, "").replace(BOS, "").strip()


def parse_generated(text: str) -> tuple | None:
    """A generated one-step continuation (up to <EOS>) as a prefix tuple; None when malformed."""
    try:
        return parse(_until_eos(text))
    except ParseError:
        return None


def parse_generated_population(text: str) -> list[tuple | None]:
    """A generated autoregressive continuation as one entry per `;`-separated individual (None = malformed)."""
    body = _until_eos(text)
    if not body:
        return []
    results: list[tuple | None] = []
    for piece in body.split(INDIVIDUAL_SEPARATOR):
        try:
            results.append(parse(piece))
        except ParseError:
            results.append(None)
    return results


# --------------------------------------------------------------------------
# Context


def _join(values) -> str:
    return LIST_SEPARATOR.join(values)


def _finite_rows(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    keep = np.isfinite(y) & np.isfinite(X).all(axis=1)
    return X[keep], y[keep]


def _basic_fields(n_vars: int, binary_operators, unary_operators, constants) -> str:
    operators = "".join(binary_operators) + "".join(unary_operators)
    constants_text = _join(ex.format_constant(c) for c in constants)
    return f"{KEYS['n_vars']}{n_vars}{KEYS['operators']}{operators}{KEYS['constants']}{constants_text}"


def _sign_changes(values: np.ndarray) -> int:
    signs = np.sign(values)
    signs = signs[signs != 0]
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def _monotonic_word(y_sorted: np.ndarray) -> str:
    steps = np.diff(y_sorted)
    if steps.size and (steps >= 0).all() and (steps > 0).any():
        return MONOTONIC_WORDS["increasing"]
    if steps.size and (steps <= 0).all() and (steps < 0).any():
        return MONOTONIC_WORDS["decreasing"]
    return MONOTONIC_WORDS["neither"]


def _denoise(value: float, scale: float) -> float:
    """0 for a value that is rounding noise next to `scale` (a symmetric y's mean is 1e-17, not 0)."""
    return 0.0 if abs(value) <= NOISE_LEVEL * scale else value


def _statistics_fields(X: np.ndarray, y: np.ndarray) -> str:
    """The rich fields: range, mean, var, skew, [mono], zc, tv (see module docstring)."""
    if len(y) == 0:  # no finite point: every statistic is invalid
        return KEYS["range"] + _join([INVALID, INVALID]) + "".join(
            KEYS[name] + INVALID for name in ("mean", "variance", "skew", "zero_crossings", "total_variation")
        )
    scale = float(np.abs(y).max())
    mean = _denoise(float(y.mean()), scale)
    variance = _denoise(float(y.var()), scale * scale)
    std = math.sqrt(variance)
    skew = _denoise(float(np.mean(((y - mean) / std) ** 3)), 1.0) if std > 0 else 0.0
    orders = [np.argsort(X[:, i], kind="stable") for i in range(X.shape[1])]
    along = [y[order] for order in orders]
    text = (
        f"{KEYS['range']}{format_number(y.min())}{LIST_SEPARATOR}{format_number(y.max())}"
        f"{KEYS['mean']}{format_number(mean)}{KEYS['variance']}{format_number(variance)}"
        f"{KEYS['skew']}{format_number(skew)}"
    )
    if X.shape[1] == 1:
        text += KEYS["monotonic"] + _monotonic_word(along[0])
    text += KEYS["zero_crossings"] + _join(str(_sign_changes(values)) for values in along)
    text += KEYS["total_variation"] + _join(format_number(np.abs(np.diff(values)).sum()) for values in along)
    return text


def _bins(values: np.ndarray, count: int) -> np.ndarray:
    """Equal-width bin index in [0, count) of each value between min and max (all 0 when constant)."""
    low, high = values.min(), values.max()
    if not high > low:
        return np.zeros(len(values), dtype=np.int64)
    scaled = (values - low) / (high - low) * count
    return np.minimum(scaled.astype(np.int64), count - 1)


def plot_rows(X, y) -> list[str]:
    """The superrich plot rows: a 1-D scatter grid, or one level row per variable (see module docstring)."""
    X, y = _finite_rows(X, y)
    if len(y) == 0:
        n_rows = PLOT_ROWS if X.shape[1] == 1 else X.shape[1]
        return [PLOT_EMPTY * PLOT_COLUMNS] * n_rows
    if X.shape[1] == 1:
        grid = np.zeros((PLOT_ROWS, PLOT_COLUMNS), dtype=bool)
        grid[PLOT_ROWS - 1 - _bins(y, PLOT_ROWS), _bins(X[:, 0], PLOT_COLUMNS)] = True
        return ["".join(PLOT_FILLED if cell else PLOT_EMPTY for cell in row) for row in grid]
    low, high = y.min(), y.max()
    rows = []
    for column in X.T:
        columns = _bins(column, PLOT_COLUMNS)
        cells = []
        for bin_index in range(PLOT_COLUMNS):
            inside = y[columns == bin_index]
            if inside.size == 0:
                cells.append(PLOT_EMPTY)
            elif high > low:
                level = int((inside.mean() - low) / (high - low) * PLOT_LEVELS)
                cells.append(str(min(max(level, 0), PLOT_LEVELS - 1)))
            else:
                cells.append("0")
        rows.append("".join(cells))
    return rows


@dataclass(frozen=True)
class ProblemContext:
    """The part of a context fixed for a problem; `text(generation)` is the full context."""

    context_type: str
    fixed_text: str

    def text(self, generation: int) -> str:
        return f"{KEYS['generation']}{int(generation)}{self.fixed_text}"


def problem_context(
    context_type: str, n_vars: int, binary_operators, unary_operators, constants, X=None, y=None
) -> ProblemContext:
    """Compute the generation-independent context once per problem (statistics and plot included)."""
    if context_type not in CONTEXT_TYPES:
        raise ValueError(f"unknown context_type {context_type!r}; known: {', '.join(CONTEXT_TYPES)}")
    text = _basic_fields(n_vars, binary_operators, unary_operators, constants)
    if context_type != "basic":
        if X is None or y is None:
            raise ValueError(f"context_type {context_type!r} needs X and y")
        X, y = _finite_rows(X, y)
        text += _statistics_fields(X, y)
        if context_type == "superrich":
            text += KEYS["plot"] + ROW_SEPARATOR.join(plot_rows(X, y))
    return ProblemContext(context_type, text)


def build_context(
    context_type: str, generation: int, n_vars: int, binary_operators, unary_operators, constants, X=None, y=None
) -> str:
    """The context text of one generation (computes everything; prefer `ContextCache` in loops)."""
    return problem_context(context_type, n_vars, binary_operators, unary_operators, constants, X, y).text(generation)


def _array_digest(values) -> bytes:
    array = np.ascontiguousarray(values, dtype=np.float64)
    digest = hashlib.blake2b(repr(array.shape).encode(), digest_size=16)
    digest.update(array.tobytes())
    return digest.digest()


class ContextCache:
    """ProblemContexts keyed by the problem's content (X and y hashed), least recently used dropped first.

    Hashing X and y costs microseconds; the statistics and plot it saves cost
    far more, and a content key cannot go stale the way an id() key can.
    """

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, ProblemContext] = OrderedDict()

    def get(self, context_type, n_vars, binary_operators, unary_operators, constants, X=None, y=None) -> ProblemContext:
        key = (context_type, int(n_vars), tuple(binary_operators), tuple(unary_operators),
               tuple(ex.format_constant(c) for c in constants))  # -0.0 and 0.0 print differently
        if context_type != "basic":
            key += (None if X is None else _array_digest(X), None if y is None else _array_digest(y))
        entry = self._entries.get(key)
        if entry is None:
            entry = problem_context(context_type, n_vars, binary_operators, unary_operators, constants, X, y)
            self._entries[key] = entry
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return entry


_DEFAULT_CACHE = ContextCache()


# --------------------------------------------------------------------------
# The one path from a search state to a prompt


@dataclass
class PromptState:
    """Everything a prompt depends on: one generation of one search on one problem."""

    generation: int
    population: list  # prefix tuples, in population order
    fitnesses: Sequence[float]  # -inf (or any non-finite value) = invalid
    n_vars: int
    binary_operators: tuple[str, ...]
    unary_operators: tuple[str, ...]
    constants: tuple[float, ...]
    X: np.ndarray | None = field(default=None, repr=False)
    y: np.ndarray | None = field(default=None, repr=False)
    context_type: str = "basic"
    parentheses: str = "full"  # how expressions are written (PARENTHESES)


def context_for_state(state: PromptState, cache: ContextCache | None = None) -> str:
    """The context text of a state (the part of its prompt between <CONTEXT> and <POPULATION>)."""
    context = (cache or _DEFAULT_CACHE).get(
        state.context_type, state.n_vars, state.binary_operators, state.unary_operators,
        state.constants, state.X, state.y,
    )
    return context.text(state.generation)


def prompt_for_state(state: PromptState, cache: ContextCache | None = None) -> str:
    """The prompt for a state; used by the trace conversions and by NeuralSR alike.

    NeuralSR builds the same prompt as token ids from cached pieces
    (token_codec.PromptEncoder); a test checks the ids against this text.
    """
    return build_prompt(context_for_state(state, cache),
                        format_population(state.population, state.fitnesses, state.parentheses))
