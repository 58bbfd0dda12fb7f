"""Benchmark: the host's half of a NeuralSR generation (everything but the model), against BasicSR's generation.

With the device's half overlapped (batched_neural_sr runs two groups of
searches, the host finishing one while the device samples the other), a
batched NeuralSR step costs about the larger of the two halves; this
measures the host's, on this machine, without a GPU.

Protocol:
1. Outputs pool: the checkpoint (`--checkpoint`, the shipped model by
   default) runs on the CPU, batched, on the harder problems x `--pool_seeds`
   seeds for `--pool_generations` generations; every request's 19 outputs
   are kept, by the problem's number of variables (a real model's mix of
   usable, unparsable and invalid children).
2. Replay: a Proposer that builds every prompt's ids (real work) and answers
   each request with pooled outputs of its variable count, picked by the
   request's seed. BatchedNeuralSR (overlap 1, no trajectory, as evaluations
   run) on B = `--B` problems (the harder tier cycled, data seed = index //
   5), population 20, max_size 25, max_depth 10, early stop off, for G1 = 2
   and G2 = 2 + `--generations` generations: (t2 - t1) / (G2 - G1) / B =
   host seconds per problem-generation (process CPU time, one core).
3. BasicSR on the same datasets and settings, `--basic_generations` each:
   seconds per generation. Alternated with 2, `--repeats` times; minimum of
   each. The ratio host / BasicSR is printed.

    python bench/bench_neural_host.py                    # ~2 minutes on a laptop core
    python bench/bench_neural_host.py --smoke            # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import torch  # noqa: E402

import problems  # noqa: E402
from basic_sr import BasicSR  # noqa: E402
from batched_neural_sr import BatchedNeuralSR  # noqa: E402
from neural_sr import DEFAULT_CHECKPOINT, PendingProposals, Proposer  # noqa: E402

SETTINGS = dict(population_size=20, max_size=25, max_depth=10, early_stop_threshold=None)


class ReplayProposer(Proposer):
    """A loaded Proposer that builds each prompt but answers from a pool of recorded outputs."""

    def __init__(self, base: Proposer, pool: dict):
        self.__dict__.update(base.__dict__)
        self.pool = pool

    def launch(self, requests, early_stop=None) -> PendingProposals:
        results = []
        for request in requests:
            self.prompt_ids(request.state)  # the host's share of a real call
            choices = self.pool[request.state.n_vars]
            results.append(choices[random.Random(request.seed).randrange(len(choices))])
        return PendingProposals(self, results, [])


def harder_datasets(count: int) -> list:
    names = problems.TIERS["harder"]
    return [problems.get_problem(names[i % len(names)]).sample(seed=i // len(names)) for i in range(count)]


def record_pool(proposer: Proposer, seeds: int, generations: int) -> dict:
    """Real outputs of the model, keyed by the problem's number of variables."""
    pool: dict = {}
    launch = proposer.launch

    def recording(requests, early_stop=None):
        pending = launch(requests, early_stop=early_stop)
        outputs = pending.result()
        for request, output in zip(requests, outputs):
            pool.setdefault(request.state.n_vars, []).append(output)
        return PendingProposals(proposer, outputs, [])

    proposer.launch = recording
    try:
        datasets = harder_datasets(len(problems.TIERS["harder"]) * seeds)
        BatchedNeuralSR(checkpoint=proposer, batch_size=len(datasets), num_generations=generations, **SETTINGS
                        ).fit_many(datasets, seeds=[1000 + i for i in range(len(datasets))])
    finally:
        del proposer.launch
    return pool


def host_seconds(proposer: ReplayProposer, datasets: list, generations: int) -> float:
    """Host CPU seconds per problem-generation (difference of two lengths: start-up cancels)."""
    times = {}
    for count in (2, 2 + generations):
        batched = BatchedNeuralSR(checkpoint=proposer, batch_size=len(datasets), overlap=1, num_generations=count,
                                  **SETTINGS)
        started = time.process_time()
        batched.fit_many(datasets, seeds=list(range(len(datasets))))
        times[count] = time.process_time() - started
    return (times[2 + generations] - times[2]) / generations / len(datasets)


def basic_seconds(datasets: list, generations: int) -> float:
    started = time.process_time()
    for index, (X, y) in enumerate(datasets):
        BasicSR(num_generations=generations, seed=index, **SETTINGS).fit(X, y)
    return (time.process_time() - started) / (generations * len(datasets))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="checkpoint whose outputs are replayed")
    parser.add_argument("--B", type=int, default=64, help="searches in lockstep")
    parser.add_argument("--generations", type=int, default=30, help="generations timed per repeat")
    parser.add_argument("--basic_generations", type=int, default=200, help="BasicSR generations per dataset")
    parser.add_argument("--pool_seeds", type=int, default=2, help="runs per harder problem recording outputs")
    parser.add_argument("--pool_generations", type=int, default=12, help="generations per recording run")
    parser.add_argument("--repeats", type=int, default=5, help="alternated repeats (minimum reported)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.B, args.generations, args.basic_generations, args.pool_seeds, args.pool_generations = 8, 3, 20, 1, 2
        args.repeats = 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args) -> int:
    began = time.perf_counter()
    proposer = Proposer.load(args.checkpoint, device="cpu")
    pool = record_pool(proposer, args.pool_seeds, args.pool_generations)
    n_outputs = sum(len(outputs) for entries in pool.values() for outputs in entries)
    print(f"pool: {n_outputs} outputs of {args.checkpoint} ({time.perf_counter() - began:.0f} s)", flush=True)
    replay = ReplayProposer(proposer, pool)
    datasets = harder_datasets(args.B)
    BatchedNeuralSR(checkpoint=replay, batch_size=args.B, overlap=1, num_generations=2, **SETTINGS).fit_many(
        datasets, seeds=list(range(args.B)))  # warm-up: caches and memos as a long run has them
    host, basic = [], []
    for repeat in range(args.repeats):
        host.append(host_seconds(replay, datasets, args.generations))
        basic.append(basic_seconds(datasets[:5], args.basic_generations))
        print(f"  repeat {repeat + 1}/{args.repeats}: host {host[-1] * 1e6:.0f} us per problem-generation, "
              f"BasicSR {basic[-1] * 1e6:.0f} us per generation", flush=True)
    result = dict(checkpoint=args.checkpoint, B=args.B, pool_outputs=n_outputs,
                  host_seconds_per_problem_generation=min(host), basic_seconds_per_generation=min(basic),
                  ratio=min(host) / min(basic), all_host=host, all_basic=basic, args=vars(args))
    print(f"NeuralSR host half {min(host) * 1e6:.0f} us per problem-generation, BasicSR {min(basic) * 1e6:.0f} us "
          f"per generation: ratio {result['ratio']:.2f} (total {time.perf_counter() - began:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
