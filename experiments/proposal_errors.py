"""Why NeuralSR's proposals are rejected: a breakdown of every proposal of a few short runs.

    python experiments/proposal_errors.py                                  # the shipped model, free sampling
    python experiments/proposal_errors.py --constrained                    # grammar-constrained decoding
    python experiments/proposal_errors.py --problems harder --num_generations 20 --checkpoint PATH

Runs NeuralSR (early stop off, so every run asks the model every
generation) on each problem at `--seed` and sorts each proposal into one
class, in this order: no_eos (never ended within the token budget),
unbalanced (does not parse; its parentheses do not match), malformed (does
not parse otherwise), too_big (more nodes than max_size), bad_symbol (a
variable or operator outside the search), too_deep (deeper than max_depth),
nonfinite (scores NaN or inf on the data), usable. Prints the counts and
shares, and --json writes them.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import problems  # noqa: E402
from neural_sr import DEFAULT_CHECKPOINT, CheckpointError, NeuralSR, Proposer  # noqa: E402

CLASSES = ("usable", "unbalanced", "malformed", "no_eos", "too_big", "bad_symbol", "too_deep", "nonfinite")


def classify(search: NeuralSR, proposer: Proposer, ids: tuple) -> str:
    """The first reason (CLASSES order) a proposal cannot join the population, or 'usable'."""
    eos = proposer.tokenizer.eos_token_id
    if eos not in ids:
        return "no_eos"
    tree = proposer.parse_child(ids)
    if tree is None:
        depth, negative = 0, False
        for token in proposer.tokenizer.convert_ids_to_tokens([i for i in ids if i != eos]):
            depth += (token == "(") - (token == ")")
            negative |= depth < 0
        return "unbalanced" if depth or negative else "malformed"
    if len(tree) > search.max_size:
        return "too_big"
    if not all(token.__class__ is float or token in search._symbols for token in tree):
        return "bad_symbol"
    if not search._fits_limits(tree):
        return "too_deep"
    return "usable" if np.isfinite(search.score_population([tree])[0]) else "nonfinite"


class CountingNeuralSR(NeuralSR):
    """NeuralSR that sorts every proposal into a class before using it as usual."""

    counts: collections.Counter

    def _proposals(self, outputs, count):
        for ids in outputs:
            self.counts[classify(self, self._proposer, tuple(ids))] += 1
        return super()._proposals(outputs, count)


def breakdown(checkpoint, names: list[str], num_generations: int, seed: int, constrained: bool,
              temperature: float, device: str) -> collections.Counter:
    proposer = Proposer.load(checkpoint, device=device)
    counts = collections.Counter()
    for problem in problems.resolve_problems(names):
        X, y = problem.sample(seed=seed)
        search = CountingNeuralSR(checkpoint=proposer, seed=seed, constrained=constrained, temperature=temperature,
                                  population_size=20, num_generations=num_generations, max_size=25, max_depth=10,
                                  early_stop_threshold=None)
        search.counts = counts
        search.fit(X, y)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="NeuralSR checkpoint folder")
    parser.add_argument("--problems", default="quadratic,pythagorean_3d,complex_rational",
                        help="problem names or tiers, comma-separated")
    parser.add_argument("--num_generations", type=int, default=8, help="generations per run")
    parser.add_argument("--seed", type=int, default=0, help="data and search seed")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--constrained", action="store_true", help="grammar-constrained decoding")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the counts here")
    args = parser.parse_args(argv)
    try:
        counts = breakdown(args.checkpoint, args.problems.split(","), args.num_generations, args.seed,
                           args.constrained, args.temperature, args.device)
    except (CheckpointError, problems.UnknownProblemError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    total = sum(counts.values())
    print(f"{total} proposals ({'constrained' if args.constrained else 'free'} sampling, "
          f"temperature {args.temperature:g}, {args.checkpoint})")
    for name in CLASSES:
        print(f"  {name:11s} {counts[name]:6d}  {counts[name] / max(1, total):6.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"total": total, **{name: counts[name] for name in CLASSES},
                                               "settings": vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
