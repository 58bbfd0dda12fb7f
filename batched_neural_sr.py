"""BatchedNeuralSR: many NeuralSR searches in lockstep, one model call per generation for all of them.

    from batched_neural_sr import BatchedNeuralSR
    batched = BatchedNeuralSR(checkpoint="checkpoints/onestep-tiny/final", batch_size=256,
                              population_size=20, num_generations=1000, max_size=25, max_depth=10)
    fitted = batched.fit_many([(X1, y1), (X2, y2), ...], seeds=[0, 1, ...], progress=True)
    fitted[0].best_expression_, fitted[0].trajectory_ ...

A GPU samples 256 prompts about as fast as one, so the searches advance
together: every generation, each unfinished search states what it asks the
model (`NeuralSR.next_request`), the requests go to the shared Proposer in
batches of at most `batch_size` (one sampler call each: the prompts are
prefilled once, their samples share the prompt's KV cache), and each search
takes its outputs and finishes its generation (`NeuralSR.step_with`). A
search that is solved (early stop) or out of generations or time leaves the
batch; the others go on. Each search keeps its own trace and ancestry in the
single-run format, and its samples come from its own seeded uniforms, so a
fitted estimator equals `NeuralSR(seed=s).fit(X, y)` run alone (exactly under
greedy decoding; when sampling, up to floating-point differences between
batch shapes, which can flip a draw that falls on a boundary).
`time_limit` counts from the start of the batch, others' model time included.

The two halves of a generation overlap on CUDA: the searches run in two
groups (`overlap`), and while the device samples one group's children
(fast_sampler's launch queues the whole call without waiting), the host
parses, repairs and scores the other group's, then queues that group's next
call. A step then costs about the larger of the two halves, not their sum.

CLI: the benchmark problems, each run with several seeds:

    python batched_neural_sr.py --checkpoint checkpoints/onestep-tiny/final --problems harder --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

import file_io
from neural_sr import DEFAULT_CHECKPOINT, MODES, CheckpointError, NeuralSR, Proposer, load_proposer
from progress import Progress
from random_stream import derive_seed

DEFAULT_BATCH_SIZE = 256


class BatchedNeuralSR:
    """Fits many NeuralSR searches in lockstep over one shared Proposer (see the module docstring)."""

    def __init__(self, checkpoint=DEFAULT_CHECKPOINT, batch_size: int = DEFAULT_BATCH_SIZE, overlap: int | None = None,
                 **params):
        """`params`: every NeuralSR parameter except `seed` (one seed per dataset goes to `fit_many`).

        batch_size  problems per model call
        overlap     groups of searches in flight (see `_lockstep`); None: 2 on CUDA, 1 on the CPU
        """
        if "seed" in params:
            raise TypeError("BatchedNeuralSR takes no seed: give fit_many one seed per dataset")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if overlap is not None and (not isinstance(overlap, (int, np.integer)) or isinstance(overlap, bool)
                                    or overlap < 1):
            raise ValueError(f"overlap must be None or an integer >= 1, got {overlap!r}")
        NeuralSR(checkpoint=checkpoint, **params)  # bad parameters fail here, before any model is loaded
        self.checkpoint = checkpoint
        self.batch_size = int(batch_size)
        self.overlap = None if overlap is None else int(overlap)
        self.params = params
        self._proposer = checkpoint if isinstance(checkpoint, Proposer) else None

    @property
    def proposer(self) -> Proposer:
        """The shared Proposer (loaded on first use)."""
        if self._proposer is None:
            self._proposer = load_proposer(self.checkpoint, self.params.get("device"))
        return self._proposer

    def make_estimator(self, seed: int | None, **overrides) -> NeuralSR:
        """A NeuralSR with this batch's parameters (and `overrides`) on the shared Proposer."""
        return NeuralSR(**{**self.params, **overrides}, checkpoint=self.proposer, seed=seed)

    def fit_many(self, datasets: Sequence[tuple], seeds: Sequence[int], progress: bool = False) -> list[NeuralSR]:
        """Fitted estimators, in input order, one per (X, y) with its seed."""
        if len(datasets) != len(seeds):
            raise ValueError(f"{len(datasets)} datasets but {len(seeds)} seeds")
        return self.fit_estimators([self.make_estimator(seed) for seed in seeds], datasets, progress)

    def fit_estimators(self, estimators: Sequence[NeuralSR], datasets: Sequence[tuple],
                       progress: bool | Progress = False) -> list[NeuralSR]:
        """Fit the given estimators (from `make_estimator`, e.g. with per-problem thresholds) in lockstep.

        `progress`: True for a bar of generations, or a caller's Progress to count them on.
        """
        if len(datasets) != len(estimators):
            raise ValueError(f"{len(datasets)} datasets but {len(estimators)} estimators")
        if isinstance(progress, Progress):
            return self._lockstep(estimators, datasets, progress)
        total = sum(int(estimator.num_generations) for estimator in estimators)
        with Progress(total, "generations", disable=not progress) as bar:
            return self._lockstep(estimators, datasets, bar)

    def _lockstep(self, estimators, datasets, bar: Progress) -> list[NeuralSR]:
        """Begin every search, then step the unfinished ones, a group at a time, until none is left.

        The searches are split into `overlap` groups whose model calls are in
        flight one after the other: while the device samples one group's
        children, the host finishes the other group's generation (parsing,
        fallback children, fitness) and queues its next call. A group whose
        partner has finished is split again, so `overlap` groups stay in
        flight while enough searches are left.
        """
        active = []
        for index, (estimator, (X, y)) in enumerate(zip(estimators, datasets)):
            try:
                going = estimator.begin(X, y)
            except ValueError as error:
                raise ValueError(f"dataset {index}: {error}") from None
            if going:
                active.append(estimator)
            else:
                bar.update(int(estimator.num_generations))
        in_flight: deque = deque()  # (group, pending outputs), in launch order
        for group in _split(active, self.overlap_groups):
            in_flight.append((group, self._launch([estimator.next_request() for estimator in group])))
        while in_flight:
            group, pending = in_flight.popleft()
            still = []
            for estimator, output in zip(group, pending.result()):
                if estimator.step_with(*output):
                    still.append(estimator)
                    bar.update(1)
                else:  # stopped: its remaining generations are done too, as far as the ETA goes
                    bar.update(int(estimator.num_generations) - (len(estimator.best_mse_history_) - 2))
            for part in _split(still, self.overlap_groups - len(in_flight)):
                in_flight.append((part, self._launch([estimator.next_request() for estimator in part])))
        return list(estimators)

    @property
    def overlap_groups(self) -> int:
        """Groups in flight: `overlap`, or when None 2 on CUDA (the host works while the device samples), else 1."""
        if self.overlap is not None:
            return self.overlap
        return 2 if self.proposer.device.type == "cuda" else 1

    def _launch(self, requests: list) -> "_PendingBatch":
        """Start the model calls (at most batch_size problems each) for the requests; None marks a restart."""
        asking = [index for index, request in enumerate(requests) if request is not None]
        early_stop = self.overlap_groups == 1  # waiting for the device is free when nothing else would run
        calls = []
        for start in range(0, len(asking), self.batch_size):
            chunk = asking[start:start + self.batch_size]
            started = time.perf_counter()
            pending = self.proposer.launch([requests[index] for index in chunk], early_stop=early_stop)
            calls.append((chunk, pending, time.perf_counter() - started))
        return _PendingBatch(len(requests), calls)


class _PendingBatch:
    """The model calls of one group of searches; `result()` gives (outputs, model seconds) per search."""

    def __init__(self, size: int, calls: list):
        self.size, self.calls = size, calls

    def result(self) -> list[tuple]:
        results: list[tuple] = [(None, 0.0)] * self.size  # (None, 0.0): no request (a restart generation)
        for chunk, pending, launch_seconds in self.calls:
            started = time.perf_counter()
            outputs = pending.result()
            share = (launch_seconds + time.perf_counter() - started) / len(chunk)  # the call's time, split
            for index, output in zip(chunk, outputs):
                results[index] = (output, share)
        return results


def _split(items: list, parts: int) -> list[list]:
    """`items` in at most `parts` (>= 1) contiguous groups of near-equal size, none empty."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    groups, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        groups.append(items[start:end])
        start = end
    return [group for group in groups if group]


# --------------------------------------------------------------------------
# CLI: benchmark problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run NeuralSR on benchmark problems, many searches batched on one device.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="checkpoint folder written by train.py")
    add("--problems", default="harder", help="comma-separated problem names or tiers (see problems.py)")
    add("--seeds", type=int, default=3, help="runs per problem (data seeds 0..N-1)")
    add("--seed", type=int, default=0, help="master seed; run s of a problem searches with derive_seed(seed, problem, s)")
    add("--n_points", type=int, default=None, help="points sampled per problem (default: the problem's 50)")
    add("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="problems per model call")
    add("--overlap", type=int, default=None,
        help="groups of searches in flight, so the host works while the device samples (default: 2 on CUDA, 1 on CPU)")
    add("--population_size", type=int, default=20, help="individuals per generation")
    add("--num_generations", type=int, default=100, help="generations per run")
    add("--max_size", type=int, default=25, help="maximum expression size (nodes)")
    add("--max_depth", type=int, default=10, help="maximum expression depth")
    add("--mode", choices=MODES, default="one_step", help="one child per sample, or a whole population per sample")
    add("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    add("--top_k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    add("--top_p", type=float, default=1.0, help="nucleus sampling threshold (1 = off)")
    add("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add("--constrained", action="store_true", help="grammar-constrained decoding (every proposal well-formed)")
    add("--json", metavar="PATH", default=None, help="also write every run's summary as JSON to PATH")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def run_problems(args) -> list[dict]:
    """Every (problem, seed) run batched together; one summary dict per run."""
    import problems

    chosen = problems.resolve_problems(args.problems)
    runs = [(problem, s) for problem in chosen for s in range(args.seeds)]
    batched = BatchedNeuralSR(
        checkpoint=args.checkpoint, batch_size=args.batch_size, overlap=args.overlap,
        population_size=args.population_size,
        num_generations=args.num_generations, max_size=args.max_size, max_depth=args.max_depth, mode=args.mode,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, device=args.device,
        constrained=args.constrained)
    datasets = [problem.sample(seed=s, n_points=args.n_points) for problem, s in runs]
    seeds = [derive_seed(args.seed, zlib.crc32(problem.name.encode()), s) for problem, s in runs]
    fitted = batched.fit_many(datasets, seeds, progress=not args.quiet)
    return [{"problem": problem.name, "data_seed": s, "seed": seed, "solved": problems.is_solved(model, problem),
             **model.summary()} for (problem, s), seed, model in zip(runs, seeds, fitted)]


def summary_line(results: list[dict], seconds: float) -> str:
    """'15 runs: solved 9 (60.0%), mean generations 412.3, well-formed 83.1% (...), wall 31.2 s (model 20.1 s)'"""
    n = len(results)
    solved = sum(r["solved"] for r in results)
    generations = float(np.mean([r["generations"] for r in results])) if n else 0.0
    neural = sum(r["n_neural"] for r in results)
    fallback = sum(r["n_fallback"] for r in results)
    asked = neural + fallback
    well_formed = neural / asked if asked else 0.0
    model_seconds = sum(r["model_seconds"] for r in results)
    return (f"{n} runs: solved {solved} ({solved / n if n else 0.0:.1%}), mean generations {generations:.1f}, "
            f"well-formed {well_formed:.1%} (neural {neural}, fallback {fallback}), "
            f"wall {seconds:.1f} s (model {model_seconds:.1f} s)")


def argument_problem(args) -> str | None:
    """What is wrong with the flags the search itself does not check (one line), or None; creates --json's folder."""
    if args.seeds < 1:
        return f"--seeds must be at least 1, got {args.seeds}"
    if args.seed < 0:
        return f"--seed must be a non-negative integer, got {args.seed}"
    if args.n_points is not None and args.n_points < 2:
        return f"--n_points must be at least 2 (a fit needs 2 data points), got {args.n_points}"
    if args.json:  # a bad path fails now, not after the runs
        try:
            file_io.check_writable(args.json)
        except file_io.OutputError as error:
            return f"--json {error}"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        results = run_problems(args)
    except (CheckpointError, ValueError, TypeError) as error:  # includes unknown problems and bad parameters
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name in dict.fromkeys(r["problem"] for r in results):
        mine = [r for r in results if r["problem"] == name]
        print(f"{name:32s} solved {sum(r['solved'] for r in mine)}/{len(mine)}  "
              f"mean generations {np.mean([r['generations'] for r in mine]):7.1f}  "
              f"well-formed {np.mean([r['well_formed_rate'] for r in mine]):.1%}")
    print(summary_line(results, time.perf_counter() - started))
    if args.json:
        with file_io.atomic_open(Path(args.json), "w") as handle:
            json.dump({"command": ["batched_neural_sr.py", *(sys.argv[1:] if argv is None else argv)],
                       "runs": results}, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
