"""Worker pools, and an order-preserving parallel map with the same results for any worker count.

`parallel_map` serves the stages whose items are independent and whose
output must not depend on --workers (conversions, DAgger relabelling).
Trace generation iterates its own `pool()` (`generate_traces.iter_traces`):
it wants completion order, one expression per task and workers that exit
with their parent (`exit_with_parent`).

Every worker pool of the project comes from `pool()`: forkserver workers,
never plain fork. A forked worker inherits the parent's locks in whatever
state its other threads left them (torch's and the tokenizers' thread pools,
numba's, a progress thread), and one that needs such a lock waits forever.
CI's run of 2026-11-23 stopped at its 90-minute limit inside
`generate_traces --workers 2` run in a test process that had used torch;
this is the likely cause (docs/LOG.md, session 7). Python 3.14 makes
forkserver the default on Linux for the same reason.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence


def start_method() -> str:
    """forkserver where the platform has it (Linux, macOS), else spawn (Windows)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> multiprocessing.pool.Pool:
    """A process pool of `workers` workers started by `start_method()`.

    Functions and arguments sent to it must pickle by reference (module-level
    functions, functools.partial of them); a worker imports their module.
    """
    context = multiprocessing.get_context(start_method())
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(preload_modules())  # no effect once this process's server runs
    return context.Pool(workers, initializer, initargs)


def preload_modules() -> list[str]:
    """Modules of the working folder this process has imported: the forkserver imports them first.

    Every forkserver worker runs the main script again as `__mp_main__`, and
    Python 3.11's server never preloads it (it looks for a key that spawn's
    preparation data does not have): each worker paid the script's imports
    itself, 2 s per pool for a conversion (transformers). With the project's
    modules, and through them numpy, numba, torch, imported once in the
    server, a worker inherits them and the script's own body is quick. Only
    modules, never the script: its top level may expect its command line.
    The server imports from its working folder (3.11 ignores the sys.path it
    is sent), so commands run in the repository, as all of ours are, gain.
    """
    here = Path.cwd().resolve()
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if "." not in name and name != "__main__" and path and Path(path).resolve() == here / f"{name}.py":
            names.append(name)
    return sorted(names)


def exit_with_parent() -> None:
    """In a worker: exit as soon as the process that made the pool is gone.

    Without it, workers orphaned by a SIGKILLed parent finish their task and
    then wait forever for the next one. The parent's sentinel (a pipe the
    worker inherits) reads as closed once the parent has exited, however it ended.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child: nothing to watch
        return

    def watch():
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
    with pool(workers) as workers_pool:
        yield from workers_pool.imap(function, items, chunksize=chunk_size)
