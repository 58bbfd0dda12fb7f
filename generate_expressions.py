"""Generate synthetic training expressions with sampled data (X, y).

Our own implementation of the distribution of Kamienny et al. 2022
("End-to-end symbolic regression with transformers"). Candidate number i is
drawn from its own RandomStream seeded by derive_seed(seed, i):

1. Input dimension d ~ U{1..max_vars}. With `n_binary_ops=K` fixed,
   d ~ U{1..min(max_vars, K+1)} instead, since K operators give K+1 leaves.
2. Binary operator count b. With s = max(1, round_half_up(4 * complexity)),
   b ~ U{0..s + s*d - 1} conditioned on b >= d - 1 (a tree needs d leaves to
   hold every variable), i.e. b ~ U{d-1..s + s*d - 1}; conditioning keeps d
   uniform, where rejecting or bumping b would not. `n_binary_ops` fixes b.
3. Shape: uniform over all binary trees with b operator nodes (Lample &
   Charton 2019 sampling: in prefix order, the number k of empty slots that
   become leaves before the next operator is drawn with probability
   D(e-k+1, b'-1) / D(e, b'), where D(e, n) = e/(2n+e) * C(2n+e, n) counts
   the trees completing e empty slots with n operators). Operators are
   uniform over `binary_ops`.
4. Leaves: each variable x0..x{d-1} goes to a distinct random leaf; every
   other leaf is a constant from `constants` with probability
   `constant_prob` (0.2; never when the list is empty), else a uniform
   variable.
5. Unary operators (only when `unary_ops` is given): every node except a
   constant leaf is wrapped, independently with probability `unary_prob`
   (0.2), in one unary operator uniform over `unary_ops`.
6. Points: n ~ U{min(5d, 200)..200} (or `n_points`). X is a mixture of
   k ~ U{1..9} clusters with weights ~ U(0, 1) (normalised; counts are
   multinomial). A cluster is Gaussian or a uniform box of unit variance
   (50/50), times a per-dimension scale ~ U(0.1, 1), times a random orthogonal
   matrix (QR of a Gaussian matrix, signs fixed so it is Haar distributed),
   plus a centre ~ N(0, I). Rows are shuffled; each column is then
   standardised to zero mean and unit variance and X is rounded to float32.
7. y = evaluate(expression, X) in float64 on the float32 X. Points with a
   non-finite value or |y| > HUGE are dropped and y is recomputed on the rows
   kept, so evaluating the stored expression on the stored X reproduces the
   stored y exactly (after rounding to float32).

Rejections, checked in this order (counts are in the metadata):
benchmark (equivalent to a benchmark problem, `problems.matches_benchmark`;
off with `allow_benchmark`), non_finite (no point left), division_by_zero
(no point left where every division's denominator has |d| >= 1e-10: the
values would be the protected division's artefacts, as in x0 / (x1 - x1);
points where the guard engages are dropped like non-finite ones), too_few_points
(fewer than max(5, half the points) left), constant_output (the float32 y
spans at most 1e-6 of its largest magnitude; every expression uses all its
variables, so this means it cancels out), duplicate (same evaluation
fingerprint and d as an accepted expression: values on 32 fixed probe points
rounded to 30 significant bits).

Workers compute chunks of candidates; the parent deduplicates in candidate
order and stops at the N-th acceptance, so the records are identical for any
worker count. Metadata: `file_io.make_metadata` plus `binary_operators`,
`unary_operators`, `constants`, `n_expressions`, `n_candidates`,
`rejections`, and `run` (workers, seconds, throughput). Everything but
`command`, `timestamp` and `run` is identical for any worker count.

Records (file kind 'expressions'): dicts {"id", "expression" (printed by
expressions.to_string), "n_vars", "X" (float32, n x n_vars), "y" (float32, n)}.

File name: {arith|full}_{count}_c{round(10c):02d}[_b{K}]_{UTC timestamp}.pkl.gz
where count is file_io.format_count's (1k, 2.5k, 1M; 1234 stays 1234);
'full' when unary operators are used.

    python generate_expressions.py --n_expressions 100000 --workers 8
    python generate_expressions.py --unary_ops sin,cos,exp --demo
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime
import hashlib
import itertools
import math
import sys
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

import file_io
import parallel
from expressions import HUGE, Evaluator, division_guard_mask, to_string
from operators import ALIASES, check_operators
from problems import matches_benchmark
from progress import Progress
from random_stream import RandomStream, make_generator

FILE_KIND = "expressions"
DEFAULT_OUTPUT_DIR = "datasets/expressions"
REJECTION_REASONS = ("benchmark", "non_finite", "division_by_zero", "too_few_points", "constant_output", "duplicate")

MAX_POINTS = 200
POINTS_PER_VARIABLE = 5  # n_points >= min(5 d, MAX_POINTS)
MIN_POINTS = 5
# The largest input dimension: 5 points per variable still fit in MAX_POINTS.
# (Above it the run slows to a crawl: d >= 1000 never produced a file.)
MAX_VARS = MAX_POINTS // POINTS_PER_VARIABLE
MAX_CLUSTERS = 9
SCALE_RANGE = (0.1, 1.0)
CONSTANT_RANGE_TOLERANCE = 1e-6  # y is constant when its range is below this relative to max|y|

FINGERPRINT_POINTS = 32
FINGERPRINT_SEED = 20261123
FINGERPRINT_BITS = 30  # significant bits kept per value

CHUNK_SIZE = 64  # candidates per worker task


class GenerationError(RuntimeError):
    """Too many candidates were tried without reaching the requested count."""


@dataclass(frozen=True)
class ExpressionParams:
    """Everything besides count and seed that determines the generated data."""

    binary_ops: tuple[str, ...] = ("+", "-", "*")
    unary_ops: tuple[str, ...] = ()
    complexity: float = 0.5
    max_vars: int = 10
    n_binary_ops: int | None = None
    constants: tuple[float, ...] = (1.0,)
    constant_prob: float = 0.2
    unary_prob: float = 0.2
    n_points: int | None = None
    allow_benchmark: bool = False

    def __post_init__(self):
        binary, unary = check_operators(self.binary_ops, self.unary_ops)
        if not binary:
            raise ValueError("at least one binary operator is required")
        object.__setattr__(self, "binary_ops", binary)
        object.__setattr__(self, "unary_ops", unary)
        object.__setattr__(self, "constants", tuple(float(c) for c in self.constants))
        if not all(math.isfinite(c) for c in self.constants):
            raise ValueError(f"constants must be finite, got {self.constants}")
        _check(self.complexity > 0, f"complexity must be positive, got {self.complexity}")
        _check(math.isfinite(self.complexity), f"complexity must be finite, got {self.complexity}")
        _check(self.max_vars >= 1, f"max_vars must be at least 1, got {self.max_vars}")
        _check(self.max_vars <= MAX_VARS, f"max_vars must be at most {MAX_VARS} ({POINTS_PER_VARIABLE} points per "
                                          f"variable within {MAX_POINTS} points), got {self.max_vars}")
        _check(self.n_binary_ops is None or self.n_binary_ops >= 0,
               f"n_binary_ops must be at least 0, got {self.n_binary_ops}")
        _check(self.n_points is None or self.n_points >= MIN_POINTS,
               f"n_points must be at least {MIN_POINTS}, got {self.n_points}")
        for name in ("constant_prob", "unary_prob"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")

    @property
    def operator_set(self) -> str:
        """'arith' without unary operators, 'full' with them (file names)."""
        return "full" if self.unary_ops else "arith"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class Candidate:
    """One generated candidate; `reason` is None when it passed its own checks."""

    index: int
    expression: tuple
    n_vars: int
    reason: str | None = None
    X: np.ndarray | None = None
    y: np.ndarray | None = None
    fingerprint: bytes | None = None

    def record(self, record_id: int) -> dict:
        # Arrays unpickled from a worker carry their own copy of the float32
        # dtype; a view restores numpy's shared one, so the pickled records
        # are byte-identical for any worker count.
        return {"id": record_id, "expression": to_string(self.expression), "n_vars": self.n_vars,
                "X": self.X.view(np.float32), "y": self.y.view(np.float32)}


# --------------------------------------------------------------------------
# Expressions


def complexity_scale(complexity: float) -> int:
    """s = max(1, round(4c)), rounding halves up."""
    return max(1, math.floor(4 * complexity + 0.5))


def binary_op_range(n_vars: int, params: ExpressionParams) -> tuple[int, int]:
    """Inclusive range of the binary operator count for d = n_vars."""
    if params.n_binary_ops is not None:
        return params.n_binary_ops, params.n_binary_ops
    scale = complexity_scale(params.complexity)
    return n_vars - 1, scale + scale * n_vars - 1


def n_vars_limit(params: ExpressionParams) -> int:
    """Largest d: max_vars, or fewer when a fixed operator count has fewer leaves."""
    if params.n_binary_ops is None:
        return params.max_vars
    return min(params.max_vars, params.n_binary_ops + 1)


def _tree_count(empty: int, n_ops: int) -> int:
    """D(e, n): binary trees filling `empty` slots with `n_ops` operators (ballot numbers)."""
    if n_ops == 0:
        return 1
    return empty * math.comb(2 * n_ops + empty, n_ops) // (2 * n_ops + empty)


@lru_cache(maxsize=None)
def _leaf_run_cdf(empty: int, n_ops: int) -> tuple[float, ...]:
    """Cumulative P(k leaves before the next operator), k = 0..empty-1."""
    total = _tree_count(empty, n_ops)
    cumulative, running = [], 0
    for k in range(empty):
        running += _tree_count(empty - k + 1, n_ops - 1)
        cumulative.append(running / total)
    return tuple(cumulative)


def random_shape(stream: RandomStream, n_binary: int) -> list[bool]:
    """A uniform random binary tree shape in prefix order (True = operator)."""
    shape: list[bool] = []
    empty, remaining = 1, n_binary
    while remaining:
        cdf = _leaf_run_cdf(empty, remaining)
        leaves = min(bisect.bisect_right(cdf, stream.random()), empty - 1)
        shape.extend([False] * leaves)
        shape.append(True)
        empty += 1 - leaves
        remaining -= 1
    shape.extend([False] * empty)
    return shape


def random_leaves(stream: RandomStream, n_leaves: int, n_vars: int, params: ExpressionParams) -> list:
    """Leaf tokens in order: every variable once at a distinct leaf, the rest random."""
    variables = [f"x{i}" for i in range(n_vars)]
    leaves: list = [None] * n_leaves
    for variable, position in zip(variables, stream.sample_distinct(n_leaves, n_vars)):
        leaves[position] = variable
    constants = params.constants
    for position in range(n_leaves):
        if leaves[position] is None:
            if constants and stream.random() < params.constant_prob:
                leaves[position] = stream.choice(constants)
            else:
                leaves[position] = stream.choice(variables)
    return leaves


def random_expression(stream: RandomStream, n_vars: int, n_binary: int, params: ExpressionParams) -> tuple:
    """A prefix tuple with `n_binary` binary operators using every variable x0..x{n_vars-1}."""
    shape = random_shape(stream, n_binary)
    leaves = iter(random_leaves(stream, n_binary + 1, n_vars, params))
    binary_ops, unary_ops, unary_prob = params.binary_ops, params.unary_ops, params.unary_prob
    tokens: list = []
    for is_operator in shape:
        token = stream.choice(binary_ops) if is_operator else next(leaves)
        # Wrapping a node puts the unary symbol right before its subtree in prefix order.
        if unary_ops and token.__class__ is not float and stream.random() < unary_prob:
            tokens.append(stream.choice(unary_ops))
        tokens.append(token)
    return tuple(tokens)


# --------------------------------------------------------------------------
# Data


def random_orthogonal(generator: np.random.Generator, count: int, size: int) -> np.ndarray:
    """`count` Haar-distributed orthogonal size x size matrices."""
    q, r = np.linalg.qr(generator.standard_normal((count, size, size)))
    signs = np.sign(np.diagonal(r, axis1=1, axis2=2))
    signs[signs == 0] = 1.0
    return q * signs[:, None, :]


def sample_inputs(stream: RandomStream, n_points: int, n_vars: int) -> np.ndarray:
    """n_points x n_vars inputs from a random cluster mixture, standardised per column."""
    generator = stream.generator
    n_clusters = 1 + stream.below(MAX_CLUSTERS)
    weights = generator.random(n_clusters)
    counts = generator.multinomial(n_points, weights / weights.sum())
    labels = np.repeat(np.arange(n_clusters), counts)
    centres = generator.standard_normal((n_clusters, n_vars))
    scales = generator.uniform(*SCALE_RANGE, size=(n_clusters, n_vars))
    gaussian = generator.random(n_clusters) < 0.5
    rotations = random_orthogonal(generator, n_clusters, n_vars)
    normal = generator.standard_normal((n_points, n_vars))
    box = generator.uniform(-math.sqrt(3.0), math.sqrt(3.0), size=(n_points, n_vars))  # unit variance
    base = np.where(gaussian[labels, None], normal, box) * scales[labels]
    X = np.matmul(base[:, None, :], rotations[labels])[:, 0, :] + centres[labels]
    X = X[generator.permutation(n_points)]
    std = X.std(axis=0)
    std[std < 1e-12] = 1.0
    return (X - X.mean(axis=0)) / std


def evaluate_dataset(expression: tuple, X: np.ndarray):
    """(X32, y32, None) with bad points dropped, or (None, None, reason)."""
    X32 = X.astype(np.float32)
    y = Evaluator(X32)(expression)  # the evaluator works in float64 on the float32 values
    with np.errstate(invalid="ignore"):
        keep = np.abs(y) <= HUGE  # False for NaN and inf
    if not keep.any():
        return None, None, "non_finite"
    # Points where protected division engages carry the guard's value, not the formula's.
    if "/" in expression:
        keep &= ~division_guard_mask(expression, X32)
        if not keep.any():
            return None, None, "division_by_zero"
    kept = int(keep.sum())
    if kept < max(MIN_POINTS, (len(y) + 1) // 2):
        return None, None, "too_few_points"
    if kept < len(y):
        # Recompute on exactly the stored rows so a later check reproduces y bit for bit.
        X32 = np.ascontiguousarray(X32[keep])
        y = Evaluator(X32)(expression)
        if not np.all(np.abs(y) <= HUGE):
            return None, None, "non_finite"
    y32 = y.astype(np.float32)
    largest = float(np.max(np.abs(y32)))
    if float(np.ptp(y32)) <= CONSTANT_RANGE_TOLERANCE * largest:
        return None, None, "constant_output"
    return X32, y32, None


@lru_cache(maxsize=None)
def _probe_evaluator(n_vars: int) -> Evaluator:
    # Column j depends only on j, so the probes for d are those for d+1 minus a column.
    points = np.random.default_rng(FINGERPRINT_SEED).standard_normal((n_vars, FINGERPRINT_POINTS))
    return Evaluator(points.T)


def fingerprint(expression: tuple, n_vars: int) -> bytes:
    """16-byte digest of d and the expression's values on fixed probe points.

    Values are rounded to FINGERPRINT_BITS significant bits and values below
    1e-12 of the largest are zeroed, so rounding noise of equivalent forms
    ((x0 + x1) + x2 vs x0 + (x1 + x2)) almost always gives the same digest.
    """
    values = _probe_evaluator(n_vars)(expression)
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    magnitudes = np.abs(values)
    values[magnitudes <= 1e-12 * magnitudes.max()] = 0.0
    mantissa, exponent = np.frexp(values)
    digest = hashlib.blake2b(n_vars.to_bytes(4, "little"), digest_size=16)
    digest.update(finite.tobytes())
    digest.update(np.rint(mantissa * 2.0**FINGERPRINT_BITS).astype(np.int64).tobytes())
    digest.update(exponent.astype(np.int32).tobytes())
    return digest.digest()


# --------------------------------------------------------------------------
# Candidates


def generate_candidate(index: int, params: ExpressionParams, seed: int) -> Candidate:
    """Candidate `index`, from its own stream seeded by derive_seed(seed, index)."""
    stream = RandomStream(make_generator(seed, index))
    n_vars = 1 + stream.below(n_vars_limit(params))
    low, high = binary_op_range(n_vars, params)
    n_binary = low + stream.below(high - low + 1)
    expression = random_expression(stream, n_vars, n_binary, params)
    candidate = Candidate(index, expression, n_vars)
    if not params.allow_benchmark and matches_benchmark(expression, n_vars) is not None:
        candidate.reason = "benchmark"
        return candidate
    if params.n_points is None:
        low_points = min(POINTS_PER_VARIABLE * n_vars, MAX_POINTS)
        n_points = low_points + stream.below(MAX_POINTS - low_points + 1)
    else:
        n_points = params.n_points
    X = sample_inputs(stream, n_points, n_vars)
    candidate.X, candidate.y, candidate.reason = evaluate_dataset(expression, X)
    if candidate.reason is None:
        candidate.fingerprint = fingerprint(expression, n_vars)
    return candidate


def _generate_chunk(task: tuple) -> list[Candidate]:
    """Worker entry point: candidates start..start+count-1, in order."""
    params, seed, start, count = task
    return [generate_candidate(index, params, seed) for index in range(start, start + count)]


def _candidates(params: ExpressionParams, seed: int, workers: int, chunk_size: int):
    """Yield candidates 0, 1, 2, ... in order; chunks run in a process pool when workers > 1."""
    tasks = ((params, seed, start, chunk_size) for start in itertools.count(0, chunk_size))
    if workers == 1:
        for task in tasks:
            yield from _generate_chunk(task)
        return
    pool = parallel.pool(workers)
    pending: deque = deque()
    try:
        for task in tasks:
            pending.append(pool.apply_async(_generate_chunk, (task,)))
            if len(pending) == 2 * workers:  # a bounded window keeps memory flat
                yield from pending.popleft().get()
    finally:
        # Closing this generator (the consumer is done) ends here. Pool.terminate() can deadlock
        # while its task thread is writing to a worker (seen with 16 workers): let the few chunks
        # already submitted finish instead, then close the pool normally.
        for result in pending:
            result.wait()
        pool.close()
        pool.join()


def generate_expressions(n_expressions: int, params: ExpressionParams | None = None, seed: int = 0,
                         workers: int = 1, *, show_progress: bool = False,
                         max_candidates: int | None = None, argv: list[str] | None = None,
                         chunk_size: int = CHUNK_SIZE) -> tuple[list[dict], dict]:
    """The first `n_expressions` accepted candidates as records, and the file metadata.

    Raises GenerationError after `max_candidates` candidates (default
    max(100000, 100 n_expressions)) without reaching the count, e.g. when the
    parameters allow too few distinct expressions.
    """
    params = ExpressionParams() if params is None else params
    _check(n_expressions >= 1, f"n_expressions must be at least 1, got {n_expressions}")
    _check(workers >= 1, f"workers must be at least 1, got {workers}")
    limit = max(100_000, 100 * n_expressions) if max_candidates is None else max_candidates
    started = time.perf_counter()
    records: list[dict] = []
    seen: set[bytes] = set()
    rejections = dict.fromkeys(REJECTION_REASONS, 0)
    n_candidates = 0
    bar = Progress(n_expressions, "expressions", disable=not show_progress)
    with closing(_candidates(params, seed, workers, chunk_size)) as candidates, bar:
        for candidate in candidates:
            if n_candidates >= limit:
                raise GenerationError(
                    f"only {len(records)} of {n_expressions} expressions after {n_candidates} "
                    f"candidates (rejections: {_format_rejections(rejections)}); "
                    f"the parameters allow too few distinct expressions")
            n_candidates += 1
            reason = candidate.reason
            if reason is None and candidate.fingerprint in seen:
                reason = "duplicate"
            if reason is not None:
                rejections[reason] += 1
                continue
            seen.add(candidate.fingerprint)
            records.append(candidate.record(len(records)))
            bar.update(1)
            if len(records) == n_expressions:
                break
    elapsed = time.perf_counter() - started
    run = {"workers": workers, "elapsed_seconds": elapsed,
           "expressions_per_second": len(records) / elapsed,
           "candidates_per_second": n_candidates / elapsed}
    return records, _metadata(n_expressions, params, seed, argv, n_candidates, rejections, run)


def _metadata(n_expressions, params, seed, argv, n_candidates, rejections, run) -> dict:
    parameters = {"n_expressions": n_expressions, **dataclasses.asdict(params)}
    metadata = file_io.make_metadata(parameters, seed, argv)
    metadata.update({
        "binary_operators": list(params.binary_ops),
        "unary_operators": list(params.unary_ops),
        "constants": list(params.constants),
        "n_expressions": n_expressions,
        "n_candidates": n_candidates,
        "rejections": rejections,
        "run": run,
    })
    return metadata


def _format_rejections(rejections: dict) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in rejections.items())


# --------------------------------------------------------------------------
# File names and CLI


def default_file_name(n_expressions: int, params: ExpressionParams, timestamp: str) -> str:
    """e.g. 'arith_1k_c05_20261123-073000.pkl.gz' (with '_b3' for --n_binary_ops 3)."""
    ops = "" if params.n_binary_ops is None else f"_b{params.n_binary_ops}"
    complexity = math.floor(10 * params.complexity + 0.5)
    return f"{params.operator_set}_{file_io.format_count(n_expressions)}_c{complexity:02d}{ops}_{timestamp}.pkl.gz"


def parse_operators(text: str) -> tuple[str, ...]:
    """'+,-,*' -> ('+', '-', '*'); aliases such as 'add' become their symbol."""
    names = (name.strip() for name in text.split(","))
    return tuple(ALIASES.get(name, name) for name in names if name)


def parse_constants(text: str) -> tuple[float, ...]:
    """'1.0,2' -> (1.0, 2.0); '' -> ()."""
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"--constants must be comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate random expressions with sampled data (X, y) for training.",
        epilog="Lists starting with '-' need '=': --binary_ops=-,+ --constants=-1,2")
    add = parser.add_argument
    add("--n_expressions", type=int, default=1000, help="number of expressions to generate")
    add("--binary_ops", default="+,-,*", help="comma-separated binary operators")
    add("--unary_ops", default="", help="comma-separated unary operators (default: none)")
    add("--complexity", type=float, default=0.5,
        help="c: up to s + s*d - 1 binary operators with s = max(1, round(4c))")
    add("--max_vars", type=int, default=10, help=f"largest input dimension d (d ~ U{{1..max_vars}}), "
                                                 f"at most {MAX_VARS}")
    add("--n_binary_ops", type=int, default=None, help="fix the number of binary operators")
    add("--constants", default="1.0", help="comma-separated leaf constants ('' for none)")
    add("--constant_prob", type=float, default=0.2, help="probability that a free leaf is a constant")
    add("--unary_prob", type=float, default=0.2,
        help="probability that a node is wrapped in a unary operator (with --unary_ops)")
    add("--n_points", type=int, default=None, help="points per expression (default U{min(5d,200)..200})")
    add("--seed", type=int, default=0, help="master seed; candidate i uses derive_seed(seed, i)")
    add("--output_dir", default=DEFAULT_OUTPUT_DIR, help="folder for the automatically named file")
    add("--output", default=None, help="exact output path (overrides --output_dir and the name)")
    add("--overwrite", action="store_true", help="replace an existing output file")
    add("--workers", type=int, default=1, help="worker processes (the output does not depend on it)")
    add("--max_candidates", type=int, default=None,
        help="give up after this many candidates (default max(100000, 100 N))")
    add("--allow_benchmark", action="store_true",
        help="keep expressions equivalent to a benchmark problem")
    add("--demo", action="store_true", help="print ten samples and write nothing")
    return parser


def _fail(message: str, status: int = 2):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def params_from_args(args: argparse.Namespace) -> ExpressionParams:
    """ExpressionParams from parsed flags (ValueError on invalid values)."""
    return ExpressionParams(
        binary_ops=parse_operators(args.binary_ops), unary_ops=parse_operators(args.unary_ops),
        complexity=args.complexity, max_vars=args.max_vars, n_binary_ops=args.n_binary_ops,
        constants=parse_constants(args.constants), constant_prob=args.constant_prob,
        unary_prob=args.unary_prob, n_points=args.n_points, allow_benchmark=args.allow_benchmark)


def _print_demo(params: ExpressionParams, seed: int) -> None:
    records, _ = generate_expressions(10, params, seed, argv=[])
    for record in records:
        print(f"{record['id']}: n_vars={record['n_vars']} n_points={len(record['y'])}  "
              f"{record['expression']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check(math.isfinite(args.complexity), f"--complexity must be a finite number, got {args.complexity}")
        _check(1 <= args.max_vars <= MAX_VARS, f"--max_vars must be in 1..{MAX_VARS}, got {args.max_vars}")
        _check(args.seed >= 0, f"--seed must be a non-negative integer, got {args.seed}")
        params = params_from_args(args)
        _check(args.n_expressions >= 1, f"--n_expressions must be at least 1, got {args.n_expressions}")
        _check(args.workers >= 1, f"--workers must be at least 1, got {args.workers}")
    except ValueError as exc:
        _fail(str(exc))
    if args.demo:
        _print_demo(params, args.seed)
        return 0
    timestamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = default_file_name(args.n_expressions, params, timestamp)
    path = Path(args.output) if args.output else Path(args.output_dir) / name
    if path.exists() and not args.overwrite:
        _fail(f"{path}: already exists (use --overwrite to replace it)")
    with file_io.exit_on_data_error():
        file_io.check_writable(path)  # a bad output path fails now, not after the generation
    command = sys.argv if argv is None else ["generate_expressions.py", *argv]
    try:
        records, metadata = generate_expressions(
            args.n_expressions, params, args.seed, args.workers, show_progress=True,
            max_candidates=args.max_candidates, argv=command)
    except GenerationError as exc:
        _fail(str(exc), status=1)
    with file_io.exit_on_data_error():
        file_io.save(path, FILE_KIND, records, metadata, overwrite=args.overwrite)
    run = metadata["run"]
    print(f"accepted {len(records)} of {metadata['n_candidates']} candidates; rejected: "
          f"{_format_rejections(metadata['rejections'])}; {run['elapsed_seconds']:.1f} s, "
          f"{run['expressions_per_second']:.1f} expressions/s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
