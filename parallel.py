"""Order-preserving parallel map over worker processes, the same results for any worker count.

Used by the stages whose items are independent and whose output must not
depend on --workers (conversions, DAgger relabelling). Trace generation has
its own pool (`generate_traces.iter_traces`): it wants completion order, one
expression per task and workers that exit when their parent dies.
"""

from __future__ import annotations

import multiprocessing
from typing import Callable, Iterator, Sequence


def parallel_map(function: Callable, items: Sequence, workers: int = 1) -> Iterator:
    """Yield function(item) for each item, in item order; in this process when workers <= 1.

    With workers > 1, `function` must pickle (a module-level function, or a
    functools.partial of one). Items go out in chunks of up to 16, about 8
    chunks per worker, so short items do not pay a round trip each.
    """
    if workers <= 1 or len(items) < 2:
        yield from map(function, items)
        return
    workers = min(workers, len(items))
    chunk_size = max(1, min(16, len(items) // (8 * workers)))
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(function, items, chunksize=chunk_size)
