"""Benchmark: NeuralSR's prompt token ids, whole-text tokenization against token_codec.PromptEncoder.

Protocol: B problems (the benchmark table, cycled, data seed = index), each
a BasicSR run (population 20, max_size 25, max_depth 10, early stop off)
recording the state of every generation, so consecutive prompts change the
way a live search's do (new children, the elite and survivors repeated).
For each generation, the B prompts are built (1) as text with
`format_utils.prompt_for_state` and tokenized in one batch call, and (2) as
ids by one PromptEncoder kept across generations (as a Proposer keeps it);
the two are checked equal, and the CPU time (process_time: the tokenizer's
batch call may use several threads) per generation is printed, cold first
generation included.

    python bench/bench_prompt_ids.py              # B = 256, 6 generations
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import numpy as np  # noqa: E402

import format_utils as fu  # noqa: E402
import problems  # noqa: E402
from basic_sr import BasicSR  # noqa: E402
from token_codec import PromptEncoder  # noqa: E402
from tokenizer import build_tokenizer  # noqa: E402


class RecordingSR(BasicSR):
    """BasicSR keeping the state each generation is made from."""

    def generate_new_population(self, population, fitnesses, generation):
        self.states.append((generation - 1, list(population), np.array(fitnesses)))
        return super().generate_new_population(population, fitnesses, generation)


def recorded_runs(n_problems: int, generations: int) -> list:
    names = list(problems.TIERS["all"])
    runs = []
    for index in range(n_problems):
        problem = problems.get_problem(names[index % len(names)])
        X, y = problem.sample(seed=index)
        model = RecordingSR(population_size=20, num_generations=generations, max_size=25, max_depth=10,
                            seed=index, early_stop_threshold=None)
        model.states = []
        model.fit(X, y)
        runs.append((problem.n_vars, X, y, model.states))
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=256, help="problems per generation (B)")
    parser.add_argument("--generations", type=int, default=6, help="generations timed")
    args = parser.parse_args(argv)
    runs = recorded_runs(args.problems, args.generations)
    tokenizer = build_tokenizer()
    for context_type in ("basic", "rich"):
        contexts, encoder = fu.ContextCache(), PromptEncoder(tokenizer)
        whole = pieces = 0.0
        for generation in range(args.generations):
            states = [fu.PromptState(g, population, fitnesses, n_vars, ("+", "-", "*", "/"), (), (1.0,), X, y,
                                     context_type)
                      for n_vars, X, y, history in runs for g, population, fitnesses in [history[generation]]]
            started = time.process_time()
            texts = [fu.prompt_for_state(state, contexts) for state in states]
            expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
            whole += time.process_time() - started
            started = time.process_time()
            built = [encoder.ids(state, contexts) for state in states]
            pieces += time.process_time() - started
            assert built == expected
        print(f"{context_type:6s} B={args.problems}: CPU ms per generation: text + tokenizer "
              f"{1000 * whole / args.generations:.0f}, PromptEncoder {1000 * pieces / args.generations:.0f} "
              f"({whole / pieces:.1f}x); mean prompt tokens {np.mean([len(ids) for ids in built]):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
