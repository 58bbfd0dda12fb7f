"""The trajectory of one search run: what every generation held and where it came from.

A trajectory is plain data (safe to pickle and load with `file_io`), stored
column-wise so a 1000-generation run stays small and fast to write:

    expressions       list[tuple] unique expressions as prefix token tuples (see
                                  expressions.py), in order of first appearance;
                                  `expression_text` prints one
    population        int32  (G+1, P)     index into `expressions`
    fitnesses         float32 (G+1, P)    -inf marks an invalid individual
    parents           int32  (G+1, P, 2)  indices in the previous generation, -1 = none
    origins           uint8  (G+1, P)     index into `origin_names`
    origin_names      list[str]   'init', 'elite', 'crossover', 'mutation_point', ...
    best_index        int32  (G+1,)   slot of the generation's best individual
    best_fitness      float32 (G+1,)
    best_mse          float64 (G+1,)
    n_unique          int32  (G+1,)   distinct expressions in the generation
    ancestors_of_best list[list[int]] per generation, the slots of every ancestor of
                      the final best individual (walking back through all parents);
                      the last entry holds the final best itself.
Generation 0 is the initial population; its individuals have no parents.
"""

from __future__ import annotations

from itertools import chain

import numpy as np

import expressions as ex

NO_PARENT = -1


class TrajectoryRecorder:
    """Accumulates generations during a run, then `finish()` returns the trajectory dict.

    Recording is on the hot path of trace generation, so per generation it
    only looks up expression ids and appends rows; the arrays, the unique
    counts and the ancestry are built once in `finish()`.
    """

    def __init__(self):
        self._index: dict[tuple, int] = {}
        self._population: list[list[int]] = []
        self._fitnesses: list[np.ndarray] = []
        self._parents: list[list[tuple[int, ...]]] = []
        self._origins: list[list[str]] = []
        self._best_index: list[int] = []
        self._best_mse: list[float] = []

    def add_generation(self, population, fitnesses, parents, origins, best_index: int, best_mse: float) -> None:
        """Record one generation (trees as prefix tuples, parents as index tuples)."""
        index = self._index
        row = [index.get(tree) for tree in population]  # most trees were seen before
        if None in row:
            row = [index.setdefault(tree, len(index)) for tree in population]
        # Rows are kept as tuples of ints and strings, which the garbage
        # collector stops tracking: thousands of lists would make every full
        # collection of a long run slower (measured: half of the recording cost).
        self._population.append(tuple(row))
        self._fitnesses.append(fitnesses)
        self._parents.append(tuple(parents))
        self._origins.append(tuple(origins))
        self._best_index.append(best_index)
        self._best_mse.append(best_mse)

    def finish(self) -> dict:
        population = np.array(self._population, dtype=np.int32)
        all_origins = list(chain.from_iterable(self._origins))
        origin_names = list(dict.fromkeys(all_origins))
        origin_code = {name: code for code, name in enumerate(origin_names)}
        # Parent tuples hold 0, 1 or 2 indices: pad each to 2 with NO_PARENT.
        # (One flat list extended in a loop: 4x faster than a tuple per slot.)
        padding = ((NO_PARENT, NO_PARENT), (NO_PARENT,), ())
        flat: list[int] = []
        extend = flat.extend
        for row in self._parents:
            for slot_parents in row:
                extend(slot_parents)
                extend(padding[len(slot_parents)])
        parents = np.array(flat, dtype=np.int32).reshape(population.shape + (2,))
        origins = np.fromiter(map(origin_code.__getitem__, all_origins), dtype=np.uint8, count=len(all_origins))
        fitnesses = np.array(self._fitnesses, dtype=np.float32)
        best_index = np.array(self._best_index, dtype=np.int32)
        sorted_rows = np.sort(population, axis=1)
        trajectory = {
            "expressions": list(self._index),
            "population": population,
            "fitnesses": fitnesses,
            "parents": parents,
            "origins": origins.reshape(population.shape),
            "origin_names": origin_names,
            "best_index": best_index,
            "best_fitness": fitnesses[np.arange(len(best_index)), best_index],
            "best_mse": np.array(self._best_mse, dtype=np.float64),
            "n_unique": (np.diff(sorted_rows, axis=1) != 0).sum(axis=1).astype(np.int32) + 1,
        }
        trajectory["ancestors_of_best"] = ancestors_of(parents, int(best_index[-1]))
        return trajectory


def ancestors_of(parents: np.ndarray, final_index: int) -> list[list[int]]:
    """Per generation, the slots of all ancestors of individual `final_index` of the last generation."""
    rows = parents.tolist()  # Python ints: indexing a numpy array per slot is ~10x slower
    current = {final_index}
    ancestry: list[list[int]] = [sorted(current)]
    for generation in range(len(rows) - 1, 0, -1):
        row = rows[generation]
        previous: set[int] = set()
        for slot in current:
            previous.update(row[slot])
        previous.discard(NO_PARENT)
        current = previous
        ancestry.append(sorted(current))
    ancestry.reverse()
    return ancestry


def n_generations(trajectory: dict) -> int:
    """Generations evolved (the initial population is generation 0)."""
    return int(trajectory["population"].shape[0]) - 1


def expression_text(trajectory: dict, index: int) -> str:
    """The printed form of expression number `index` of the trajectory."""
    return ex.to_string(trajectory["expressions"][index])


def population_at(trajectory: dict, generation: int) -> list[tuple]:
    """The expressions (prefix tuples) of one generation."""
    expressions = trajectory["expressions"]
    return [expressions[i] for i in trajectory["population"][generation]]


def population_text_at(trajectory: dict, generation: int) -> list[str]:
    """The expressions of one generation, as text."""
    return [ex.to_string(tree) for tree in population_at(trajectory, generation)]


def origins_at(trajectory: dict, generation: int) -> list[str]:
    names = trajectory["origin_names"]
    return [names[i] for i in trajectory["origins"][generation]]
