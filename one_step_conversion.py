"""Convert traces into one-step training examples: (problem, population) -> one child.

    python one_step_conversion.py --input datasets/traces/gen1k_arith_1k_c05_X.pkl.gz \\
        --context_type rich --split

writes ``datasets/training/onestep_rich_gen1k_arith_1k_c05_X.train.jsonl`` and
``....val.jsonl``, a sidecar ``<name>.meta.json`` beside each, and the
tokenizer in ``datasets/training/tokenizer/`` (see conversion_common.py).

An example is a transition of one search, generation g-1 -> g (g >= 1):
the prompt shows the state the children are made from, the population of
generation g-1 with its fitnesses and the context with `gen:{g-1}`; the
target is one child in generation g. This is exactly the prompt NeuralSR
builds when it makes generation g: BasicSR's population update
`generate_new_population(population, fitnesses, g)` receives generation g-1,
and `format_utils.prompt_for_state(PromptState(g-1, population, fitnesses, ...))`
is `build_prompt(context, population)` of the row below (a test checks it
against a live search).

One JSON object per line:

    context        str  context text, `gen:{g-1}...` (format_utils.problem_context)
    population     str  generation g-1 (format_utils.format_population)
    target         str  the child, `{expr}<EOS>` (format_utils.format_target)
    expression_id  int  the traced expression (its X, y are in the expressions file)
    metadata       {"generation": g, "target_index": slot of the child in generation g,
                    "source": traces file name, "origin": how the child was made}

The prompt is not stored: it is `format_utils.build_prompt(context, population)`
and train.py builds it; the full text is prompt + target, loss on the target.

Targets. Every child of generation g except
- the elite copy (slot 0, or any child whose origin is 'elite'): it is not
  made from the state, and in the prototype such copies dominated the targets
  (SPEC defect 5). Dropped and counted (`dropped_elite_copies`) unless
  --keep_elite_copies;
- children of a restart (origin 'restart'): re-seeded like generation 0 after
  a stagnation the prompt does not show; skipped and counted.
--ancestors_only keeps only the children in `ancestors_of_best[g]`, the
ancestry of the final best individual. --solved_only keeps only the traces
whose run solved its problem (the trace's `solved` flag); the others are
skipped and counted (`unsolved_traces`). Together they are expert
iteration's data (dagger.py --method expert_iteration): the moves of the
learner's own successful NeuralSR runs that led to the solution, made in the
learner's own states. --sample_fraction f keeps each
remaining candidate with probability f, one seeded draw per (generation,
slot) of a trace, so the choice depends only on (seed, expression id).

DAgger (--dagger). A trace relabelled by the expert carries
`dagger_expressions`, a list indexed by generation (length n_generations + 1):
entry g >= 1 is what the expert (BasicSR's population update) produced from
the learner's population at g-1, in slot order; entry 0 is empty (None or
[]). Expressions are prefix tuples or text that `expression_parser.parse`
reads (printed or model text). An optional `dagger_origins` of the same shape
names how each was made. Targets are those expressions, the prompt is the
learner's state at g-1, as above. The elite copy is an entry with origin
'elite', or, without `dagger_origins`, slot 0 when it equals a best
individual of the learner's state; it is dropped unless --keep_elite_copies.
--dagger refuses --ancestors_only (the ancestry is the learner's, not the
expert's), and a traces file with no labels at all is an error; traces
without labels in a partly labelled file are skipped and counted.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

import conversion_common as cc
import expressions as ex
import format_utils as fu
from expression_parser import ParseError
from file_io import DataFileError

SCRIPT = "one_step_conversion.py"
DAGGER_ORIGIN = "dagger"  # origin of a DAgger label when the trace names none


@dataclass(frozen=True)
class OneStepOptions:
    """Which children become targets (see the module docstring)."""

    ancestors_only: bool = False
    dagger: bool = False
    keep_elite_copies: bool = False
    sample_fraction: float = 1.0
    seed: int = 0
    parentheses: str = "full"  # how expressions are written (format_utils.PARENTHESES)
    solved_only: bool = False


# --------------------------------------------------------------------------
# Core


def one_step_examples(trace: dict, context: fu.ProblemContext, options: OneStepOptions = OneStepOptions(),
                      source: str = "", counts: Counter | None = None) -> Iterator[dict]:
    """The one-step rows of one trace; `source` is the traces file (its name goes in each row)."""
    expression_id = int(trace["expression_id"])
    source_name = Path(source).name
    for generation, context_text, population_text, targets in transitions(trace, context, options, source, counts):
        for slot, target, origin in targets:
            yield {
                "context": context_text, "population": population_text, "target": target,
                "expression_id": expression_id,
                "metadata": {"generation": generation, "target_index": slot, "source": source_name,
                             "origin": origin},
            }


def one_step_lines(trace: dict, context: fu.ProblemContext, options: OneStepOptions = OneStepOptions(),
                   source: str = "", counts: Counter | None = None) -> Iterator[str]:
    """`one_step_examples` as JSONL lines, the bytes of json.dumps(row, ensure_ascii=False).

    Built from pieces: a generation's context and population are escaped
    once for all its rows, and each distinct target once per trace, where
    json.dumps would redo all of it for every row (and cost more than
    building the row). A test checks the bytes against json.dumps.
    """
    expression_id = int(trace["expression_id"])
    source_text = cc.quote(Path(source).name)
    quoted: dict[str, str] = {}  # target and origin texts as JSON strings
    for generation, context_text, population_text, targets in transitions(trace, context, options, source, counts):
        head = f'{{"context": {cc.quote(context_text)}, "population": {cc.quote(population_text)}, "target": '
        middle = f', "expression_id": {expression_id}, "metadata": {{"generation": {generation}, "target_index": '
        for slot, target, origin in targets:
            target_text = quoted.get(target) or quoted.setdefault(target, cc.quote(target))
            origin_text = quoted.get(origin) or quoted.setdefault(origin, cc.quote(origin))
            yield f'{head}{target_text}{middle}{slot}, "source": {source_text}, "origin": {origin_text}}}}}'


def item_lines(item: tuple, counts: Counter, options: OneStepOptions, source: str) -> Iterator[str]:
    """`one_step_lines` of a (trace, context) item (picklable with functools.partial, for workers)."""
    return one_step_lines(item[0], item[1], options, source, counts)


def transitions(trace: dict, context: fu.ProblemContext, options: OneStepOptions, source="",
                counts: Counter | None = None):
    """Per generation g with targets: (g, context and population texts of g-1, [(slot, target text, origin)])."""
    counts = Counter() if counts is None else counts
    if options.solved_only and not trace_solved(trace, source):
        counts["unsolved_traces"] += 1
        return
    trajectory = trace["trajectory"]
    if options.dagger:
        generations = dagger_targets(trace, options, counts, source)
    else:
        generations = trace_targets(trajectory, int(trace["expression_id"]), options, counts)
    expressions, fitnesses = trajectory["expressions"], trajectory["fitnesses"]
    population = trajectory["population"].tolist()
    target_texts: dict = {}  # the same expression recurs across generations: format it once
    for generation, targets in generations:
        if not targets:
            continue
        previous = generation - 1
        population_text = fu.format_population([expressions[i] for i in population[previous]], fitnesses[previous],
                                               options.parentheses)
        formatted = []
        for slot, expression, origin in targets:
            text = target_texts.get(expression)
            if text is None:
                text = target_texts[expression] = fu.format_target(expression, options.parentheses)
            formatted.append((slot, text, origin))
        yield generation, context.text(previous), population_text, formatted


def trace_solved(trace: dict, source="") -> bool:
    """The trace's `solved` flag (generate_traces.py writes it); DataFileError when it has none."""
    solved = trace.get("solved")
    if not isinstance(solved, (bool, np.bool_)):
        raise DataFileError(f"{source}: expression {trace.get('expression_id')}: the trace has no solved flag "
                            f"(true or false) for --solved_only")
    return bool(solved)


def skip_reason(elite: bool, origin: str, keep_elite_copies: bool) -> str | None:
    """Why a child is not a target (the count it goes to), or None when it is one."""
    if origin == cc.RESTART_ORIGIN:
        return "skipped_restarts"
    if elite and not keep_elite_copies:
        return "dropped_elite_copies"
    return None


def trace_targets(trajectory: dict, expression_id: int, options: OneStepOptions, counts: Counter):
    """Per generation g >= 1: (g, [(slot, expression, origin), ...]) of the children that are targets."""
    population = trajectory["population"].tolist()
    origin_codes = trajectory["origins"].tolist()
    names = trajectory["origin_names"]
    expressions = trajectory["expressions"]
    ancestors = trajectory["ancestors_of_best"]
    mask = cc.keep_mask(options.seed, expression_id, trajectory["population"].shape, options.sample_fraction)
    mask = None if mask is None else mask.tolist()
    for generation in range(1, len(population)):
        row, codes = population[generation], origin_codes[generation]
        keep = None if mask is None else mask[generation]
        targets = []
        for slot in (ancestors[generation] if options.ancestors_only else range(len(row))):
            origin = names[codes[slot]]
            reason = skip_reason(slot == 0 or origin == cc.ELITE_ORIGIN, origin, options.keep_elite_copies)
            if reason:
                counts[reason] += 1
                continue
            if keep is not None and not keep[slot]:
                counts["sampled_out"] += 1
                continue
            targets.append((slot, expressions[row[slot]], origin))
        yield generation, targets


def _as_tree(expression, source, expression_id: int, generation: int) -> tuple:
    """A DAgger label (prefix tuple or text) as a prefix tuple; DataFileError when unreadable."""
    if isinstance(expression, (tuple, list)):
        if not ex.is_well_formed(expression):
            raise DataFileError(f"{source}: expression {expression_id} generation {generation}: "
                                f"DAgger expression {tuple(expression)!r} is not a well-formed prefix tuple")
        return tuple(expression)
    try:
        return fu.model_text_to_expression(str(expression))
    except ParseError as error:
        raise DataFileError(f"{source}: expression {expression_id} generation {generation}: "
                            f"unreadable DAgger expression {expression!r} ({error})") from None


def dagger_targets(trace: dict, options: OneStepOptions, counts: Counter, source=""):
    """Like `trace_targets`, from the expert's `dagger_expressions` (see the module docstring)."""
    labels = trace.get("dagger_expressions")
    expression_id = int(trace["expression_id"])
    if labels is None:
        counts["traces_without_dagger_labels"] += 1
        return
    trajectory = trace["trajectory"]
    n_states = len(trajectory["population"])
    origins = trace.get("dagger_origins")
    for name, values in (("dagger_expressions", labels), ("dagger_origins", origins)):
        if values is not None and len(values) != n_states:
            raise DataFileError(f"{source}: expression {expression_id}: {name} has {len(values)} entries, "
                                f"expected one per generation including generation 0 ({n_states})")
    width = max((len(entry) for entry in labels[1:] if entry), default=0)
    mask = cc.keep_mask(options.seed, expression_id, (n_states, width), options.sample_fraction)
    expressions = trajectory["expressions"]
    for generation in range(1, n_states):
        entry = labels[generation] or []
        entry_origins = (origins[generation] or []) if origins is not None else None
        if entry_origins is not None and len(entry_origins) != len(entry):
            raise DataFileError(f"{source}: expression {expression_id} generation {generation}: "
                                f"{len(entry)} dagger_expressions but {len(entry_origins)} dagger_origins")
        state = trajectory["population"][generation - 1]
        fitnesses = trajectory["fitnesses"][generation - 1]
        best = {expressions[i] for i in state[fitnesses == fitnesses.max()]}
        targets = []
        for slot, label in enumerate(entry):
            tree = _as_tree(label, source, expression_id, generation)
            if entry_origins is not None:
                origin = str(entry_origins[slot])
                elite = origin == cc.ELITE_ORIGIN
            else:  # slot 0 is the elite copy only when it is a copy of the learner's best
                elite = slot == 0 and tree in best
                origin = cc.ELITE_ORIGIN if elite else DAGGER_ORIGIN
            reason = skip_reason(elite, origin, options.keep_elite_copies)
            if reason:
                counts[reason] += 1
                continue
            if mask is not None and not mask[generation, slot]:
                counts["sampled_out"] += 1
                continue
            targets.append((slot, tree, origin))
        yield generation, targets


# --------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a traces file into one-step training JSONL: (context, population) -> one child.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cc.add_common_arguments(
        parser, input_help="traces file (kind 'traces') to convert",
        expressions_help="expressions file with X, y for rich/superrich contexts "
                         "(default: the one the traces metadata names)")
    add = parser.add_argument
    add("--context_type", choices=fu.CONTEXT_TYPES, default="basic", help="how much of the problem the context shows")
    add("--ancestors_only", action="store_true", help="targets: only the ancestors of the final best individual")
    add("--dagger", action="store_true", help="targets: the expert's dagger_expressions for the learner's states")
    add("--solved_only", action="store_true",
        help="only the traces whose run solved its problem (expert iteration's filter; with --ancestors_only, the "
             "moves that led to the solution); the others are skipped and counted")
    add("--keep_elite_copies", action="store_true",
        help="keep the elite copy (slot 0) as a target; by default it is dropped and counted")
    return parser


def variant_name(args) -> str:
    targets = "anc" if args.ancestors_only else "dagger" if args.dagger else ""
    return f"solved{targets}" if args.solved_only else targets


def convert(args, argv: list[str]) -> dict:
    """The CLI body: check options, load, convert, write (see conversion_common.run_conversion)."""
    cc.check_common_arguments(args)
    if args.dagger and args.ancestors_only:
        raise cc.UsageError("--dagger and --ancestors_only exclude each other "
                            "(the ancestry belongs to the learner's run, not to the expert's labels)")
    if args.dagger and args.solved_only:
        raise cc.UsageError("--dagger and --solved_only exclude each other "
                            "(the expert's labels do not depend on whether the learner's run solved its problem)")
    args.output = args.output or cc.default_output("onestep", [args.context_type, variant_name(args)], args.input,
                                                   args.parentheses)
    cc.check_outputs(args)
    data = cc.load_trace_input(args.input, args.context_type, args.expressions_file)
    if args.dagger and not any("dagger_expressions" in trace for trace in data.traces):
        raise DataFileError(f"{args.input}: no trace carries DAgger labels (dagger_expressions); "
                            "relabel NeuralSR traces with the expert first")
    options = OneStepOptions(args.ancestors_only, args.dagger, args.keep_elite_copies, args.sample_fraction,
                             args.seed, args.parentheses, args.solved_only)
    source = str(args.input)
    conversion = cc.trace_conversion("one_step", data, functools.partial(item_lines, options=options, source=source),
                                     args, ancestors_only=args.ancestors_only, dagger=args.dagger,
                                     keep_elite_copies=args.keep_elite_copies, solved_only=args.solved_only)
    return cc.run_conversion(conversion, args, argv, SCRIPT)


def main(argv=None) -> int:
    return cc.run_cli(build_parser, convert, argv)


if __name__ == "__main__":
    sys.exit(main())
