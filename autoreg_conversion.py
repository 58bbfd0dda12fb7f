"""Convert traces into autoregressive training examples: (problem, population) -> the whole next population.

    python autoreg_conversion.py --input datasets/traces/gen1k_arith_1k_c05_X.pkl.gz --split

writes ``datasets/training/autoreg_basic_gen1k_arith_1k_c05_X.{train,val}.jsonl``,
their sidecars and the tokenizer (see conversion_common.py).

One example per transition g-1 -> g (g >= 1) of each trace. The prompt is the
one-step prompt (one_step_conversion.py): the state the children are made
from, generation g-1 with `gen:{g-1}`; the target is every child of
generation g in slot order, `;`-joined, then `<EOS>`
(format_utils.format_population_target). The elite copy (slot 0, origin
'elite') is left out of the target unless --keep_elite_copies (the count of
copies left out is reported); a generation made by a restart (origin
'restart': re-seeded after a stagnation the prompt does not show) gives no
example and is counted. --sample_fraction keeps each generation with that
probability, one seeded draw per (seed, expression id, generation).

One JSON object per line:

    context        str  context text, `gen:{g-1}...`
    population     str  generation g-1 with fitnesses (format_utils.format_population)
    target         str  generation g's children, `{expr};{expr};...<EOS>`
    expression_id  int
    metadata       {"generation": g, "n_targets": children in the target,
                    "source": traces file name}

The prompt is `format_utils.build_prompt(context, population)`; the full text
is prompt + target, loss on the target.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import conversion_common as cc
import format_utils as fu

SCRIPT = "autoreg_conversion.py"


@dataclass(frozen=True)
class AutoregOptions:
    keep_elite_copies: bool = False
    sample_fraction: float = 1.0
    seed: int = 0
    parentheses: str = "full"  # how expressions are written (format_utils.PARENTHESES)


def autoreg_examples(trace: dict, context: fu.ProblemContext, options: AutoregOptions = AutoregOptions(),
                     source: str = "", counts: Counter | None = None) -> Iterator[dict]:
    """The autoregressive rows of one trace; `source` is the traces file (its name goes in each row)."""
    counts = Counter() if counts is None else counts
    trajectory = trace["trajectory"]
    expression_id = int(trace["expression_id"])
    source_name = Path(source).name
    expressions, fitnesses = trajectory["expressions"], trajectory["fitnesses"]
    population = trajectory["population"].tolist()
    origin_codes = trajectory["origins"].tolist()
    names = trajectory["origin_names"]
    mask = cc.keep_mask(options.seed, expression_id, len(population), options.sample_fraction)
    for generation in range(1, len(population)):
        origins = [names[code] for code in origin_codes[generation]]
        if cc.RESTART_ORIGIN in origins:
            counts["skipped_restart_generations"] += 1
            continue
        if mask is not None and not mask[generation]:
            counts["sampled_out"] += 1
            continue
        children = []
        for slot, (index, origin) in enumerate(zip(population[generation], origins)):
            if (slot == 0 or origin == cc.ELITE_ORIGIN) and not options.keep_elite_copies:
                counts["dropped_elite_copies"] += 1
                continue
            children.append(expressions[index])
        previous = generation - 1
        yield {
            "context": context.text(previous),
            "population": fu.format_population([expressions[i] for i in population[previous]], fitnesses[previous],
                                               options.parentheses),
            "target": fu.format_population_target(children, options.parentheses),
            "expression_id": expression_id,
            "metadata": {"generation": generation, "n_targets": len(children), "source": source_name},
        }


def item_lines(item: tuple, counts: Counter, options: AutoregOptions, source: str) -> Iterator[str]:
    """The JSONL lines of a (trace, context) item (picklable with functools.partial, for workers)."""
    return map(cc.json_line, autoreg_examples(item[0], item[1], options, source, counts))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a traces file into autoregressive training JSONL: "
                    "(context, population) -> the whole next population.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cc.add_common_arguments(
        parser, input_help="traces file (kind 'traces') to convert",
        expressions_help="expressions file with X, y for rich/superrich contexts "
                         "(default: the one the traces metadata names)")
    parser.add_argument("--context_type", choices=fu.CONTEXT_TYPES, default="basic",
                        help="how much of the problem the context shows")
    parser.add_argument("--keep_elite_copies", action="store_true",
                        help="keep the elite copy (slot 0) in the target; by default it is left out and counted")
    return parser


def convert(args, argv: list[str]) -> dict:
    """The CLI body: check options, load, convert, write (see conversion_common.run_conversion)."""
    cc.check_common_arguments(args)
    args.output = args.output or cc.default_output("autoreg", [args.context_type], args.input, args.parentheses)
    cc.check_outputs(args)
    data = cc.load_trace_input(args.input, args.context_type, args.expressions_file)
    options = AutoregOptions(args.keep_elite_copies, args.sample_fraction, args.seed, args.parentheses)
    source = str(args.input)
    conversion = cc.trace_conversion("autoreg", data, functools.partial(item_lines, options=options, source=source),
                                     args, keep_elite_copies=args.keep_elite_copies)
    return cc.run_conversion(conversion, args, argv, SCRIPT)


def main(argv=None) -> int:
    return cc.run_cli(build_parser, convert, argv)


if __name__ == "__main__":
    sys.exit(main())
