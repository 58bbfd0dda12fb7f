"""Tests for BasicSR: parameters, fitting, determinism, trajectories, variation operators."""

import math

import numpy as np
import pytest

import basic_sr
import expressions as ex
import problems
import trajectory as tj
from basic_sr import MUTATION_WEIGHTS, BasicSR
from expression_parser import parse

DEFAULTS = {
    "population_size": 100,
    "num_generations": 50,
    "max_depth": 4,
    "max_size": 15,
    "tournament_size": 3,
    "tournament_p": 1.0,
    "crossover_prob": 0.7,
    "constants": (1.0,),
    "binary_operators": ("+", "-", "*", "/"),
    "unary_operators": (),
    "complexity_penalty": 0.01,
    "early_stop_threshold": 3e-16,
    "time_limit": None,
    "seed": None,
    "collect_trajectory": False,
    "verbose": False,
}

KNOWN_ORIGINS = {"init", "elite", "crossover", "copy", "restart", "neighbour"} | {f"mutation_{k}" for k in MUTATION_WEIGHTS}


def _xy(function, n_points=40, n_vars=1, seed=0, low=-3.0, high=3.0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(low, high, size=(n_points, n_vars))
    return X, function(X)


def _x_sin_x(X):
    return X[:, 0] * np.sin(X[:, 0])


# --------------------------------------------------------------------------
# Parameters


def test_constructor_defaults_exactly():
    model = BasicSR()
    assert model.get_params() == DEFAULTS
    assert list(model.get_params()) == list(DEFAULTS)  # constructor order
    for name, value in DEFAULTS.items():
        assert getattr(model, name) == value
        assert type(getattr(model, name)) is type(value), name


def test_repr_lists_changed_params_only():
    assert repr(BasicSR()) == "BasicSR()"
    assert repr(BasicSR(population_size=20, seed=3)) == "BasicSR(population_size=20, seed=3)"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"population_size": 1}, "population_size"),
        ({"population_size": 0}, "population_size"),
        ({"population_size": 10.0}, "population_size"),
        ({"population_size": True}, "population_size"),
        ({"population_size": 5, "tournament_size": 6}, "tournament_size"),
        ({"tournament_size": 0}, "tournament_size"),
        ({"max_size": -1}, "max_size"),
        ({"max_size": 0}, "max_size"),
        ({"max_depth": -1}, "max_depth"),
        ({"num_generations": -1}, "num_generations"),
        ({"crossover_prob": 2}, "crossover_prob"),
        ({"crossover_prob": -0.1}, "crossover_prob"),
        ({"tournament_p": 0}, "tournament_p"),
        ({"tournament_p": 1.5}, "tournament_p"),
        ({"binary_operators": ("+", "^")}, "binary_operators"),
        ({"unary_operators": ("tan",)}, "unary_operators"),
        ({"binary_operators": (), "unary_operators": ()}, "operators"),
        ({"complexity_penalty": -0.01}, "complexity_penalty"),
        ({"early_stop_threshold": -1.0}, "early_stop_threshold"),
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": -1.0}, "time_limit"),
        ({"constants": (1.0, float("nan"))}, "constants"),
        ({"constants": (float("inf"),)}, "constants"),
    ],
)
def test_invalid_params_raise_value_error_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BasicSR(**kwargs)


def test_unknown_operator_message_names_the_operator():
    with pytest.raises(ValueError, match=r"binary_operators.*'\^'"):
        BasicSR(binary_operators=("^",))


def test_edge_values_are_accepted():
    BasicSR(population_size=2, tournament_size=2, max_depth=0, max_size=1, num_generations=0)
    BasicSR(crossover_prob=0.0, tournament_p=1e-9, complexity_penalty=0.0, constants=())
    BasicSR(binary_operators=(), unary_operators=("sin",))
    BasicSR(population_size=np.int64(10), constants=[1.0, 2])


def test_get_params_and_set_params():
    model = BasicSR()
    returned = model.set_params(population_size=20, seed=4, unary_operators=("sin",))
    assert returned is model
    params = model.get_params(deep=True)
    assert params["population_size"] == 20 and params["seed"] == 4 and params["unary_operators"] == ("sin",)
    assert model.get_params(deep=False) == params
    with pytest.raises(ValueError, match="not_a_param"):
        model.set_params(not_a_param=1)
    assert model.set_params() is model
    with pytest.raises(ValueError, match="population_size"):
        BasicSR().set_params(population_size=1)
    with pytest.raises(ValueError, match="tournament_size"):
        BasicSR(population_size=5).set_params(tournament_size=6)


def test_sklearn_clone():
    base = pytest.importorskip("sklearn.base")
    model = BasicSR(population_size=20, num_generations=3, seed=1, unary_operators=("sin", "cos"))
    clone = base.clone(model)
    assert clone is not model
    assert clone.get_params() == model.get_params()
    X, y = _xy(lambda X: X[:, 0] ** 2 + 1.0)
    model.fit(X, y)
    clone2 = base.clone(model)
    assert not hasattr(clone2, "best_tree_")
    assert clone2.get_params() == model.get_params()


# --------------------------------------------------------------------------
# Fitting


def test_fit_sets_attributes():
    X, y = problems.get_problem("pythagorean_3d").sample(seed=0)
    model = BasicSR(population_size=20, num_generations=10, seed=0)
    assert model.fit(X, y) is model
    assert isinstance(model.best_expression_, str)
    assert parse(model.best_expression_) == model.best_tree_
    assert ex.to_string(model.best_tree_) == model.best_expression_
    assert isinstance(model.best_mse_, float) and model.best_mse_ >= 0
    predictions = ex.evaluate(model.best_tree_, X)
    assert model.best_mse_ == pytest.approx(float(np.mean((predictions - y) ** 2)), rel=1e-9, abs=1e-300)
    assert model.best_fitness_ == pytest.approx(-model.best_mse_ - 0.01 * len(model.best_tree_), rel=1e-12)
    assert isinstance(model.n_generations_, int) and 0 <= model.n_generations_ <= 10
    assert model.n_evaluations_ == 20 * (model.n_generations_ + 1)
    assert model.n_features_in_ == 3
    assert len(model.best_mse_history_) == model.n_generations_ + 1
    assert model.best_mse_history_[-1] == model.best_mse_
    assert np.array_equal(model.predict(X), predictions)
    assert model.to_sympy() == ex.to_sympy(model.best_tree_)
    assert not hasattr(model, "trajectory_")  # collect_trajectory=False
    summary = model.summary()
    assert summary["expression"] == model.best_expression_
    assert summary["generations"] == model.n_generations_
    assert summary["evaluations"] == model.n_evaluations_
    assert summary["mse"] == model.best_mse_


def test_predict_checks_columns_and_accepts_1d():
    X, y = _xy(lambda X: X[:, 0] ** 2 + 1.0)
    model = BasicSR(population_size=20, num_generations=5, seed=0).fit(X[:, 0], y)
    assert model.n_features_in_ == 1
    assert np.array_equal(model.predict(X[:, 0]), model.predict(X))
    with pytest.raises(ValueError):
        model.predict(np.zeros((3, 2)))


def test_unfitted_model_raises_runtime_error():
    model = BasicSR()
    with pytest.raises(RuntimeError):
        model.predict(np.zeros((3, 1)))
    with pytest.raises(RuntimeError):
        model.to_sympy()
    with pytest.raises(RuntimeError):
        model.summary()


@pytest.mark.parametrize(
    "X, y",
    [
        (np.array([[1.0], [np.nan], [2.0]]), np.array([1.0, 2.0, 3.0])),
        (np.array([[1.0], [2.0], [3.0]]), np.array([1.0, np.inf, 3.0])),
        (np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.0])),
        (np.array([[1.0]]), np.array([1.0])),
    ],
)
def test_fit_rejects_bad_data(X, y):
    with pytest.raises(ValueError):
        BasicSR(population_size=10, num_generations=1, seed=0).fit(X, y)


def test_num_generations_zero_scores_only_the_initial_population():
    X, y = problems.get_problem("pythagorean_3d").sample(seed=0)
    model = BasicSR(population_size=12, num_generations=0, seed=0, collect_trajectory=True).fit(X, y)
    assert model.n_generations_ == 0
    assert model.n_evaluations_ == 12
    assert model.trajectory_["population"].shape == (1, 12)


def test_refit_is_reproducible_and_seed_none_runs():
    X, y = problems.get_problem("quadratic").sample(seed=1)
    model = BasicSR(population_size=20, num_generations=15, seed=5)
    first = (model.fit(X, y).best_expression_, model.best_mse_history_)
    second = (model.fit(X, y).best_expression_, model.best_mse_history_)
    assert first == second
    BasicSR(population_size=10, num_generations=3).fit(X, y)


def test_golden_quadratic_seed_0():
    # Golden test (like gplearn's): pins the exact result of one small run.
    # It must only change when the algorithm or its random draws change on
    # purpose; update the expected string deliberately in that case.
    X, y = problems.get_problem("quadratic").sample(seed=0)
    model = BasicSR(population_size=20, num_generations=50, seed=0).fit(X, y)
    assert model.best_expression_ == "(((x0 + 1.0) * x0) + 1.0)"
    assert problems.is_solved(model, problems.get_problem("quadratic"))


def test_early_stop_on_exact_solution():
    X, y = _xy(lambda X: X[:, 0] * X[:, 0] + 1.0, n_points=40, seed=3)
    model = BasicSR(population_size=30, num_generations=500, seed=0, collect_trajectory=True).fit(X, y)
    assert model.n_generations_ < 500
    assert model.best_mse_ <= 3e-16
    assert np.allclose(model.predict(X), y, rtol=0, atol=1e-7)
    assert model.n_evaluations_ == 30 * (model.n_generations_ + 1)
    assert model.trajectory_["population"].shape == (model.n_generations_ + 1, 30)
    # It stopped at the first generation reaching the threshold.
    assert all(mse > 3e-16 for mse in model.best_mse_history_[:-1])


def test_early_stop_none_runs_every_generation_even_when_solved():
    X, y = _xy(lambda X: X[:, 0] * X[:, 0] + 1.0, n_points=40, seed=3)
    model = BasicSR(population_size=30, num_generations=60, seed=0, early_stop_threshold=None).fit(X, y)
    assert model.n_generations_ == 60
    assert model.best_mse_ <= 3e-16  # solved long before the end


def test_time_limit_stops_early():
    X, y = _xy(_x_sin_x)
    model = BasicSR(population_size=30, num_generations=10**7, time_limit=0.3, seed=0).fit(X, y)
    assert model.n_generations_ < 10**7
    assert model.fit_time_ < 5.0
    # Every individual counted, plus the elite's neighbours at restarts (counted exactly elsewhere).
    assert model.n_evaluations_ >= 30 * (model.n_generations_ + 1)


def test_tournament_p_below_one_runs():
    X, y = problems.get_problem("quadratic").sample(seed=0)
    model = BasicSR(population_size=20, num_generations=30, tournament_p=0.5, seed=2, collect_trajectory=True)
    model.fit(X, y)
    assert model.n_evaluations_ == 20 * (model.n_generations_ + 1)
    _check_trajectory_invariants(model)


def test_tournament_p_below_one_favours_better_contestants():
    X, y = _xy(_x_sin_x)
    model = BasicSR(population_size=10, num_generations=0, tournament_p=0.8, tournament_size=10, seed=0).fit(X, y)
    fitnesses = [float(i) for i in range(10)]  # index 9 is the best
    wins = [model.tournament(fitnesses) for _ in range(2000)]
    counts = np.bincount(wins, minlength=10)
    # With all 10 individuals in the tournament the best wins with probability 0.8.
    assert 0.75 < counts[9] / 2000 < 0.85
    assert counts[8] > counts[7] > 0


def test_tournament_p_one_picks_best_contestant():
    X, y = _xy(_x_sin_x)
    model = BasicSR(population_size=10, num_generations=0, tournament_size=10, seed=0).fit(X, y)
    fitnesses = [0.0, 1.0, -math.inf, 5.0, 2.0, 3.0, 4.0, -1.0, 0.5, 0.25]
    assert {model.tournament(fitnesses) for _ in range(100)} == {3}
    model.set_params(tournament_size=1)
    assert set(model.tournament(fitnesses) for _ in range(500)) == set(range(10))


def test_unary_operators_find_sin():
    X, y = _xy(lambda X: np.sin(X[:, 0]), n_points=50, seed=0)
    model = BasicSR(population_size=50, num_generations=200, unary_operators=("sin",), seed=0).fit(X, y)
    assert model.best_tree_ == ("sin", "x0")
    assert model.best_mse_ == 0.0
    assert model.n_generations_ < 200


def test_unary_operators_evolve_x_sin_x_plus_square():
    X, y = _xy(lambda X: np.sin(X[:, 0]) + X[:, 0] * X[:, 0], n_points=40, seed=0)
    model = BasicSR(population_size=50, num_generations=200, unary_operators=("sin",), seed=2, collect_trajectory=True)
    model.fit(X, y)
    assert model.best_mse_ <= 3e-16
    assert 0 < model.n_generations_ < 200
    _check_trajectory_invariants(model)


# --------------------------------------------------------------------------
# Determinism


def _assert_trajectories_equal(first, second):
    assert first.keys() == second.keys()
    for key in first:
        a, b = first[key], second[key]
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, key
            assert np.array_equal(a, b), key
        else:
            assert a == b, key


@pytest.mark.parametrize(
    "problem, params",
    [
        ("pythagorean_3d", {}),
        ("complex_rational", {"unary_operators": ("sin", "exp", "log", "sqrt", "abs", "cos")}),
        ("quadratic", {"tournament_p": 0.6}),
    ],
)
def test_same_seed_gives_identical_trajectory(problem, params):
    X, y = problems.get_problem(problem).sample(seed=0)

    def run(seed):
        model = BasicSR(population_size=20, num_generations=40, seed=seed, collect_trajectory=True, **params)
        return model.fit(X, y)

    first, second, other = run(11), run(11), run(12)
    _assert_trajectories_equal(first.trajectory_, second.trajectory_)
    assert first.best_expression_ == second.best_expression_
    assert first.best_mse_history_ == second.best_mse_history_
    assert first.n_evaluations_ == second.n_evaluations_
    # A different seed gives a different run (overwhelmingly likely).
    assert (
        first.trajectory_["expressions"] != other.trajectory_["expressions"]
        or not np.array_equal(first.trajectory_["population"], other.trajectory_["population"])
    )


# --------------------------------------------------------------------------
# Trajectory invariants


def _check_trajectory_invariants(model):
    trajectory = model.trajectory_
    P = model.population_size
    G = model.n_generations_
    expressions = trajectory["expressions"]
    population = trajectory["population"]
    fitnesses = trajectory["fitnesses"]
    parents = trajectory["parents"]
    origin_names = trajectory["origin_names"]
    origins = np.array(origin_names, dtype=object)[trajectory["origins"]]
    best_index = trajectory["best_index"]

    # Shapes and dtypes.
    assert population.shape == (G + 1, P) and population.dtype == np.int32
    assert fitnesses.shape == (G + 1, P) and fitnesses.dtype == np.float32
    assert parents.shape == (G + 1, P, 2) and parents.dtype == np.int32
    assert trajectory["origins"].shape == (G + 1, P) and trajectory["origins"].dtype == np.uint8
    assert best_index.shape == (G + 1,) and best_index.dtype == np.int32
    assert trajectory["best_fitness"].shape == (G + 1,) and trajectory["best_fitness"].dtype == np.float32
    assert trajectory["best_mse"].shape == (G + 1,) and trajectory["best_mse"].dtype == np.float64
    assert tj.n_generations(trajectory) == G
    assert population.min() >= 0 and population.max() < len(expressions)
    assert len(set(expressions)) == len(expressions)
    assert set(origin_names) <= KNOWN_ORIGINS, origin_names
    assert len(origin_names) == len(set(origin_names))

    # Every individual is a well-formed tree within the limits.
    for tree in expressions:
        assert isinstance(tree, tuple)
        assert ex.is_well_formed(tree), tree
        assert len(tree) <= model.max_size, tree
        assert ex.depth(tree) <= model.max_depth, tree
        assert parse(ex.to_string(tree)) == tree

    # Generation 0.
    assert set(origins[0]) == {"init"}
    assert np.all(parents[0] == -1)

    restarted = np.zeros(G + 1, dtype=bool)
    for g in range(1, G + 1):
        assert np.all((parents[g] >= -1) & (parents[g] < P))
        elite_parent = best_index[g - 1]
        assert origins[g, 0] == "elite"
        assert parents[g, 0].tolist() == [elite_parent, -1]
        assert fitnesses[g - 1, elite_parent] == fitnesses[g - 1].max()
        assert population[g, 0] == population[g - 1, elite_parent]
        assert "elite" not in origins[g, 1:]
        restarted[g] = "restart" in origins[g]
        if restarted[g]:
            # The elite's best neighbours, then fresh seeds.
            n_neighbours = int(np.sum(origins[g] == "neighbour"))
            assert n_neighbours <= basic_sr.RESTART_NEIGHBOURS
            assert set(origins[g, 1 + n_neighbours :]) == {"restart"}
            elite_tree = expressions[population[g, 0]]
            for slot in range(1, 1 + n_neighbours):
                assert origins[g, slot] == "neighbour"
                assert expressions[population[g, slot]] in model.elite_neighbours(elite_tree)
        for slot in range(1, P):
            origin = origins[g, slot]
            first, second = parents[g, slot]
            if origin == "crossover":
                assert first >= 0 and second >= 0
            elif origin.startswith("mutation_") or origin == "copy":
                assert first >= 0 and second == -1
            elif origin == "neighbour":
                assert first == elite_parent and second == -1
            else:
                assert origin == "restart" and first == second == -1, origin
        assert "init" not in origins[g]

    # Best tracking: elitism makes the best fitness non-decreasing.
    best_fitness = trajectory["best_fitness"]
    assert np.array_equal(best_fitness, fitnesses.max(axis=1))
    assert np.all(np.diff(best_fitness) >= 0)
    assert np.array_equal(best_fitness, fitnesses[np.arange(G + 1), best_index])
    assert trajectory["best_mse"].tolist() == model.best_mse_history_
    assert trajectory["best_mse"][-1] == model.best_mse_
    assert expressions[population[G, best_index[G]]] == model.best_tree_
    assert tj.expression_text(trajectory, population[G, best_index[G]]) == model.best_expression_
    assert trajectory["n_unique"].tolist() == [len(set(row)) for row in population.tolist()]

    # Recorded fitnesses agree with a fresh evaluation (spot check the last generation).
    X, y = model._scorer.columns.T, model._scorer.y
    for slot in range(0, P, max(1, P // 7)):
        tree = expressions[population[G, slot]]
        predictions = ex.evaluate(tree, X)
        if ex.is_valid_prediction(predictions):
            expected = -float(np.mean((predictions - y) ** 2)) - model.complexity_penalty * len(tree)
            assert fitnesses[G, slot] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        else:
            assert fitnesses[G, slot] == -np.inf

    # Ancestry of the final best.
    ancestors = trajectory["ancestors_of_best"]
    assert len(ancestors) == G + 1
    assert ancestors[-1] == [int(best_index[-1])]
    assert ancestors == tj.ancestors_of(parents, int(best_index[-1]))
    for g in range(G, 0, -1):
        assert ancestors[g] == sorted(set(ancestors[g]))
        expected_previous = {int(p) for slot in ancestors[g] for p in parents[g, slot] if p != -1}
        assert set(ancestors[g - 1]) == expected_previous
        assert all(0 <= slot < P for slot in ancestors[g - 1])
    if not restarted.any():
        assert all(ancestors), "every generation holds an ancestor when nothing was re-seeded"
    return trajectory


TRAJECTORY_CASES = [
    ("quadratic", {"population_size": 20, "num_generations": 60, "seed": 1}),
    ("pythagorean_3d", {"population_size": 25, "num_generations": 80, "seed": 2, "max_depth": 3, "max_size": 9}),
    ("complex_rational", {"population_size": 30, "num_generations": 200, "seed": 3,
                          "unary_operators": ("sin", "exp", "log", "sqrt", "abs", "cos")}),
    ("bivariate_sum", {"population_size": 16, "num_generations": 50, "seed": 4, "crossover_prob": 0.0,
                       "tournament_size": 5, "constants": (1.0, 2.0, -0.5)}),
    ("compound_fraction", {"population_size": 12, "num_generations": 40, "seed": 5, "crossover_prob": 1.0,
                           "max_depth": 6, "max_size": 25, "unary_operators": ("sqrt",)}),
]


@pytest.mark.parametrize("problem, params", TRAJECTORY_CASES, ids=[c[0] for c in TRAJECTORY_CASES])
def test_trajectory_invariants(problem, params):
    X, y = problems.get_problem(problem).sample(seed=0)
    model = BasicSR(collect_trajectory=True, **params).fit(X, y)
    _check_trajectory_invariants(model)


def test_trajectory_invariants_with_restarts():
    # y = x0 sin(x0) with arithmetic only: the best stalls, so the run re-seeds
    # every STAGNATION_LIMIT generations.
    X, y = _xy(_x_sin_x)
    model = BasicSR(population_size=15, num_generations=2 * basic_sr.STAGNATION_LIMIT + 10, seed=0,
                    collect_trajectory=True).fit(X, y)
    trajectory = _check_trajectory_invariants(model)
    assert "restart" in trajectory["origin_names"]
    # Every individual counts, and so does every neighbour of the elite scored at a restart.
    expressions = trajectory["expressions"]
    restarts = [g for g in range(1, model.n_generations_ + 1)
                if "restart" in tj.origins_at(trajectory, g)]
    neighbours_scored = sum(len(model.elite_neighbours(expressions[trajectory["population"][g, 0]]))
                            for g in restarts)
    assert restarts and neighbours_scored > 0
    assert model.n_evaluations_ == 15 * (model.n_generations_ + 1) + neighbours_scored


# --------------------------------------------------------------------------
# Population and variation operators


@pytest.fixture
def fitted():
    X, y = problems.get_problem("pythagorean_3d").sample(seed=0)
    model = BasicSR(population_size=30, num_generations=2, seed=0, constants=(1.0, 2.0)).fit(X, y)
    return model


@pytest.fixture
def fitted_unary():
    X, y = problems.get_problem("pythagorean_3d").sample(seed=0)
    model = BasicSR(population_size=30, num_generations=2, seed=0, max_depth=6, max_size=30,
                    unary_operators=("sin", "exp", "log", "sqrt", "abs", "cos")).fit(X, y)
    return model


def _within_limits(model, tree):
    return ex.is_well_formed(tree) and len(tree) <= model.max_size and ex.depth(tree) <= model.max_depth


def test_initial_population_within_limits(fitted):
    population = fitted.initial_population()
    assert len(population) == fitted.population_size
    assert all(_within_limits(fitted, tree) for tree in population)
    assert ("x0",) in population and (1.0,) in population


def test_initial_population_respects_tiny_limits():
    X, y = _xy(_x_sin_x)
    model = BasicSR(population_size=10, num_generations=3, max_depth=0, max_size=1, seed=0).fit(X, y)
    assert all(len(tree) == 1 for tree in model.initial_population())
    assert len(model.best_tree_) == 1


def test_generate_new_population(fitted):
    population = fitted.initial_population()
    fitnesses = fitted.score_population(population)
    children, parents, origins = fitted.generate_new_population(population, fitnesses, 1)
    P = fitted.population_size
    assert len(children) == len(parents) == len(origins) == P
    elite = int(np.argmax(fitnesses))
    assert children[0] == population[elite]
    assert tuple(parents[0]) == (elite,) and origins[0] == "elite"
    for child, child_parents, origin in zip(children[1:], parents[1:], origins[1:]):
        assert _within_limits(fitted, child)
        assert origin in KNOWN_ORIGINS - {"init", "elite", "restart"}
        assert len(child_parents) == (2 if origin == "crossover" else 1)
        assert all(0 <= p < P for p in child_parents)


class CopySR(BasicSR):
    """Overrides generate_new_population: every individual is copied unchanged."""

    def generate_new_population(self, population, fitnesses, generation):
        self.calls = getattr(self, "calls", 0) + 1
        return list(population), [(i,) for i in range(len(population))], ["copy"] * len(population)


def test_overridden_generate_new_population_is_used():
    X, y = problems.get_problem("pythagorean_3d").sample(seed=0)
    model = CopySR(population_size=10, num_generations=5, seed=0, collect_trajectory=True).fit(X, y)
    assert model.calls == 5
    assert model.n_generations_ == 5
    assert model.n_evaluations_ == 10 * 6
    trajectory = model.trajectory_
    assert all(np.array_equal(trajectory["population"][0], row) for row in trajectory["population"])
    assert set(tj.origins_at(trajectory, 3)) == {"copy"}
    assert trajectory["parents"][2, :, 0].tolist() == list(range(10))
    assert np.all(trajectory["parents"][1:, :, 1] == -1)
    assert len(set(model.best_mse_history_)) == 1


def test_generate_child_via_evolution_within_limits(fitted):
    population = fitted.initial_population()
    fitness_list = fitted.score_population(population).tolist()
    origins = set()
    for _ in range(300):
        child, child_parents, origin = fitted.generate_child_via_evolution(population, fitness_list)
        assert isinstance(child, tuple)
        assert _within_limits(fitted, child), child
        assert origin in KNOWN_ORIGINS
        assert len(child_parents) == (2 if origin == "crossover" else 1)
        origins.add(origin)
    assert {"crossover", *(f"mutation_{k}" for k in MUTATION_WEIGHTS)} <= origins


def test_crossover_is_well_formed(fitted):
    first = ("+", "*", "x0", "x0", "x1")
    second = ("/", "x2", "-", 1.0, "x0")
    for _ in range(100):
        child = fitted.crossover(first, second)
        assert ex.is_well_formed(child)


def _node_depth_bound_after_subtree(tree, result):
    # A node at depth d replaced by a tree of depth <= SUBTREE_MUTATION_DEPTH.
    return ex.depth(result) <= max(ex.depth(tree), max(ex.node_depths(tree)) + basic_sr.SUBTREE_MUTATION_DEPTH)


@pytest.mark.parametrize("kind", list(MUTATION_WEIGHTS))
@pytest.mark.parametrize("model_name", ["fitted", "fitted_unary"])
def test_mutation_kinds_produce_well_formed_trees(kind, model_name, request):
    model = request.getfixturevalue(model_name)
    population = model.initial_population()
    binary_only = not model.unary_operators
    changed = 0
    for tree in population:
        for _ in range(5):
            result = model.mutate(tree, kind)
            assert isinstance(result, tuple)
            assert ex.is_well_formed(result), (kind, tree, result)
            assert all(t in model._variables or t in model._constants or t in model._operators for t in result)
            changed += result != tree
            if kind == "delete" and len(tree) > 1:
                assert len(result) < len(tree) and ex.depth(result) < ex.depth(tree) + 1
            if kind == "point" and binary_only:
                assert len(result) == len(tree)
                assert ex.depth(result) == ex.depth(tree)
                assert sum(a != b for a, b in zip(tree, result)) <= 1
            if kind == "insert":
                assert len(tree) + 1 <= len(result) <= len(tree) + 2
                assert ex.depth(result) <= ex.depth(tree) + 1
            if kind == "subtree":
                assert len(result) <= len(tree) + 2 ** (basic_sr.SUBTREE_MUTATION_DEPTH + 1) - 2
                assert _node_depth_bound_after_subtree(tree, result)
            # From a tree with room to spare, every kind stays within the limits.
            if len(tree) + 7 <= model.max_size and ex.depth(tree) + 2 <= model.max_depth:
                assert _within_limits(model, result), (kind, tree, result)
    assert changed > 0


def test_unknown_mutation_kind_raises(fitted):
    with pytest.raises(ValueError):
        fitted.mutate(("+", "x0", "x1"), "nope")


def test_mutation_weights_are_positive():
    assert set(MUTATION_WEIGHTS) == {"point", "subtree", "insert", "delete"}
    assert all(weight > 0 for weight in MUTATION_WEIGHTS.values())


def test_score_and_score_population(fitted):
    tree = ("+", "x0", "x1")
    fitness, mse = fitted.score(tree)
    assert fitness == pytest.approx(-mse - 0.01 * 3)
    before = fitted.n_evaluations_
    scores = fitted.score_population([tree, tree, ("/", "x0", 0.0)])
    assert fitted.n_evaluations_ == before + 3
    assert scores.dtype == np.float64
    assert scores[0] == scores[1] == fitness
    assert scores[2] == -math.inf
    assert fitted.score(("log", "-", "x0", "x0")) == (-math.inf, math.inf)


def test_elite_neighbours_are_one_building_block_away():
    X, y = problems.get_problem("quadratic_formula_discriminant").sample(seed=0)
    model = BasicSR(population_size=20, num_generations=0, max_size=25, max_depth=10, seed=0).fit(X, y)
    # The discriminant's typical local optimum: 1 - 4 x0 x2, missing x1 * x1.
    stalled = parse("1.0 - (x2 + x2 + x2 + x2) * x0")
    state = model._stream.generator.bit_generator.state
    neighbours = model.elite_neighbours(stalled)
    assert model._stream.generator.bit_generator.state == state  # no random draws
    assert neighbours == model.elite_neighbours(stalled)
    assert len(neighbours) == len(set(neighbours)) and stalled not in neighbours
    assert all(len(t) <= model.max_size and ex.depth(t) <= model.max_depth for t in neighbours)
    assert parse("x1 * x1 - (x2 + x2 + x2 + x2) * x0") in neighbours  # the leaf 1.0 replaced by x1 * x1
    assert ("+",) + stalled + ("x0",) in neighbours  # the root extended
    # Every neighbour differs from the elite in one place: a leaf -> a block, or a new root.
    for tree in neighbours:
        if tree[0] in ("+", "-") and tree[1 : 1 + len(stalled)] == stalled:
            continue
        prefix = next(i for i, (a, b) in enumerate(zip(tree, stalled)) if a != b)
        assert stalled[prefix] not in ex.ARITY
        assert tree[:prefix] + tree[ex.subtree_end(tree, prefix):] == stalled[:prefix] + stalled[prefix + 1:]


def test_a_restart_scores_the_elite_neighbours_and_keeps_the_best():
    X, y = problems.get_problem("quadratic_formula_discriminant").sample(seed=0)
    model = BasicSR(population_size=20, num_generations=0, max_size=25, max_depth=10, seed=0).fit(X, y)
    stalled = parse("1.0 - (x2 + x2 + x2 + x2) * x0")
    before = model.n_evaluations_
    children, parents, origins = model.restart_population(stalled, 7, generation=300)
    assert model.n_evaluations_ == before + len(model.elite_neighbours(stalled))
    assert len(children) == 20 and children[0] == stalled
    assert origins[: 1 + basic_sr.RESTART_NEIGHBOURS] == ["elite"] + ["neighbour"] * basic_sr.RESTART_NEIGHBOURS
    assert parents[: 1 + basic_sr.RESTART_NEIGHBOURS] == [(7,)] * (1 + basic_sr.RESTART_NEIGHBOURS)
    assert set(origins[1 + basic_sr.RESTART_NEIGHBOURS :]) == {"restart"}
    assert children[1] == parse("x1 * x1 - (x2 + x2 + x2 + x2) * x0")  # the exact formula is the best neighbour
    assert model.score(children[1])[1] < 1e-20


def test_fit_pauses_the_garbage_collector_and_restores_it(monkeypatch):
    import gc

    X, y = problems.get_problem("quadratic").sample(seed=0)
    seen = []
    original = BasicSR.score_population

    def spy(self, population):
        seen.append(gc.isenabled())
        return original(self, population)

    monkeypatch.setattr(BasicSR, "score_population", spy)
    assert gc.isenabled()
    BasicSR(population_size=10, num_generations=3, seed=0).fit(X, y)
    assert seen and not any(seen) and gc.isenabled()

    def boom(self, population):
        raise RuntimeError("boom")

    monkeypatch.setattr(BasicSR, "score_population", boom)
    with pytest.raises(RuntimeError):
        BasicSR(population_size=10, num_generations=3, seed=0).fit(X, y)
    assert gc.isenabled()  # restored on errors too
    gc.disable()
    try:
        monkeypatch.setattr(BasicSR, "score_population", original)
        BasicSR(population_size=10, num_generations=3, seed=0).fit(X, y)
        assert not gc.isenabled()  # a caller's choice is left alone
    finally:
        gc.enable()
