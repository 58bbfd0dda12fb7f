"""BasicSR: a small, readable evolutionary symbolic regression (the teacher).

    from basic_sr import BasicSR
    model = BasicSR(population_size=20, num_generations=1000, seed=0).fit(X, y)
    model.best_expression_, model.best_mse_, model.predict(X)

One generation, in `generate_new_population`: slot 0 keeps the best individual
so far (elitism); every other slot is a child from
`generate_child_via_evolution`: tournament selection, then crossover (with
probability `crossover_prob`) or one of the mutation kinds in
`MUTATION_WEIGHTS`. Children over `max_size` or `max_depth` are redrawn.
Fitness = -MSE - complexity_penalty * size; invalid predictions (non-finite or
huge) get fitness -inf. NeuralSR overrides `generate_new_population` and
reuses `generate_child_via_evolution` as its fallback.

CLI: `python basic_sr.py --problem pythagorean_3d`, `--data my.csv`,
`--list_problems`; see `--help`.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import sys
import time
from bisect import bisect_right
from contextlib import contextmanager
from functools import lru_cache
from itertools import accumulate
from math import comb
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import expressions as ex
from fitness_kernel import BatchScorer
from operators import check_operators
from random_stream import RandomStream, make_generator
from trajectory import TrajectoryRecorder

# Mutation kinds and their relative weights: the only list of mutation kinds.
# Subtree-heavy weights measured best on the harder tier (docs/LOG.md).
MUTATION_WEIGHTS: dict[str, float] = {
    "point": 0.25,  # swap an operator for one of equal arity, or a leaf for another leaf
    "subtree": 0.45,  # replace a node by a leaf or a small random subtree
    "insert": 0.15,  # wrap a node in a new operator
    "delete": 0.15,  # replace an operator node by one of its children
}
MUTATION_ORIGINS = {kind: f"mutation_{kind}" for kind in MUTATION_WEIGHTS}  # how a child is labelled
# Crossover points are operator nodes with this probability (Koza's 90%), else
# any node: swapping leaves rarely changes much.
CROSSOVER_INTERNAL_PROB = 0.9
SUBTREE_MUTATION_DEPTH = 2
INIT_TREE_DEPTH = 4  # random initial trees are grown at most this deep (and max_depth)
MAX_REDRAWS = 100  # attempts before a child falls back to a copy of its parent
DUPLICATE_REDRAWS = 5  # attempts to avoid a child already in the new population
# After this many generations without a better best, the population restarts:
# the elite, its best neighbours, the rest re-seeded like the initial
# population. Small populations converge early; measured on the harder tier
# (20 seeds): 88 of 100 runs solved versus 85 without.
STAGNATION_LIMIT = 150
# A restart keeps this many of the elite's best neighbours (`elite_neighbours`):
# the discriminant went from 16/30 to 29/30 solved, the harder tier from
# 134/150 to 146/150 runs (docs/LOG.md).
RESTART_NEIGHBOURS = 3
INVALID_FITNESS = -math.inf


@lru_cache(maxsize=64)
def tournament_rank_cdf(n: int, k: int, p: float = 1.0) -> list[float]:
    """Cumulative probability that a tournament's winner has rank <= r (0 = best of n).

    The j-th best of k distinct uniform picks has rank r with probability
    C(r, j) C(n-1-r, k-1-j) / C(n, k); it wins with probability p (1-p)^j, the
    last contestant taking the remaining mass (p = 1: always the best).
    """
    wins = [p * (1 - p) ** j for j in range(k - 1)] + [(1 - p) ** (k - 1)]
    total = comb(n, k)
    rank_probabilities = [
        sum(w * comb(r, j) * comb(n - 1 - r, k - 1 - j) for j, w in enumerate(wins)) / total for r in range(n)
    ]
    return list(accumulate(rank_probabilities))


class BasicSR:
    """Evolutionary symbolic regression with a scikit-learn style interface."""

    def __init__(
        self,
        population_size: int = 100,
        num_generations: int = 50,
        max_depth: int = 4,
        max_size: int = 15,
        tournament_size: int = 3,
        tournament_p: float = 1.0,
        crossover_prob: float = 0.7,
        constants: Sequence[float] = (1.0,),
        binary_operators: Sequence[str] = ("+", "-", "*", "/"),
        unary_operators: Sequence[str] = (),
        complexity_penalty: float = 0.01,
        early_stop_threshold: float | None = 3e-16,
        time_limit: float | None = None,
        seed: int | None = None,
        collect_trajectory: bool = False,
        verbose: bool = False,
    ):
        self.population_size = population_size
        self.num_generations = num_generations
        self.max_depth = max_depth
        self.max_size = max_size
        self.tournament_size = tournament_size
        self.tournament_p = tournament_p
        self.crossover_prob = crossover_prob
        self.constants = constants
        self.binary_operators = binary_operators
        self.unary_operators = unary_operators
        self.complexity_penalty = complexity_penalty
        self.early_stop_threshold = early_stop_threshold
        self.time_limit = time_limit
        self.seed = seed
        self.collect_trajectory = collect_trajectory
        self.verbose = verbose
        self._validate_params()

    # ------------------------------------------------------------------
    # scikit-learn conventions

    @classmethod
    def _param_names(cls) -> list[str]:
        # The class's own signature, so a subclass's extra parameters (NeuralSR's) count too.
        signature = inspect.signature(cls.__init__)
        return [name for name in signature.parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """Constructor parameters, as scikit-learn's get_params."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "BasicSR":
        """Set constructor parameters; unknown names raise ValueError."""
        valid = set(self._param_names())
        for name in params:
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
        previous = self.get_params()
        for name, value in params.items():
            setattr(self, name, value)
        try:
            self._validate_params()
        except ValueError:
            for name, value in previous.items():  # leave the estimator as it was
                setattr(self, name, value)
            raise
        return self

    def __repr__(self) -> str:
        defaults = {n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate_params(self) -> None:
        def require(condition: bool, name: str, rule: str) -> None:
            if not condition:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        integer = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        require(integer(self.population_size) and self.population_size >= 2, "population_size", "an integer >= 2")
        require(integer(self.num_generations) and self.num_generations >= 0, "num_generations", "an integer >= 0")
        require(integer(self.max_depth) and self.max_depth >= 0, "max_depth", "an integer >= 0")
        require(integer(self.max_size) and self.max_size >= 1, "max_size", "an integer >= 1")
        require(
            integer(self.tournament_size) and 1 <= self.tournament_size <= self.population_size,
            "tournament_size",
            f"an integer in [1, population_size={self.population_size}]",
        )
        require(0 < self.tournament_p <= 1, "tournament_p", "in (0, 1]")
        require(0 <= self.crossover_prob <= 1, "crossover_prob", "in [0, 1]")
        require(self.complexity_penalty >= 0, "complexity_penalty", ">= 0")
        require(
            self.early_stop_threshold is None or self.early_stop_threshold >= 0,
            "early_stop_threshold",
            "None (never stop early) or >= 0",
        )
        require(self.time_limit is None or self.time_limit > 0, "time_limit", "None or > 0")
        require(
            all(isinstance(c, (int, float)) and math.isfinite(c) for c in self.constants),
            "constants",
            "a sequence of finite numbers",
        )
        try:
            check_operators(self.binary_operators, self.unary_operators)
        except ValueError as error:
            raise ValueError(f"binary_operators/unary_operators: {error}") from None

    # ------------------------------------------------------------------
    # Fitting

    def fit(self, X, y) -> "BasicSR":
        """Evolve expressions for y ~ f(X); returns self."""
        with _garbage_collection_paused(self._pause_garbage_collection):
            going = self.begin(X, y)
            while going:
                going = self.step()
        return self

    # A run makes no reference cycles, only many short-lived tuples, and
    # Python's cyclic garbage collector repeatedly walks the run's big caches
    # (the fitness cache, the trajectory's index): pausing it during `fit`
    # saves ~3% of a bare run and half of the trajectory recording's cost
    # (docs/LOG.md). Subclasses running other code (NeuralSR: torch) keep it on.
    _pause_garbage_collection = True

    def _setup(self, X: np.ndarray, y: np.ndarray) -> None:
        self.n_features_in_ = X.shape[1]
        self._variables = [f"x{i}" for i in range(self.n_features_in_)]
        self._constants = [float(c) for c in self.constants]
        self._binary, self._unary = check_operators(self.binary_operators, self.unary_operators)
        self._operators = list(self._binary) + list(self._unary)
        self._stream = RandomStream(make_generator(self.seed))
        self._scorer = BatchScorer(X, y)
        self._n_points = len(y)
        self._fitness_cache: dict[tuple, tuple[float, float]] = {}
        self._mutation_kinds = list(MUTATION_WEIGHTS)
        total = sum(MUTATION_WEIGHTS.values())
        self._mutation_cumulative = list(np.cumsum([w / total for w in MUTATION_WEIGHTS.values()]))
        self.n_evaluations_ = 0
        self._last_improvement = 0
        self._last_restart = 0

    # A fit is `begin` then `step` until it returns False. Batched searches
    # (batched_neural_sr.py) run many estimators in lockstep through these.

    def prepare(self, X, y, generation: int = 0) -> "BasicSR":
        """Set the search up on (X, y) without evolving; returns self.

        The state is as at `generation` with the best just improved (no
        stagnation restart due), so `generate_new_population` can be applied
        to populations from elsewhere: DAgger's expert acts on the learner's
        states (dagger_relabel.py). ValueError for unusable data or parameters.
        """
        X, y = check_data(X, y)
        self._validate_params()
        self._setup(X, y)
        self._last_improvement = generation
        return self

    def begin(self, X, y) -> bool:
        """Start a fit: make, score and record generation 0; True while generations remain."""
        self.prepare(X, y)
        self._start = time.perf_counter()
        self._recorder = TrajectoryRecorder() if self.collect_trajectory else None
        self.best_mse_history_ = []
        self.evaluations_history_ = []  # n_evaluations_ after each generation
        self._generation = 0
        with np.errstate(all="ignore"):
            population = self.initial_population()
            return self._accept(population, [()] * len(population), ["init"] * len(population))

    def step(self) -> bool:
        """Evolve one generation; False once the run has stopped (the fitted attributes are then set)."""
        self._generation += 1
        with np.errstate(all="ignore"):
            children = self.generate_new_population(self._population, self._fitnesses, self._generation)
            return self._accept(*children)

    def _accept(self, population, parents, origins) -> bool:
        """Score and record a new generation, then decide whether to go on."""
        self._population, self._fitnesses = population, self.score_population(population)
        self._track_best(population, self._fitnesses, self._generation, self._recorder, parents, origins)
        if not self._should_stop(self._generation, self._start):
            return True
        self._finish()
        return False

    def _finish(self) -> None:
        self.n_generations_ = self._generation
        self.fit_time_ = time.perf_counter() - self._start
        if self._recorder is not None:
            self.trajectory_ = self._recorder.finish()
            self._recorder = None

    def _track_best(self, population, fitnesses, generation, recorder, parents, origins) -> None:
        best = int(np.argmax(fitnesses))
        if generation == 0 or fitnesses[best] > self.best_fitness_:
            self._last_improvement = generation
        tree = population[best]
        if generation == 0 or tree != self.best_tree_:  # printing is slow: only when the best changes
            self.best_expression_ = ex.to_string(tree)
        self.best_tree_ = tree
        self.best_fitness_ = float(fitnesses[best])
        self.best_mse_ = self._fitness_cache[tree][1]
        self.best_mse_history_.append(self.best_mse_)
        self.evaluations_history_.append(self.n_evaluations_)
        if recorder is not None:
            recorder.add_generation(population, fitnesses, parents, origins, best, self.best_mse_)
        if self.verbose and (generation % max(1, self.num_generations // 20) == 0):
            print(f"gen {generation:5d}  best mse {self.best_mse_:.3e}  {self.best_expression_}", flush=True)

    def _should_stop(self, generation: int, start: float) -> bool:
        if generation >= self.num_generations:
            return True
        if self.early_stop_threshold is not None and self.best_mse_ <= self.early_stop_threshold:
            return True
        return self.time_limit is not None and time.perf_counter() - start >= self.time_limit

    # ------------------------------------------------------------------
    # Population and variation

    def seed_expressions(self) -> list[tuple]:
        """The small expressions every search starts from: xi, c, xi + c, xi * c, xi * xi."""
        variables, constants = self._variables, self._constants
        seeds: list[tuple] = [(v,) for v in variables] + [(c,) for c in constants]
        seeds += [(op, v, c) for v in variables for c in constants for op in ("+", "*") if op in self._binary]
        if "*" in self._binary:
            seeds += [("*", v, v) for v in variables]
        return seeds

    def initial_population(self) -> list[tuple]:
        """Seeds first (`seed_expressions`), then random trees; cut to size."""
        seeds = [s for s in self.seed_expressions() if self._fits_limits(s)][: self.population_size]
        init_depth = min(self.max_depth, INIT_TREE_DEPTH)
        while len(seeds) < self.population_size:
            seeds.append(self._random_tree_within_limits(init_depth))
        return seeds

    def _random_tree_within_limits(self, tree_depth: int) -> tuple:
        for _ in range(MAX_REDRAWS):
            tree = ex.random_tree(self._stream, self._variables, self._constants, self._operators, tree_depth)
            if self._fits_limits(tree):
                return tree
        return (ex.random_leaf(self._stream, self._variables, self._constants),)

    def generate_new_population(
        self, population: list[tuple], fitnesses: np.ndarray, generation: int
    ) -> tuple[list[tuple], list[tuple[int, ...]], list[str]]:
        """The next population: (children, parent indices per child, how each was made).

        Slot 0 is the elite (best of `population`); the others come from
        `generate_child_via_evolution`. Subclasses (NeuralSR) override this.
        """
        elite = int(np.argmax(fitnesses))
        if self.restart_due(generation):
            return self.restart_population(population[elite], elite, generation)
        select = self.make_selector(fitnesses.tolist())
        children = [population[elite]]
        parents: list[tuple[int, ...]] = [(elite,)]
        origins = ["elite"]
        seen = {population[elite]}
        for _ in range(len(population) - 1):
            # Duplicates waste an evaluation and shrink diversity: redraw a few times.
            for _ in range(DUPLICATE_REDRAWS):
                child, child_parents, origin = self.generate_child_via_evolution(population, [], select)
                if child not in seen:
                    break
            seen.add(child)
            children.append(child)
            parents.append(child_parents)
            origins.append(origin)
        return children, parents, origins

    def restart_due(self, generation: int) -> bool:
        """True when the best has not improved for STAGNATION_LIMIT generations (nor since the last restart)."""
        return generation - max(self._last_improvement, self._last_restart) > STAGNATION_LIMIT

    def restart_population(self, elite_tree: tuple, elite: int, generation: int):
        """Keep the elite and its best neighbours (`elite_neighbours`), re-seed the rest as at generation 0.

        The neighbours are what makes restarts pay off: a stalled population
        sits in a local optimum one building block away from better, e.g.
        `1 - 4 x0 x2` for `x1^2 - 4 x0 x2`, where the missing `x1 * x1` costs
        two steps through a worse intermediate. Scoring every single-block
        change of the elite (a few hundred evaluations, counted in
        `n_evaluations_`) finds that step directly.
        """
        self._last_restart = generation
        candidates = self.elite_neighbours(elite_tree)
        best: list[tuple] = []
        if candidates:
            fitnesses = self.score_population(candidates)
            best = [candidates[i] for i in np.argsort(-fitnesses, kind="stable")[:RESTART_NEIGHBOURS]]
        fresh = self.initial_population()[: self.population_size - 1 - len(best)]
        children = [elite_tree] + best + fresh
        parents = [(elite,)] * (1 + len(best)) + [()] * len(fresh)
        return children, parents, ["elite"] + ["neighbour"] * len(best) + ["restart"] * len(fresh)

    def elite_neighbours(self, tree: tuple) -> list[tuple]:
        """Every tree one building block away: each leaf replaced by a block, or `tree +/- block`.

        Blocks: `seed_expressions` plus the products xi * xj. Distinct, within
        the limits, in a fixed order (no random draws).
        """
        blocks = self.seed_expressions()
        if "*" in self._binary:
            variables = self._variables
            blocks += [("*", a, b) for i, a in enumerate(variables) for b in variables[i + 1 :]]
        candidates = [
            tree[:position] + block + tree[position + 1 :]
            for position, token in enumerate(tree)
            if token not in ex.ARITY
            for block in blocks
        ]
        candidates += [(op,) + tree + block for op in ("+", "-") if op in self._binary for block in blocks]
        return [c for c in dict.fromkeys(candidates) if c != tree and self._fits_limits(c)]

    def generate_child_via_evolution(
        self, population: list[tuple], fitnesses: list[float], select: Callable[[], int] | None = None
    ) -> tuple[tuple, tuple[int, ...], str]:
        """One child by tournament selection and crossover or mutation, within the limits.

        `select` (from `make_selector(fitnesses)`) saves re-ranking the
        population for every child of a generation.
        """
        if select is None:
            select = self.make_selector(fitnesses)
        random = self._stream.random
        crossover_prob = self.crossover_prob
        for _ in range(MAX_REDRAWS):
            first = select()
            if random() < crossover_prob:
                second = select()
                child = self.crossover(population[first], population[second])
                child_parents, origin = (first, second), "crossover"
            else:
                kind = self._pick_mutation_kind()
                child = self.mutate(population[first], kind)
                child_parents, origin = (first,), MUTATION_ORIGINS[kind]
            if self._fits_limits(child):
                return child, child_parents, origin
        return population[first], (first,), "copy"

    def make_selector(self, fitnesses: list[float]) -> Callable[[], int]:
        """A function drawing tournament winners (indices) for one generation.

        A tournament of k distinct contestants among n is drawn in one step:
        the winner's rank follows `tournament_rank_cdf`, the exact
        distribution of the best (or, with tournament_p < 1, the PySR-style
        k-th best) of k distinct uniform picks. Equal fitnesses are ranked in
        random order, so a tie goes to a uniformly chosen contestant (duplicates
        are common; always favouring one slot, e.g. the elite's, costs diversity).
        """
        random = self._stream.random
        ranked = sorted(zip(fitnesses, [random() for _ in fitnesses], range(len(fitnesses))), reverse=True)
        order = [index for _, _, index in ranked]
        cdf = tournament_rank_cdf(len(fitnesses), self.tournament_size, float(self.tournament_p))
        last = len(order) - 1

        def select() -> int:
            return order[min(bisect_right(cdf, random()), last)]

        return select

    def tournament(self, fitnesses: list[float]) -> int:
        """Index of one tournament winner (see `make_selector`)."""
        return self.make_selector(list(fitnesses))()

    def crossover(self, first: tuple, second: tuple) -> tuple:
        """Copy `first` with a random node replaced by a random subtree of `second`."""
        start = self._crossover_point(first)
        donor_start = self._crossover_point(second)
        donor = second[donor_start : ex.subtree_end(second, donor_start)]
        return first[:start] + donor + first[ex.subtree_end(first, start) :]

    def _crossover_point(self, tree: tuple) -> int:
        if len(tree) > 1 and self._stream.random() < CROSSOVER_INTERNAL_PROB:
            return self._random_operator_position(tree)
        return self._stream.below(len(tree))

    def _random_operator_position(self, tree: tuple) -> int:
        """A uniformly chosen operator node of a tree that has one.

        Rejection sampling: about two draws for our trees, cheaper than
        listing the operator positions.
        """
        random = self._stream.random
        size = len(tree)
        operators = ex.ARITY
        while True:
            position = int(random() * size)
            if tree[position] in operators:
                return position

    def _pick_mutation_kind(self) -> str:
        draw = self._stream.random()
        for kind, threshold in zip(self._mutation_kinds, self._mutation_cumulative):
            if draw < threshold:
                return kind
        return self._mutation_kinds[-1]

    def mutate(self, tree: tuple, kind: str) -> tuple:
        """Apply one mutation of the given kind (see MUTATION_WEIGHTS)."""
        if kind == "delete":
            return self._delete_node(tree)
        start = self._stream.below(len(tree))
        if kind == "point":
            replacement = self._point_replacement(tree[start])
            if replacement is not None:
                return tree[:start] + (replacement,) + tree[start + 1 :]
            kind = "subtree"
        end = ex.subtree_end(tree, start)
        if kind == "subtree":
            new = ex.random_tree(
                self._stream, self._variables, self._constants, self._operators, SUBTREE_MUTATION_DEPTH
            )
        elif kind == "insert":
            new = self._wrap(tree[start:end])
        else:
            raise ValueError(f"unknown mutation kind {kind!r}")
        return tree[:start] + new + tree[end:]

    def _point_replacement(self, token):
        """Another token of the same arity, or None when there is none."""
        arity = ex.arity(token)
        if arity == 0:
            for _ in range(8):
                leaf = ex.random_leaf(self._stream, self._variables, self._constants)
                if leaf != token:
                    return leaf
            return None
        same_arity = self._binary if arity == 2 else self._unary
        others = [symbol for symbol in same_arity if symbol != token]
        return self._stream.choice(others) if others else None

    def _wrap(self, subtree: tuple) -> tuple:
        symbol = self._stream.choice(self._operators)
        if ex.arity(symbol) == 1:
            return (symbol,) + subtree
        leaf = (ex.random_leaf(self._stream, self._variables, self._constants),)
        return (symbol,) + subtree + leaf if self._stream.random() < 0.5 else (symbol,) + leaf + subtree

    def _delete_node(self, tree: tuple) -> tuple:
        """Replace a random operator node by one of its children (a point mutation on a lone leaf)."""
        if len(tree) == 1:
            return self.mutate(tree, "point")
        start = self._random_operator_position(tree)
        child_start = start + 1
        if ex.arity(tree[start]) == 2 and self._stream.random() < 0.5:
            child_start = ex.subtree_end(tree, start + 1)
        child = tree[child_start : ex.subtree_end(tree, child_start)]
        return tree[:start] + child + tree[ex.subtree_end(tree, start) :]

    def _fits_limits(self, tree: tuple) -> bool:
        size = len(tree)
        if size > self.max_size:
            return False
        # Skip the depth scan when the size alone bounds the depth: n nodes are
        # at most n - 1 deep, and at most (n - 1) / 2 deep with binary operators only.
        bound = size - 1 if self._unary else (size - 1) // 2
        return bound <= self.max_depth or ex.depth(tree) <= self.max_depth

    # ------------------------------------------------------------------
    # Fitness

    def score(self, tree: tuple) -> tuple[float, float]:
        """(fitness, mse) of one expression; invalid predictions give (-inf, inf)."""
        self.score_population([tree])
        return self._fitness_cache[tree]

    def score_population(self, population: list[tuple]) -> np.ndarray:
        """Fitnesses (float64) of a list of expressions; new ones are scored in one batch.

        Every individual counts as an evaluation (`n_evaluations_`), cached or
        not; the cache only saves the arithmetic, it cannot change a result.
        """
        cache = self._fitness_cache
        new = [tree for tree in dict.fromkeys(population) if tree not in cache]
        if new:
            penalty = self.complexity_penalty
            for tree, sse in zip(new, self._scorer.sse(new).tolist()):
                mse = sse / self._n_points
                fitness = -mse - penalty * len(tree) if mse < math.inf else INVALID_FITNESS
                cache[tree] = (fitness, mse)
        self.n_evaluations_ += len(population)
        return np.array([cache[tree][0] for tree in population], dtype=np.float64)

    # ------------------------------------------------------------------
    # After fitting

    def _require_fitted(self) -> None:
        if not hasattr(self, "best_tree_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def predict(self, X) -> np.ndarray:
        """Predictions of the best expression on the rows of X."""
        self._require_fitted()
        X = _as_2d(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} columns; the model was fitted on {self.n_features_in_}")
        return ex.evaluate(self.best_tree_, X)

    def to_sympy(self):
        """The best expression as a sympy expression."""
        self._require_fitted()
        return ex.to_sympy(self.best_tree_)

    def summary(self) -> dict:
        """A JSON-ready summary of the fit."""
        self._require_fitted()
        return {
            "expression": self.best_expression_,
            "simplified": ex.simplified_string(self.best_tree_),
            "mse": self.best_mse_,
            "fitness": self.best_fitness_,
            "size": len(self.best_tree_),
            "generations": self.n_generations_,
            "evaluations": self.n_evaluations_,
            "unique_evaluations": len(self._fitness_cache),
            "seconds": self.fit_time_,
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()},
        }


@contextmanager
def _garbage_collection_paused(pause: bool):
    """Disable the cyclic garbage collector inside the block (when `pause` and it was on)."""
    if not (pause and gc.isenabled()):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _as_2d(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X[:, None] if X.ndim == 1 else X


def check_data(X, y) -> tuple[np.ndarray, np.ndarray]:
    """X as a 2-D float array and y as a 1-D one; ValueError when they are unusable for a fit."""
    X = _as_2d(X)
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X has shape {X.shape} but y has {y.shape[0]} values")
    if X.shape[0] < 2:
        raise ValueError("need at least 2 data points")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("X and y must be finite (no NaN or inf)")
    return X, y


# ----------------------------------------------------------------------
# Command line


def _parse_constants(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"constants must be comma-separated numbers, got {text!r}")


def _parse_threshold(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}")


def _parse_operators(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fit a formula with BasicSR, on a benchmark problem or your own CSV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--problem", help="benchmark problem name (see --list_problems)")
    source.add_argument("--data", help="CSV with columns x0..xk then y; a header row is optional")
    source.add_argument("--list_problems", action="store_true", help="list the benchmark problems and exit")
    parser.add_argument("--n_points", type=int, default=None, help="points sampled for --problem (default: the problem's 50)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed for sampling the problem's points")
    defaults = {n: p.default for n, p in inspect.signature(BasicSR.__init__).parameters.items() if n != "self"}
    parser.add_argument("--population_size", type=int, default=defaults["population_size"], help="individuals per generation")
    parser.add_argument("--num_generations", type=int, default=defaults["num_generations"], help="generations to evolve")
    parser.add_argument("--max_depth", type=int, default=defaults["max_depth"], help="maximum tree depth (a leaf is depth 0)")
    parser.add_argument("--max_size", type=int, default=defaults["max_size"], help="maximum number of nodes")
    parser.add_argument("--tournament_size", type=int, default=defaults["tournament_size"], help="contestants per tournament")
    parser.add_argument("--tournament_p", type=float, default=defaults["tournament_p"], help="PySR-style pick probability of the best contestant (1 = always)")
    parser.add_argument("--crossover_prob", type=float, default=defaults["crossover_prob"], help="probability of crossover (else mutation)")
    parser.add_argument("--constants", type=_parse_constants, default="1.0", help="comma-separated constants ('' for none)")
    parser.add_argument("--binary_operators", type=_parse_operators, default="+,-,*,/", help="comma-separated binary operators")
    parser.add_argument("--unary_operators", type=_parse_operators, default="", help="comma-separated unary operators, e.g. sin,cos,exp,log,sqrt,abs")
    parser.add_argument("--complexity_penalty", type=float, default=defaults["complexity_penalty"], help="fitness = -MSE - penalty * size")
    parser.add_argument("--early_stop_threshold", type=_parse_threshold, default=defaults["early_stop_threshold"], help="stop when the best MSE is at most this ('none': never stop early)")
    parser.add_argument("--time_limit", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: fresh entropy)")
    parser.add_argument("--quiet", action="store_true", help="no per-generation progress")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH")
    return parser


def main(argv=None) -> int:
    import problems  # CLI only: the estimator itself needs no benchmark table
    from csv_data import CSVDataError, load_csv

    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.list_problems:
        problems.main([])
        return 0
    for flag, value in (("--seed", args.seed), ("--data_seed", args.data_seed)):
        if value is not None and value < 0:
            print(f"error: {flag} must be a non-negative integer, got {value}", file=sys.stderr)
            return 2
    if args.n_points is not None and args.n_points < 2:  # problems.Problem.sample; a fit needs 2 points
        print(f"error: --n_points must be at least 2, got {args.n_points}", file=sys.stderr)
        return 2
    try:
        if args.data:
            X, y = load_csv(args.data)
            problem = None
        else:
            problem = problems.get_problem(args.problem or "pythagorean_3d")
            X, y = problem.sample(seed=args.data_seed, n_points=args.n_points)
    except (problems.UnknownProblemError, CSVDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    params = {name: getattr(args, name) for name in BasicSR._param_names() if hasattr(args, name)}
    params["verbose"] = not args.quiet
    try:
        model = BasicSR(**params)
        if args.json:  # a bad path fails now, not after the search
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: --json {args.json}: cannot write there ({error.strerror})", file=sys.stderr)
        return 2
    model.fit(X, y)
    summary = model.summary()
    if problem is not None:
        summary["problem"] = problem.name
        summary["solved"] = problems.is_solved(model, problem)
    _print_summary(summary)
    if args.json:
        return _write_json(summary, args, argv)
    return 0


def _write_json(summary: dict, args, argv) -> int:
    """The summary with its provenance (command, parameters, code version, time), written atomically."""
    import file_io  # CLI only, like problems

    metadata = file_io.make_metadata(vars(args), args.seed, None if argv is None else ["basic_sr.py", *argv])
    try:
        with file_io.atomic_open(args.json, "w") as handle:
            json.dump({**summary, "metadata": metadata}, handle, indent=2)
    except OSError as error:
        print(f"error: --json {args.json}: cannot write there ({error.strerror})", file=sys.stderr)
        return 2
    return 0


def _print_summary(summary: dict) -> None:
    print("-" * 60)
    if "problem" in summary:
        print(f"problem     {summary['problem']}  solved: {summary['solved']}")
    print(f"expression  {summary['expression']}")
    print(f"simplified  {summary['simplified']}")
    print(f"mse         {summary['mse']:.3e}   size {summary['size']}")
    print(
        f"generations {summary['generations']}   evaluations {summary['evaluations']}"
        f"   seconds {summary['seconds']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
