"""Seeded randomness: per-item seeds and a fast scalar stream over numpy.

ttsr never touches global random state. Every run owns a
`numpy.random.Generator`; work items (expressions, traces, generations) get
their own seed derived from (master seed, item ids), so results do not depend
on the number of workers or shards.

`RandomStream` serves scalar draws from blocks of uniforms drawn from a numpy
Generator. Drawing scalars one at a time from numpy costs about a microsecond
each, which would dominate the evolutionary loop; a block draw is the same
Generator stream, just consumed in bulk, so runs stay exactly reproducible.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")

_BLOCK = 4096


def derive_seed(master_seed: int | None, *item_ids: int) -> int:
    """A 63-bit seed for one work item, from the master seed and the item's ids.

    Seeds and ids must be non-negative integers: a ValueError naming the bad
    value otherwise ("seed -1: must be a non-negative integer").
    """
    entropy = [0 if master_seed is None else _non_negative(master_seed, "seed"),
               *(_non_negative(item, "item id") for item in item_ids)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def _non_negative(value, name: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{name} {value}: must be a non-negative integer")
    return number


def make_generator(seed: int | None, *item_ids: int) -> np.random.Generator:
    """A numpy Generator for (seed, item ids); seed None means fresh entropy."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(derive_seed(seed, *item_ids))


def _uniform_floats(generator: np.random.Generator, block_size: int):
    while True:
        yield from generator.random(block_size).tolist()


class RandomStream:
    """Fast scalar draws backed by a numpy Generator (deterministic per seed)."""

    __slots__ = ("generator", "random")

    def __init__(self, generator: np.random.Generator, block_size: int = _BLOCK):
        self.generator = generator
        # `random()` returns a float uniform in [0, 1): the next value of the stream.
        # The values do not depend on block_size; a short-lived stream wants a small one.
        self.random = _uniform_floats(generator, block_size).__next__

    def below(self, n: int) -> int:
        """An int uniform in [0, n)."""
        return int(self.random() * n)

    def choice(self, items: Sequence[T]) -> T:
        """One element of a non-empty sequence, uniformly."""
        return items[int(self.random() * len(items))]

    def sample_distinct(self, n: int, k: int) -> list[int]:
        """k distinct ints from [0, n), in draw order (k <= n)."""
        random = self.random
        chosen = [int(random() * n)]
        while len(chosen) < k:
            index = int(random() * n)
            if index not in chosen:
                chosen.append(index)
        return chosen
