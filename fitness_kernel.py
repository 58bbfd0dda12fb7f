"""Fast scoring of many expressions on one data set: a compiled stack machine.

BasicSR scores tens of thousands of small trees per second. A numpy ufunc
call on 200 points costs about a microsecond here, so evaluating a 15-node
tree with numpy (`expressions.Evaluator`, the readable reference) takes
~20 microseconds, more than the whole budget of one child. This module
encodes trees as integer opcodes and scores a whole batch in one call of a
numba-compiled loop; results equal the numpy reference (tested) up to
floating-point rounding of sin/cos/exp/log between libm implementations.

Without numba installed the same interface falls back to the numpy
reference, slower but identical in behaviour.

Opcodes: operators by their position in OPCODES; constants are
CONSTANT_BASE + index into a per-scorer constant table; variables are
VARIABLE_BASE + column index.
"""

from __future__ import annotations

import math

import numpy as np

from expressions import HUGE, Evaluator
from operators import DIVISION_GUARD, EXP_CLIP, OPERATORS

# The compiled kernel implements these symbols in this order; a test checks
# that every operator of the registry is here.
OPCODES = ("+", "-", "*", "/", "sin", "cos", "exp", "log", "sqrt", "abs")
CONSTANT_BASE = 1 << 16
VARIABLE_BASE = 1 << 24

try:  # numba is a speed-up, not a requirement
    import numba
except ImportError:  # pragma: no cover - exercised on machines without numba
    numba = None


def _sse_batch(codes, starts, rows, n_vars, y, slots, out):
    """out[t] = sum of squared residuals of tree t, or inf when it is invalid.

    `rows` holds the data columns (rows 0..n_vars-1), one row per constant,
    then one work row per stack slot. The stack holds row numbers, not
    values: a leaf pushes the row it names (no copy of 200 values), and an
    operator writes its result into the work row of the slot the result
    takes. Leaves are half the nodes, so this saves half the row writes.
    """
    n_points = y.shape[0]
    work = rows.shape[0] - slots.shape[0]  # the first work row
    for tree in range(starts.shape[0] - 1):
        top = 0
        for position in range(starts[tree + 1] - 1, starts[tree] - 1, -1):
            code = codes[position]
            if code >= VARIABLE_BASE:
                slots[top] = code - VARIABLE_BASE
                top += 1
            elif code >= CONSTANT_BASE:
                slots[top] = n_vars + code - CONSTANT_BASE
                top += 1
            elif code < 4:  # binary: left operand on top of the stack
                left = rows[slots[top - 1]]
                right = rows[slots[top - 2]]
                result = rows[work + top - 2]  # may be `right` itself: each i is read before it is written
                if code == 0:
                    for i in range(n_points):
                        result[i] = left[i] + right[i]
                elif code == 1:
                    for i in range(n_points):
                        result[i] = left[i] - right[i]
                elif code == 2:
                    for i in range(n_points):
                        result[i] = left[i] * right[i]
                else:
                    for i in range(n_points):
                        d = right[i]
                        if abs(d) < DIVISION_GUARD:
                            d = -DIVISION_GUARD if d < 0 else DIVISION_GUARD
                        result[i] = left[i] / d
                top -= 1
                slots[top - 1] = work + top - 1
            else:
                operand = rows[slots[top - 1]]
                result = rows[work + top - 1]
                for i in range(n_points):
                    v = operand[i]
                    if code == 4:
                        v = math.sin(v)
                    elif code == 5:
                        v = math.cos(v)
                    elif code == 6:
                        v = math.exp(min(max(v, -EXP_CLIP), EXP_CLIP))
                    elif code == 7:
                        v = math.log(abs(v)) if v != 0.0 else -math.inf
                    elif code == 8:
                        v = math.sqrt(abs(v))
                    else:
                        v = abs(v)
                    result[i] = v
                slots[top - 1] = work + top - 1
        prediction = rows[slots[0]]
        sse = 0.0
        for i in range(n_points):
            v = prediction[i]
            if not abs(v) <= HUGE:  # also false for NaN
                sse = math.inf
                break
            r = v - y[i]
            sse += r * r
        out[tree] = sse


if numba is not None:
    _sse_batch_compiled = numba.njit(cache=True, nogil=True, error_model="numpy")(_sse_batch)
else:  # pragma: no cover
    _sse_batch_compiled = None


class BatchScorer:
    """Sum of squared errors of many expressions against fixed (X, y)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, use_compiled: bool | None = None):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        self.columns = np.ascontiguousarray(X.T)
        self.n_vars = X.shape[1]
        self.compiled = (_sse_batch_compiled is not None) if use_compiled is None else use_compiled
        self._reference = Evaluator(X)
        self._codes: dict = {symbol: OPCODES.index(symbol) for symbol in OPCODES}
        self._codes.update({f"x{i}": VARIABLE_BASE + i for i in range(self.n_vars)})
        self._constants: list[float] = []
        self._slots = np.empty(32, dtype=np.int64)  # the kernel's stack (row numbers)
        self._rows = self._kernel_rows()

    def _code(self, token) -> int:
        code = self._codes.get(token)
        if code is None:
            if token.__class__ is not float:
                raise KeyError(token)  # unknown variable or operator
            code = self._codes[token] = CONSTANT_BASE + len(self._constants)
            self._constants.append(token)
            self._rows = self._kernel_rows()
        return code

    def _kernel_rows(self) -> np.ndarray:
        """The kernel's rows: data columns, one row per constant, one work row per stack slot."""
        n_points = len(self.y)
        constants = np.repeat(np.array(self._constants, dtype=np.float64)[:, None], n_points, axis=1)
        work = np.empty((len(self._slots), n_points))
        return np.ascontiguousarray(np.concatenate([self.columns, constants.reshape(-1, n_points), work]))

    def sse(self, trees: list[tuple]) -> np.ndarray:
        """Sum of squared residuals per tree; inf marks an invalid tree."""
        if not self.compiled:
            return np.array([self._reference_sse(tree) for tree in trees])
        codes: list[int] = []
        starts = [0]
        invalid = []
        longest = 0
        code_of = self._codes
        for index, tree in enumerate(trees):
            try:
                codes += [code_of[token] for token in tree]
            except KeyError:  # a new constant (registered here) or an unknown token
                try:
                    codes += [self._code(token) for token in tree]
                except KeyError:
                    invalid.append(index)
            starts.append(len(codes))
            longest = max(longest, len(tree))
        if longest > len(self._slots):
            self._slots = np.empty(longest, dtype=np.int64)
            self._rows = self._kernel_rows()
        out = np.empty(len(trees))
        _sse_batch_compiled(
            np.array(codes, dtype=np.int32),
            np.array(starts, dtype=np.int64),
            self._rows,
            self.n_vars,
            self.y,
            self._slots,
            out,
        )
        if invalid:
            out[invalid] = math.inf
        return out

    def _reference_sse(self, tree: tuple) -> float:
        predictions = self._reference(tree)
        if not np.all(np.abs(predictions) <= HUGE):
            return math.inf
        residual = predictions - self.y
        return float(residual @ residual)


def check_registry_coverage() -> list[str]:
    """Registry operators the compiled kernel does not implement (should be empty)."""
    return [symbol for symbol in OPERATORS if symbol not in OPCODES]
