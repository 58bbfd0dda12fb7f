"""DAgger relabelling: what the expert (BasicSR) would make from the learner's own states.

    python dagger_relabel.py --input datasets/traces/gen50_arith_1k_c05_neural.pkl.gz \\
        --output datasets/traces/gen50_arith_1k_c05_neural.dagger.pkl.gz --workers 2

DAgger trains the learner on the states it visits itself, labelled by the
expert. The prototype got this wrong (SPEC defect 2): its expert labelled
the states of the expert's own run. Here, for every trace and every
generation g >= 1, the expert is BasicSR's population update
`generate_new_population(population, fitnesses, g)` applied to the
LEARNER's population and fitnesses at g - 1, read from the trace's
trajectory; nothing of the expert's own search is ever run.

The expert's state, per (trace, generation): a fresh BasicSR built with the
trace file's BasicSR parameters (`basic_sr_params` in its metadata; the
parameters that only steer a whole run, such as the stopping rules, are left
out) and the seed `derive_seed(--seed, expression_id, g)`, set up on the
problem's X and y from the expressions file (variables, operators,
constants, scorer). The population update reads the recorded fitnesses
(float32 as stored, which is also what the prompt shows); the elite is the
best of the learner's population. A fresh BasicSR believes its best has not
improved since generation 0, so from generation STAGNATION_LIMIT on it
would throw the state away and re-seed the population (a restart). Its
`_last_improvement` is therefore set to g: the learner's restarts are the
learner's business, and a restart's children do not depend on the state, so
they would teach nothing (the conversion skips them anyway).

Each trace gains three fields, one entry per generation including generation
0 (None there), in the format `one_step_conversion.py --dagger` reads:

    dagger_expressions  list[list[tuple]]  the expert's children (prefix tuples), slot order
    dagger_origins      list[list[str]]    how each was made: 'elite', 'crossover', 'mutation_*', 'copy'
    dagger_parents      list[int32 (P, 2)] their parents' slots in the learner's generation g - 1,
                                           -1 = none (as trajectory `parents`)

The learner's fields are left as they were. The metadata is the input's plus
`dagger: True` and `dagger_relabel` (the command, parameters, seed, code
version, the expert's parameters, label counts, and the source: the learner's
traces file with its sha256, method and command). Relabelling an already
relabelled file replaces its labels and keeps the recorded source, so
running twice, in place or not, gives the same bytes.

Determinism: the labels of a trace depend only on (trace, X, y, parameters,
seed); every trace is stored as its own pickle (file_io) and the metadata
holds no timestamp, host or output path, so the file is the same bytes for
any --workers and any run.
Writes are atomic (file_io.save). Nothing is replaced without --in_place
(the input) or --overwrite (an existing --output).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import conversion_common as cc
import file_io
from basic_sr import BasicSR, check_data
from file_io import DataFileError
from generate_traces import VOLATILE_METADATA, file_sha256, write_run_log
from parallel import parallel_map
from progress import Progress
from random_stream import derive_seed
from trajectory import NO_PARENT, population_at

SCRIPT = "dagger_relabel.py"
LABEL_FIELDS = ("dagger_expressions", "dagger_origins", "dagger_parents")
METADATA_FIELDS = ("dagger", "dagger_relabel")
# BasicSR parameters that shape one population update; the others (stopping,
# seeding, recording) belong to a whole run and are not the expert's.
EXPERT_PARAMETERS = ("population_size", "max_depth", "max_size", "tournament_size", "tournament_p",
                     "crossover_prob", "constants", "binary_operators", "unary_operators", "complexity_penalty")
EXPERT = "basic_sr.BasicSR.generate_new_population"


class UsageError(Exception):
    """A bad combination of options or files; main prints it as one `error:` line, exit 2."""


# --------------------------------------------------------------------------
# Core: the expert on one state, on one trace


def expert_parameters(basic_sr_params: dict, path) -> dict:
    """The BasicSR parameters of one population update, from a traces file's `basic_sr_params`.

    Unknown keys (a NeuralSR's sampling settings, say) are ignored; invalid
    values raise DataFileError naming the file.
    """
    if not isinstance(basic_sr_params, dict):
        raise DataFileError(f"{path}: metadata lacks basic_sr_params (the search settings the expert needs)")
    params = {key: basic_sr_params[key] for key in EXPERT_PARAMETERS if key in basic_sr_params}
    for key in ("constants", "binary_operators", "unary_operators"):
        if key in params:
            params[key] = list(params[key])
    try:
        BasicSR(**params)
    except (TypeError, ValueError) as error:
        raise DataFileError(f"{path}: basic_sr_params are not valid BasicSR parameters ({error})") from None
    return params


def expert_step(params: dict, X: np.ndarray, y: np.ndarray, population: list[tuple], fitnesses: np.ndarray,
                generation: int, seed: int) -> tuple[list[tuple], list[tuple[int, ...]], list[str]]:
    """The expert's children of one learner state: (children, parent slots, origins).

    `population` and `fitnesses` are the learner's generation `generation - 1`;
    `seed` is this step's own seed (see the module docstring).
    """
    # As at `generation` with no stagnation behind: never a restart (see the module docstring).
    expert = BasicSR(**params, seed=seed).prepare(X, y, generation)
    with np.errstate(all="ignore"):
        return expert.generate_new_population(list(population), np.asarray(fitnesses, dtype=np.float64), generation)


def relabel_trace(trace: dict, X, y, params: dict, seed: int) -> dict:
    """The trace with the expert's labels of every learner state (see the module docstring)."""
    expression_id = int(trace["expression_id"])
    trajectory = trace["trajectory"]
    fitnesses = np.asarray(trajectory["fitnesses"])
    n_states = int(trajectory["population"].shape[0])
    expressions, origins, parents = [None], [None], [None]
    for generation in range(1, n_states):
        state = population_at(trajectory, generation - 1)
        step_seed = derive_seed(seed, expression_id, generation)
        children, child_parents, child_origins = expert_step(params, X, y, state, fitnesses[generation - 1],
                                                             generation, step_seed)
        expressions.append(children)
        origins.append(child_origins)
        parents.append(np.array([(tuple(p) + (NO_PARENT, NO_PARENT))[:2] for p in child_parents], dtype=np.int32))
    return {**learner_trace(trace), "dagger_expressions": expressions, "dagger_origins": origins,
            "dagger_parents": parents}


def learner_trace(trace: dict) -> dict:
    """A trace without labels of an earlier relabelling."""
    return {key: value for key, value in trace.items() if key not in LABEL_FIELDS}


def _relabelled(item: tuple, params: dict, seed: int) -> tuple[dict, Counter]:
    """(relabelled trace, its label origins) of a (trace, X, y) item; runs in a worker."""
    trace, X, y = item
    relabelled = relabel_trace(trace, X, y, params, seed)
    counts = Counter(origin for entry in relabelled["dagger_origins"][1:] for origin in entry)
    return relabelled, counts


def relabel_traces(items: list[tuple], params: dict, seed: int, workers: int = 1, progress: bool = True):
    """Yield (relabelled trace, label origin counts) for (trace, X, y) items, in input order.

    file_io stores every record as its own pickle, so the file is the same
    bytes whether a trace was relabelled here or came back from a worker.
    """
    run = functools.partial(_relabelled, params=params, seed=seed)
    with Progress(len(items), "traces", disable=not progress) as bar:
        for result in parallel_map(run, items, workers):
            bar.update(1)
            yield result


# --------------------------------------------------------------------------
# Inputs and metadata


def learner_items(traces: list[dict], records: list[dict], params: dict, path) -> list[tuple]:
    """(learner trace, X, y) per trace, checked; DataFileError names the file and the expression."""
    items = []
    smallest = max(2, params.get("tournament_size", 1))  # a tournament needs that many individuals
    for trace, record in zip(traces, records):
        trajectory = trace["trajectory"]
        population, fitnesses = np.asarray(trajectory["population"]), np.asarray(trajectory["fitnesses"])
        if population.ndim != 2 or fitnesses.shape != population.shape or population.shape[1] < smallest:
            raise DataFileError(f"{path}: expression {trace['expression_id']}: trajectory population "
                                f"{population.shape} and fitnesses {fitnesses.shape} do not make states of "
                                f"at least {smallest} individuals")
        try:
            X, y = check_data(record["X"], record["y"])
        except ValueError as error:
            raise DataFileError(f"{path}: expression {trace['expression_id']}: unusable X, y ({error})") from None
        items.append((learner_trace(trace), X, y))
    return items


def learner_metadata(metadata: dict) -> dict:
    """A traces file's metadata without what an earlier relabelling added."""
    return {key: value for key, value in metadata.items() if key not in METADATA_FIELDS}


def source_entry(path, metadata: dict) -> dict:
    """The learner's traces file; an earlier relabelling's own source when the file is relabelled already."""
    earlier = (metadata.get("dagger_relabel") or {}).get("source")
    if metadata.get("dagger") and earlier:
        return earlier
    return {"path": str(path), "sha256": file_sha256(path),
            "method": metadata.get("method", metadata.get("solver")), "checkpoint": metadata.get("checkpoint"),
            "command": metadata.get("command"), "code_version": metadata.get("code_version")}


def relabel_metadata(metadata: dict, parameters: dict, params: dict, source: dict, expressions: dict,
                     counts: Counter, n_traces: int) -> dict:
    """The output metadata: the learner's plus `dagger` and `dagger_relabel` (deterministic)."""
    provenance = file_io.make_metadata(parameters, parameters["seed"], argv=canonical_command(parameters))
    for key in VOLATILE_METADATA:
        provenance.pop(key, None)
    return plain_data({**learner_metadata(metadata), "dagger": True, "dagger_relabel": {
        **provenance, "expert": EXPERT, "expert_params": params,
        "step_seed": "derive_seed(seed, expression_id, generation)",
        "source": source, "expressions": expressions, "n_traces": n_traces,
        "n_labels": sum(counts.values()), "label_origins": dict(sorted(counts.items())),
    }})


def plain_data(value):
    """`value` rebuilt through JSON: the same data, whatever objects it shared before.

    Pickle writes an object shared by two places once; a source entry read
    back from a relabelled file shares no strings with this run's parameters,
    a fresh one does. Rebuilt, the metadata pickles to the same bytes either way.
    """
    return json.loads(json.dumps(value, default=_json_number))


def _json_number(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"metadata value of type {type(value).__name__} is not plain data")


def recorded_parameters(args) -> dict:
    """The options that decide the labels (output and execution options left out)."""
    return {"input": str(args.input), "expressions_file": args.expressions_file, "seed": args.seed}


def canonical_command(parameters: dict) -> list[str]:
    argv = [SCRIPT, "--input", parameters["input"], "--seed", str(parameters["seed"])]
    if parameters["expressions_file"] is not None:
        argv += ["--expressions_file", str(parameters["expressions_file"])]
    return argv


# --------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Add the expert's (BasicSR's) children of every learner state to a traces file (DAgger).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--input", required=True,
        help="traces file (kind 'traces') of the learner, e.g. NeuralSR traces from generate_traces.py --checkpoint")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", default=None, help="write the relabelled traces here")
    where.add_argument("--in_place", action="store_true", help="replace the input file (atomically)")
    add("--overwrite", action="store_true", help="replace an existing --output file")
    add("--expressions_file", default=None,
        help="expressions file with the X, y of the traces (default: the one the traces metadata names; "
             "its sha256 must match)")
    add("--seed", type=int, default=0,
        help="master seed; the expert's step at generation g of expression i uses derive_seed(seed, i, g)")
    add("--workers", type=int, default=1, help="worker processes (the output does not depend on it)")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def output_path(args) -> Path:
    """Where to write, checked before the work: UsageError when that would replace a file it should not,
    file_io.OutputError when it cannot be written (a folder, under a file, not writable)."""
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.in_place:
        return file_io.check_writable(args.input)
    output = Path(args.output)
    if output.exists() and file_io.same_file(output, args.input):
        raise UsageError(f"{output}: is the input file; use --in_place to relabel it in place")
    if output.exists() and not args.overwrite:
        raise UsageError(f"{output}: already exists (use --overwrite to replace it)")
    return file_io.check_writable(output)


RELABEL_LOG = ".relabel.log.json"  # beside the output: when and where it was relabelled, how long it took


def relabel_file(args, argv=None) -> dict:
    """The CLI body: load, relabel, write (and the `.log.json` beside it), print the summary.

    Returns what the summary says. `argv` (script first) is the command recorded in the log.
    """
    started = time.perf_counter()
    output = output_path(args)
    traces, metadata = cc.load_traces(args.input)
    if metadata.get("complete") is False:
        raise DataFileError(f"{args.input}: is a partial traces file (complete: False); finish or merge it first")
    params = expert_parameters(metadata.get("basic_sr_params"), args.input)
    expressions_path = cc.traces_expressions_file(args.input, metadata, args.expressions_file)
    by_id, _ = cc.load_expressions(expressions_path)
    items = learner_items(traces, cc.records_for_traces(traces, by_id, expressions_path), params, args.input)
    source = source_entry(args.input, metadata)
    relabelled, counts = [], Counter()
    for trace, trace_counts in relabel_traces(items, params, args.seed, args.workers, not args.quiet):
        relabelled.append(trace)
        counts.update(trace_counts)
    expressions = {"path": str(expressions_path), "sha256": file_sha256(expressions_path)}
    parameters = recorded_parameters(args)
    file_io.save(output, "traces", relabelled,
                 relabel_metadata(metadata, parameters, params, source, expressions, counts, len(relabelled)))
    seconds = time.perf_counter() - started
    # Its own name: relabelling in place must not replace the log of the run that made the traces.
    write_run_log(output, argv or ["dagger_relabel.py"], {"wall_seconds": seconds, "label_origins": dict(counts)},
                  suffix=RELABEL_LOG)
    print(summary_line(relabelled, counts, seconds, output))
    return {"output": output, "n_traces": len(relabelled), "label_origins": dict(counts), "seconds": seconds}


def summary_line(traces: list[dict], counts: Counter, seconds: float, output) -> str:
    """'relabelled 50 traces: 19000 expert children of 1000 learner states (crossover 70.1%, ...); 2.0 s ...'"""
    states = sum(len(trace["dagger_expressions"]) - 1 for trace in traces)
    total = sum(counts.values())
    shares = ", ".join(f"{origin} {count / total:.1%}" for origin, count in counts.most_common()) if total else ""
    rate = len(traces) / seconds if seconds > 0 else float("nan")
    return (f"relabelled {len(traces)} traces: {total} expert children of {states} learner states"
            f"{f' ({shares})' if shares else ''}; {seconds:.1f} s, {rate:.1f} traces/s -> {output}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        relabel_file(args, ["dagger_relabel.py", *argv])
    except (UsageError, DataFileError, FileExistsError, FileNotFoundError, file_io.OutputError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
