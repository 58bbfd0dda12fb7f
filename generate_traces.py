"""Run BasicSR (or NeuralSR, --checkpoint) on every expression of an expressions file and save the traces.

    python generate_traces.py --expressions_file datasets/expressions/arith_1k_c05_X.pkl.gz \\
        --num_generations 1000 --workers 2

writes ``datasets/traces/gen1k_arith_1k_c05_X.pkl.gz`` (file kind 'traces').
One record per expression, ordered by expression id:

    expression_id      int   the `id` of the expression record
    target_expression  str   the expression that generated y
    n_vars             int
    final_expression   str   BasicSR's best expression at the end of the run
    final_mse          float its MSE on the expression's own points
    solved             bool  NMSE < problems.NMSE_THRESHOLD on those points
    n_generations      int   generations run (fewer than asked after an early stop)
    n_evaluations      int
    trajectory         dict  BasicSR.trajectory_ as is (see trajectory.py)
    seed               int   derive_seed(seed, expression_id), the run's own seed

X and y are not copied: the metadata names the expressions file, its sha256
and its provenance, and a consumer finds X, y by expression id.

Determinism: the file is a function of its inputs
-------------------------------------------------
Each expression runs with its own seed derived from (--seed, expression id),
so a trace does not depend on which worker or shard computed it, and records
are written ordered by id. The metadata is deterministic too: it holds the
parameters that change the result (`recorded_parameters`), a command rebuilt
from them, the code version and the expressions file's identity, but no
timestamp, hostname, wall time or output path, and it leaves out the options
that only change how the work is executed (--workers, --shard, --resume,
--output, --output_dir, --overwrite, checkpoint intervals). So the same
parameters, inputs and code give the same bytes: with 1 or N workers, from
N shards merged with --merge_shards, or after a kill and --resume. (Each
trace is pickled and compressed on its own, by the worker that made it:
`StoredTrace`, `file_io.encode_record`.) What varies
between runs (the exact command line, timestamp, hostname, wall time,
traces/s, fit-time statistics) goes to the summary line and to a sidecar
``<name>.log.json`` next to the output.

Reliability
-----------
Every file is written atomically (file_io.save), so a killed run never
leaves a file under the final name. While running, the finished traces are
checkpointed to ``<name>.partial.pkl.gz`` (complete: False) every
--checkpoint_seconds (stretched so checkpoint writes cost at most ~10% of the
run) or every --checkpoint_every traces. --resume continues from that file,
refusing one made with other parameters, and gives the same bytes as an
uninterrupted run; the partial file is deleted after the final write. Without
--resume an existing partial file is ignored (a note is printed) and
replaced by this run's checkpoints. An existing output is never replaced
without --overwrite. Ctrl-C saves the finished traces to the partial file
and exits 130; pool workers ignore Ctrl-C (the parent handles it) and exit
by themselves when their parent dies.

Sharding: --shard i/N runs the expressions at positions p (in the selected,
id-sorted list) with p % N == i into ``<name>.shard{i}of{N}.pkl.gz``;
--merge_shards N with the same other arguments checks and joins them into
``<name>.pkl.gz``.

NeuralSR traces
---------------
--checkpoint PATH runs NeuralSR (neural_sr.py) instead of BasicSR, through
BatchedNeuralSR: --batch_size problems advance in lockstep, one model call per
generation for all of them (batched_neural_sr.py). Sampling: --mode,
--temperature, --top_k, --top_p. The records have the BasicSR layout (the
trajectory gains the per-generation counts n_neural, n_fallback,
n_well_formed); the metadata says method "neural", the checkpoint, its sha256
and the sampling settings, and the default name is
``gen{N}_neural_{expressions file name}``. A problem's samples come from its
own seeded draws, but floating-point results may depend on which problems
share a batch, so the batches are fixed: chunks of --batch_size consecutive
selected expressions. --batch_size is therefore a recorded parameter, the
partial file is written only between chunks, and --shard i/N takes whole
chunks (chunk k goes to shard k % N), which keeps the same-bytes guarantees
for resume and merged shards. --workers does not apply (one model, one
device) and is refused.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import math
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

import expressions as ex
import file_io
import parallel
from basic_sr import BasicSR
from batched_neural_sr import DEFAULT_BATCH_SIZE
from file_io import DataFileError
from neural_sr import CheckpointError
from operators import OPERATOR_SETS
from problems import NMSE_THRESHOLD
from progress import Progress
from random_stream import derive_seed

SCRIPT = "generate_traces.py"
DEFAULT_OUTPUT_DIR = "datasets/traces"
DEFAULT_CONSTANTS = (1.0,)
CHECKPOINT_SECONDS = 30.0
CHECKPOINT_MAX_SHARE = 0.1  # checkpoint writes may take at most this share of the run
NEURAL_FLAGS = ("batch_size", "mode", "temperature", "top_k", "top_p", "device", "context_type", "constrained")
# make_metadata keys that change from run to run: they go to the sidecar log instead.
VOLATILE_METADATA = ("timestamp", "hostname")
# Expressions-file metadata copied into the traces file to identify its source.
SOURCE_METADATA = ("command", "seed", "code_version", "timestamp")
PKL_GZ = ".pkl.gz"
PICKLE_PROTOCOL = 5


class UsageError(Exception):
    """A bad combination of arguments or files; main prints it as one line, exit 2."""


# --------------------------------------------------------------------------
# Core: one expression, many expressions


class StoredTrace(NamedTuple):
    """A finished trace as it is saved (`file_io.encode_record` bytes), and what the summaries read.

    Workers pickle and compress their own traces, so the parent process only
    collects bytes and joins them into the file (`file_io.save_encoded`): no
    serial compression, no unpickling of whole trajectories in the parent.
    """

    expression_id: int
    solved: bool
    n_generations: int
    n_evaluations: int
    n_neural: int  # NeuralSR children kept from the model (0 for BasicSR)
    n_fallback: int  # NeuralSR children made by evolution instead
    data: bytes

    @classmethod
    def of(cls, trace: dict) -> "StoredTrace":
        trajectory = trace["trajectory"]
        counts = [int(trajectory[key].sum()) if key in trajectory else 0 for key in ("n_neural", "n_fallback")]
        return cls(int(trace["expression_id"]), bool(trace["solved"]), int(trace["n_generations"]),
                   int(trace["n_evaluations"]), *counts, file_io.encode_record(trace))

    def trace(self) -> dict:
        return file_io.decode_record(self.data, f"trace {self.expression_id}")


def trace_one(record: dict, params: dict, seed: int) -> dict:
    """The trace of one BasicSR run on an expression record.

    `params` are BasicSR constructor arguments; `seed` is the master seed: the
    run uses derive_seed(seed, record id), as in `generate_traces`.
    """
    return _stored_trace(record, params, seed)[0].trace()


def _stored_trace(record: dict, params: dict, seed: int) -> tuple[StoredTrace, float]:
    """(the stored trace, seconds of the fit); the time is kept out of the trace itself."""
    expression_id = int(record["id"])
    run_seed = derive_seed(seed, expression_id)
    X = np.asarray(record["X"])
    y = np.asarray(record["y"])
    model = BasicSR(**{**params, "early_stop_threshold": solved_threshold(params, y)},
                    seed=run_seed, collect_trajectory=True)
    started = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - started
    return StoredTrace.of(trace_record(record, model, run_seed)), seconds


def trace_record(record: dict, model, run_seed: int) -> dict:
    """The trace of a fitted BasicSR or NeuralSR (collect_trajectory=True) on an expression record."""
    X, y = np.asarray(record["X"]), np.asarray(record["y"])
    target = record["expression"]
    return {
        "expression_id": int(record["id"]),
        "target_expression": target if isinstance(target, str) else ex.to_string(tuple(target)),
        "n_vars": int(record.get("n_vars", X.shape[1] if X.ndim == 2 else 1)),
        "final_expression": model.best_expression_,
        "final_mse": float(model.best_mse_),
        "solved": solved_on_points(model.best_mse_, y),
        "n_generations": int(model.n_generations_),
        "n_evaluations": int(model.n_evaluations_),
        "trajectory": model.trajectory_,
        "seed": run_seed,
    }


def solved_threshold(params: dict, y) -> float | None:
    """The MSE at which a run stops: the configured threshold, raised to "solved".

    y is stored as float32, so even the exact formula scores an MSE around
    1e-15 and would never reach an absolute 3e-16: runs went on for hundreds
    of generations of elite copies after solving. Stopping once NMSE < 1e-10
    (the `solved` flag's own definition) ends them where they are solved.
    """
    threshold = params.get("early_stop_threshold", 3e-16)
    if threshold is None:
        return None
    variance = float(np.var(np.asarray(y, dtype=np.float64)))
    return max(threshold, NMSE_THRESHOLD * variance if variance > 0 else NMSE_THRESHOLD)


def solved_on_points(mse: float, y) -> bool:
    """NMSE below problems.NMSE_THRESHOLD on the expression's own points (MSE for a constant y)."""
    variance = float(np.var(np.asarray(y, dtype=np.float64)))
    nmse = mse / variance if variance > 0 else mse
    return bool(nmse < NMSE_THRESHOLD)


def iter_traces(records, params: dict, seed: int, workers: int = 1, progress: bool = True):
    """Yield (StoredTrace, fit seconds) for each record, in completion order."""
    records = list(records)
    BasicSR(**params)  # invalid parameters fail here, before any worker starts
    run = functools.partial(_stored_trace, params=params, seed=seed)
    workers = max(1, min(workers, len(records)))
    with Progress(len(records), "traces", disable=not progress) as bar:
        if workers == 1:
            for item in map(run, records):
                bar.update(1)
                yield item
            return
        # One expression per task: a fit takes 10-1000 ms against ~0.1 ms of pool
        # overhead, and bigger chunks left one worker idle at the end of a run.
        with parallel.pool(workers, initializer=_init_worker) as pool:
            for item in pool.imap_unordered(run, records, chunksize=1):
                bar.update(1)
                yield item


def _init_worker() -> None:
    """Pool initializer: leave Ctrl-C to the parent, and exit once the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parallel.exit_with_parent()


def generate_traces(expression_records, params: dict, seed: int, workers: int = 1,
                    progress: bool = True) -> list[dict]:
    """Traces of BasicSR runs on each expression record, ordered by expression id.

    The result is the same for any number of workers.
    """
    stored = {trace.expression_id: trace
              for trace, _ in iter_traces(expression_records, params, seed, workers, progress)}
    return [stored[expression_id].trace() for expression_id in sorted(stored)]


def neural_chunks(records: list, batch_size: int) -> list[list]:
    """The fixed batches of a NeuralSR run: consecutive records, batch_size at a time."""
    return [records[start:start + batch_size] for start in range(0, len(records), batch_size)]


def iter_neural_traces(chunks, params: dict, seed: int, batched, progress: bool = True):
    """Yield, per chunk of records, [(StoredTrace, fit seconds)] of NeuralSR runs batched in lockstep.

    `batched` is a BatchedNeuralSR; each run has its own seed
    derive_seed(seed, record id) and stopping threshold, as in `trace_one`.
    """
    total = sum(len(chunk) for chunk in chunks) * int(params["num_generations"])
    with Progress(total, "generations", disable=not progress) as bar:
        for chunk in chunks:
            estimators = [batched.make_estimator(derive_seed(seed, int(record["id"])), collect_trajectory=True,
                                                 early_stop_threshold=solved_threshold(params, record["y"]))
                          for record in chunk]
            datasets = [(np.asarray(record["X"]), np.asarray(record["y"])) for record in chunk]
            fitted = batched.fit_estimators(estimators, datasets, progress=bar)
            yield [(StoredTrace.of(trace_record(record, model, model.seed)), model.fit_time_)
                   for record, model in zip(chunk, fitted)]


# --------------------------------------------------------------------------
# Inputs, parameters, names


def load_expression_records(path) -> tuple[list[dict], dict]:
    """Records (sorted by id) and metadata of an expressions file; DataFileError if unusable."""
    loaded = file_io.load(path, kind="expressions")
    records = loaded.records
    if not isinstance(records, list):
        raise DataFileError(f"{path}: records are a {type(records).__name__}, expected a list")
    for index, record in enumerate(records):
        missing = [k for k in ("id", "expression", "X", "y") if not isinstance(record, dict) or k not in record]
        if missing:
            raise DataFileError(f"{path}: record {index} lacks {missing}")
    ids = [int(record["id"]) for record in records]
    if len(set(ids)) != len(ids):
        raise DataFileError(f"{path}: duplicate expression ids")
    return sorted(records, key=lambda record: int(record["id"])), dict(loaded.metadata)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_expressions(records: list[dict], max_expressions: int | None, seed: int) -> list[dict]:
    """A seeded subset of at most `max_expressions` records (all when None), sorted by id."""
    if max_expressions is None or max_expressions >= len(records):
        return list(records)
    chosen = np.random.default_rng(seed).choice(len(records), size=max_expressions, replace=False)
    return sorted((records[i] for i in chosen.tolist()), key=lambda record: int(record["id"]))


def shard_of(records: list, index: int, count: int, chunk: int = 1) -> list:
    """The records at positions p with (p // chunk) % count == index: whole chunks of `chunk` records."""
    if chunk == 1:
        return records[index::count]
    return [record for position, record in enumerate(records) if (position // chunk) % count == index]


def parse_constants(text: str | None, expressions_metadata: dict) -> list[float]:
    """--constants as a list; None takes the expressions file's constants, else 1.0."""
    if text is None:
        found = expressions_metadata.get("constants")
        return [float(c) for c in (DEFAULT_CONSTANTS if found is None else found)]
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--constants must be comma-separated numbers, got {text!r}") from None


def resolve_basic_sr_params(args, expressions_metadata: dict) -> dict:
    """BasicSR constructor arguments (plain lists, ready for metadata) from the CLI."""
    binary, unary = OPERATOR_SETS[args.operator_set]
    params = {
        "population_size": args.population_size,
        "num_generations": args.num_generations,
        "max_depth": args.max_depth,
        "max_size": args.max_size,
        "tournament_size": args.tournament_size,
        "constants": parse_constants(args.constants, expressions_metadata),
        "binary_operators": list(binary),
        "unary_operators": list(unary),
    }
    try:
        BasicSR(**params)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return params


def recorded_parameters(args, params: dict) -> dict:
    """The options that determine the traces (execution-only options left out)."""
    return {
        "expressions_file": str(args.expressions_file),
        "max_expressions": args.max_expressions,
        "population_size": params["population_size"],
        "num_generations": params["num_generations"],
        "operator_set": args.operator_set,
        "constants": params["constants"],
        "seed": args.seed,
        "max_size": params["max_size"],
        "max_depth": params["max_depth"],
        "tournament_size": params["tournament_size"],
        **(neural_parameters(args) if args.checkpoint else {}),
    }


def neural_parameters(args) -> dict:
    """The NeuralSR options that determine the traces (None: the default, left out of the command)."""
    return {"checkpoint": str(args.checkpoint), "batch_size": args.batch_size or DEFAULT_BATCH_SIZE,
            "mode": args.mode or "one_step", "temperature": 1.0 if args.temperature is None else args.temperature,
            "top_k": args.top_k or 0, "top_p": 1.0 if args.top_p is None else args.top_p,
            "context_type": args.context_type, **({"constrained": True} if args.constrained else {})}


def neural_settings(parameters: dict) -> dict:
    """Metadata of a NeuralSR run: checkpoint, its sha256 and the sampling settings."""
    from neural_sr import TRAINING_MODES, checkpoint_fingerprint, checkpoint_settings

    folder = Path(parameters["checkpoint"])
    if not (folder / "config.json").is_file():
        raise UsageError(f"checkpoint {folder}: not found (expected a folder written by train.py)")
    try:
        saved = checkpoint_settings(folder)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    trained_for = TRAINING_MODES.get(saved["mode"], saved["mode"])
    if trained_for is not None and trained_for != parameters["mode"]:
        raise UsageError(f"--mode is {parameters['mode']!r} but checkpoint {folder} was trained for {trained_for!r}")
    sampling = {key: parameters[key] for key in ("mode", "temperature", "top_k", "top_p", "batch_size")}
    sampling["context_type"] = parameters["context_type"] or saved["context_type"]
    sampling["parentheses"] = saved["parentheses"]
    sampling["constrained"] = bool(parameters.get("constrained", False))
    return {"checkpoint": str(folder), "checkpoint_sha256": checkpoint_fingerprint(folder), "sampling": sampling}


def make_batched(parameters: dict, params: dict, device=None):
    """The BatchedNeuralSR of a run, its Proposer loaded (UsageError on a bad checkpoint)."""
    from batched_neural_sr import BatchedNeuralSR
    from neural_sr import Proposer

    try:
        proposer = Proposer.load(parameters["checkpoint"], device=device, context_type=parameters["context_type"])
        return BatchedNeuralSR(checkpoint=proposer, batch_size=parameters["batch_size"], **params,
                               **{key: parameters[key] for key in ("mode", "temperature", "top_k", "top_p")},
                               constrained=bool(parameters.get("constrained", False)))
    except (CheckpointError, ValueError) as error:
        raise UsageError(str(error)) from None


def canonical_command(parameters: dict) -> list[str]:
    """A command line reproducing `parameters` (script first)."""
    argv = [SCRIPT]
    for name, value in parameters.items():
        if value is None:  # an option left at its default
            continue
        if value is True:  # a flag
            argv.append(f"--{name}")
            continue
        if name == "constants":
            value = ",".join(repr(float(c)) for c in value)
        argv += [f"--{name}", str(value)]
    return argv


def _strip_pkl_gz(name: str) -> str:
    return name[: -len(PKL_GZ)] if name.endswith(PKL_GZ) else name


def default_output_name(num_generations: int, expressions_file, neural: bool = False) -> str:
    """gen{N}_{expressions file name without .pkl.gz}.pkl.gz (gen{N}_neural_... for NeuralSR traces)"""
    stem = Path(expressions_file).name
    stem = _strip_pkl_gz(stem) if stem.endswith(PKL_GZ) else Path(stem).stem
    return f"gen{file_io.format_count(num_generations)}_{'neural_' if neural else ''}{stem}{PKL_GZ}"


def output_path(args) -> Path:
    """The final (unsharded) output path."""
    if args.output:
        return Path(args.output)
    return Path(args.output_dir) / default_output_name(args.num_generations, args.expressions_file,
                                                       neural=args.checkpoint is not None)


def sibling_path(path: Path, suffix: str) -> Path:
    """`path` with '.pkl.gz' replaced by `suffix` (appended when absent)."""
    return path.with_name(_strip_pkl_gz(path.name) + suffix)


def shard_path(path: Path, index: int, count: int) -> Path:
    return sibling_path(path, f".shard{index}of{count}{PKL_GZ}")


def partial_path(path: Path) -> Path:
    return sibling_path(path, f".partial{PKL_GZ}")


def log_path(path: Path) -> Path:
    return sibling_path(path, ".log.json")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/N' -> (i, N) with 0 <= i < N."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise UsageError(f"--shard i/N needs 0 <= i < N, got {text!r}")
    return index, count


# --------------------------------------------------------------------------
# Metadata


def source_info(path, expressions_metadata: dict, n_records: int) -> dict:
    """Identity of the expressions file: its path, hash and provenance."""
    return {
        "expressions_file": str(path),
        "expressions_sha256": file_sha256(path),
        "expressions_metadata": {key: expressions_metadata.get(key) for key in SOURCE_METADATA},
        "n_expressions_in_file": n_records,
    }


def build_metadata(parameters: dict, params: dict, source: dict, traces: list[StoredTrace],
                   shard: tuple[int, int] | None, complete: bool = True, neural: dict | None = None) -> dict:
    """Deterministic metadata for a traces file (see the module docstring); `neural`: neural_settings."""
    metadata = file_io.make_metadata(parameters, parameters["seed"], argv=canonical_command(parameters))
    for key in VOLATILE_METADATA:
        metadata.pop(key, None)
    n_traces = len(traces)
    n_solved = sum(trace.solved for trace in traces)
    metadata.update(source)
    metadata.update({
        "solver": "NeuralSR" if neural else "BasicSR",
        "method": "neural" if neural else "basic",
        **(neural or {}),
        "basic_sr_params": params,
        "n_traces": n_traces,
        "n_solved": n_solved,
        "solved_fraction": n_solved / n_traces if n_traces else 0.0,
        "mean_generations": float(np.mean([t.n_generations for t in traces])) if traces else 0.0,
        "mean_evaluations": float(np.mean([t.n_evaluations for t in traces])) if traces else 0.0,
        "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        "complete": complete,
    })
    if neural:
        metadata["well_formed_rate"] = well_formed_rate(traces)
    return metadata


def well_formed_rate(traces: list[StoredTrace]) -> float:
    """Share of NeuralSR's proposals kept (not replaced by fallback children), over all traces."""
    neural = sum(t.n_neural for t in traces)
    fallback = sum(t.n_fallback for t in traces)
    return neural / (neural + fallback) if neural + fallback else 0.0


def _comparable(metadata: dict) -> dict:
    """What two runs must share for their traces to belong together."""
    parameters = dict(metadata.get("parameters") or {})
    parameters.pop("expressions_file", None)  # the same file may be named differently
    parameters.pop("checkpoint", None)  # so may a checkpoint folder: its sha256 is compared instead
    return {**parameters, "expressions_sha256": metadata.get("expressions_sha256"),
            "basic_sr_params": metadata.get("basic_sr_params"),
            "checkpoint_sha256": metadata.get("checkpoint_sha256"), "sampling": metadata.get("sampling")}


def _check_same_run(path, found: dict, expected: dict) -> None:
    found, expected = _comparable(found), _comparable(expected)
    differing = sorted(key for key in expected.keys() | found.keys() if found.get(key) != expected.get(key))
    if differing:
        raise UsageError(f"{path}: made with different parameters ({', '.join(differing)} differ)")


# --------------------------------------------------------------------------
# Running with checkpoints


class Checkpointer:
    """Saves the finished traces to the partial file now and then (atomically)."""

    def __init__(self, path: Path, metadata_for, every: int = 0, seconds: float = CHECKPOINT_SECONDS):
        self.path = path
        self.metadata_for = metadata_for  # traces -> metadata of the partial file
        self.every = every
        self.interval = seconds
        self.min_interval = seconds
        self.pending = 0
        self.last = time.monotonic()

    def add(self, done: dict) -> None:
        """Count one more finished trace; save `done` (id -> trace) when due."""
        self.pending += 1
        if (self.every and self.pending >= self.every) or time.monotonic() - self.last >= self.interval:
            self.save(done)

    def save(self, done: dict) -> None:
        started = time.monotonic()
        traces = [done[key] for key in sorted(done)]
        file_io.save_encoded(self.path, "traces", [t.data for t in traces], self.metadata_for(traces))
        self.last = time.monotonic()
        # Large files take long to write: keep checkpointing a small share of the run.
        self.interval = max(self.min_interval, (self.last - started) / CHECKPOINT_MAX_SHARE)
        self.pending = 0


def load_partial(path: Path, expected: dict, selected_ids: set) -> dict:
    """id -> trace from a partial file of the same run ({} when there is none)."""
    if not path.exists():
        print(f"note: no partial file {path}; starting from the beginning", file=sys.stderr)
        return {}
    loaded = file_io.load(path, kind="traces")
    if loaded.metadata.get("complete") is not False:
        raise UsageError(f"{path}: not a partial traces file (complete is not False)")
    _check_same_run(path, loaded.metadata, expected)
    if loaded.metadata.get("shard") != expected["shard"]:
        raise UsageError(f"{path}: made for shard {loaded.metadata.get('shard')}, not {expected['shard']}")
    done = {int(trace["expression_id"]): StoredTrace.of(trace) for trace in loaded.records}
    if not done.keys() <= selected_ids:
        raise UsageError(f"{path}: holds traces of expressions this run does not select")
    return done


def run_with_checkpoints(batches, done: dict, checkpointer: Checkpointer) -> list[float]:
    """Put the traces of `batches` (lists of (StoredTrace, fit seconds)) into `done` (id -> trace), checkpointing.

    A whole batch enters `done` before any checkpoint, so the partial file
    never holds part of a NeuralSR batch. Returns the fit seconds.
    """
    fit_seconds = []
    try:
        for batch in batches:
            for trace, seconds in batch:
                done[trace.expression_id] = trace
                fit_seconds.append(seconds)
            for _ in batch:
                checkpointer.add(done)
    except KeyboardInterrupt:
        if not done:
            print("interrupted before any trace was finished", file=sys.stderr)
            raise SystemExit(130) from None
        if checkpointer.pending:  # keep what was finished since the last checkpoint
            checkpointer.save(done)
        print(f"interrupted: {len(done)} traces saved in {checkpointer.path} "
              f"(rerun with --resume to continue)", file=sys.stderr)
        raise SystemExit(130) from None
    return fit_seconds


# --------------------------------------------------------------------------
# CLI


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and False (their help says what happens)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run BasicSR (or NeuralSR, with --checkpoint) on each expression of an expressions file "
                    "and save the traces.",
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument
    add("--expressions_file", required=True, help="expressions file (kind 'expressions') to trace")
    add("--output_dir", default=DEFAULT_OUTPUT_DIR, help="folder for the default output name")
    add("--output", default=None, help="exact output path (overrides --output_dir and the default name)")
    add("--max_expressions", type=int, default=None,
        help="trace a seeded random subset of this many expressions (default: all)")
    add("--population_size", type=int, default=20, help="BasicSR individuals per generation")
    add("--num_generations", type=int, default=50, help="BasicSR generations per expression")
    add("--operator_set", choices=sorted(OPERATOR_SETS), default="arith",
        help="operators BasicSR may use (arith: + - * /; full: also the unary functions)")
    add("--constants", default=None,
        help="comma-separated constants for BasicSR, '' for none "
             "(default: the expressions file's constants, else 1.0)")
    add("--seed", type=int, default=42, help="master seed; expression i runs with derive_seed(seed, i)")
    add("--max_size", type=int, default=25, help="maximum expression size (nodes)")
    add("--max_depth", type=int, default=10, help="maximum expression depth")
    add("--tournament_size", type=int, default=3, help="contestants per tournament")
    add("--workers", type=int, default=1, help="worker processes (the result does not depend on it)")
    add("--shard", default=None, help="i/N: trace only the expressions at positions p with p %% N == i")
    add("--merge_shards", type=int, default=None, metavar="N",
        help="instead of running, join the N shard files made with the same other arguments")
    add("--resume", action="store_true", help="continue from the partial file of an interrupted run")
    add("--overwrite", action="store_true", help="replace an existing output file")
    add("--checkpoint_every", type=int, default=0, metavar="K",
        help="advanced: also checkpoint after every K finished traces (0: time-based only)")
    add("--checkpoint_seconds", type=float, default=CHECKPOINT_SECONDS,
        help="advanced: checkpoint the finished traces at least this often (seconds)")
    add("--quiet", action="store_true", help="no progress bar")
    neural = parser.add_argument_group("NeuralSR (instead of BasicSR)")
    add = neural.add_argument
    add("--checkpoint", default=None,
        help="run NeuralSR with this checkpoint folder (written by train.py) instead of BasicSR")
    add("--batch_size", type=int, default=None,
        help=f"NeuralSR: expressions searched in lockstep, one model call per generation for all "
             f"(default {DEFAULT_BATCH_SIZE}); part of the recorded parameters")
    add("--mode", choices=("one_step", "autoreg"), default=None,
        help="NeuralSR: one child per sample (one_step, default) or a whole population per sample (autoreg); "
             "must match the checkpoint")
    add("--temperature", type=float, default=None, help="NeuralSR: sampling temperature, 0 = greedy (default 1)")
    add("--top_k", type=int, default=None, help="NeuralSR: sample among the k most likely tokens (default 0: off)")
    add("--top_p", type=float, default=None, help="NeuralSR: nucleus sampling threshold (default 1: off)")
    add("--context_type", choices=("basic", "rich", "superrich"), default=None,
        help="NeuralSR: the prompt's context type (default: the one the checkpoint was trained with)")
    add("--device", default=None, help="NeuralSR: cuda or cpu (default: cuda when available)")
    add("--constrained", action="store_const", const=True, default=None,
        help="NeuralSR: grammar-constrained decoding (every proposal a well-formed expression of the search's "
             "symbols within max_size); default: free sampling")
    return parser


def _check_args(args) -> tuple[int, int] | None:
    """Validate option combinations; return the shard (i, N) or None."""
    if args.checkpoint is None:
        given = [f"--{name}" for name in NEURAL_FLAGS if getattr(args, name) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --checkpoint (NeuralSR)")
    else:
        if args.workers != 1:
            raise UsageError("--workers applies to BasicSR runs; NeuralSR batches expressions on one device "
                             "(use --batch_size)")
        if args.batch_size is not None and args.batch_size < 1:
            raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    shard = parse_shard(args.shard)
    if shard and args.merge_shards:
        raise UsageError("--shard and --merge_shards exclude each other")
    if args.merge_shards is not None and args.merge_shards < 1:
        raise UsageError(f"--merge_shards must be at least 1, got {args.merge_shards}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.max_expressions is not None and args.max_expressions < 1:
        raise UsageError(f"--max_expressions must be at least 1, got {args.max_expressions}")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.checkpoint_every < 0:
        raise UsageError(f"--checkpoint_every must be at least 0 (0: time-based only), got {args.checkpoint_every}")
    if not (math.isfinite(args.checkpoint_seconds) and args.checkpoint_seconds >= 0):
        raise UsageError(f"--checkpoint_seconds must be a finite number at least 0, got {args.checkpoint_seconds}")
    return shard


def check_outputs(args, shard) -> None:
    """Before any work: the output, its partial file and log are not the expressions file, and can be written.

    OutputError (one line naming the path) otherwise.
    """
    output = output_path(args)
    if shard:
        output = shard_path(output, *shard)
    for path in (output, partial_path(output), log_path(output)):
        file_io.refuse_input_as_output(path, [args.expressions_file])
        file_io.check_writable(path)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: already exists (use --overwrite to replace it)")


def write_run_log(path: Path, argv, log: dict, suffix: str = ".log.json") -> None:
    """`<output>.log.json`: the run-to-run details (time, host, wall times) kept out of the data file."""
    entry = {
        "output": str(path),
        "command": shlex.join([Path(sys.executable).name, *argv]),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "hostname": socket.gethostname(),
        **log,
    }
    with file_io.atomic_open(sibling_path(path, suffix), "w") as handle:
        json.dump(entry, handle, indent=2)
        handle.write("\n")


def _summary(traces: list[StoredTrace], computed: int, seconds: float, path: Path, prefix: str = "",
             note: str = "") -> str:
    """The final line: traces, solved fraction, mean generations, wall time, rate, output."""
    n = len(traces)
    solved = sum(t.solved for t in traces) / n if n else 0.0
    generations = float(np.mean([t.n_generations for t in traces])) if n else 0.0
    rate = computed / seconds if seconds > 0 else float("nan")
    if any(t.n_neural + t.n_fallback for t in traces):
        note += f"  well-formed {well_formed_rate(traces):.1%}"
    return (f"{prefix}traces {n}{note}  solved {solved:.1%}  mean generations {generations:.1f}  "
            f"wall {seconds:.1f} s  {rate:.2f} traces/s  -> {path}")


def run_traces(args, argv, shard, selected, params, parameters, source, neural: dict | None = None) -> None:
    """Trace the selected expressions (of this shard) with checkpoints and resume; NeuralSR when `neural`."""
    started = time.perf_counter()
    output = output_path(args)
    chunk = parameters["batch_size"] if neural else 1
    if shard:
        selected = shard_of(selected, *shard, chunk=chunk)
        output = shard_path(output, *shard)
    _refuse_existing(output, args.overwrite)
    partial = partial_path(output)
    partial_metadata = functools.partial(build_metadata, parameters, params, source, shard=shard, complete=False,
                                         neural=neural)
    expected = partial_metadata([])
    done = load_partial(partial, expected, {int(r["id"]) for r in selected}) if args.resume else {}
    if not args.resume and partial.exists():
        print(f"note: ignoring the partial file {partial} of an earlier run (--resume continues it)",
              file=sys.stderr)
    resumed = len(done)
    todo = [record for record in selected if int(record["id"]) not in done]
    log = {"workers": args.workers}
    if neural:
        batched = make_batched(parameters, params, args.device)
        chunks = [c for c in neural_chunks(selected, chunk) if any(int(r["id"]) not in done for r in c)]
        todo = [record for c in chunks for record in c]
        batches = iter_neural_traces(chunks, params, args.seed, batched, not args.quiet)
        log = {"device": str(batched.proposer.device)}
    else:
        batches = ([item] for item in iter_traces(todo, params, args.seed, args.workers, not args.quiet))
    checkpointer = Checkpointer(partial, partial_metadata, args.checkpoint_every, args.checkpoint_seconds)
    fit_seconds = run_with_checkpoints(batches, done, checkpointer)
    if neural:
        log["model_seconds"] = batched.proposer.seconds
    traces = [done[key] for key in sorted(done)]
    metadata = build_metadata(parameters, params, source, traces, shard, neural=neural)
    file_io.save_encoded(output, "traces", [t.data for t in traces], metadata, overwrite=args.overwrite)
    partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    write_run_log(output, argv, {
        "wall_seconds": seconds, "traces_per_second": len(todo) / seconds if seconds > 0 else None,
        "traces_computed": len(todo), "traces_resumed": resumed, **log,
        "shard": metadata["shard"], "fit_seconds_total": float(sum(fit_seconds)),
        "fit_seconds_max": float(max(fit_seconds, default=0.0)),
    })
    print(_summary(traces, len(todo), seconds, output, note=f" ({resumed} resumed)" if resumed else ""))


def merge_shard_files(args, argv, selected, params, parameters, source, neural: dict | None = None) -> None:
    """Check the N shard files of this run and join them into the final output."""
    started = time.perf_counter()
    count = args.merge_shards
    output = output_path(args)
    _refuse_existing(output, args.overwrite)
    traces, logs = [], []
    for index in range(count):
        path = shard_path(output, index, count)
        loaded = file_io.load(path, kind="traces")
        expected = build_metadata(parameters, params, source, [], (index, count), neural=neural)
        if loaded.metadata.get("complete") is not True:
            raise UsageError(f"{path}: shard is not complete")
        _check_same_run(path, loaded.metadata, expected)
        if loaded.metadata.get("shard") != expected["shard"]:
            raise UsageError(f"{path}: is shard {loaded.metadata.get('shard')}, expected {expected['shard']}")
        chunk = parameters["batch_size"] if neural else 1
        wanted = sorted(int(r["id"]) for r in shard_of(selected, index, count, chunk))
        if sorted(trace["expression_id"] for trace in loaded.records) != wanted:
            raise UsageError(f"{path}: holds other expressions than shard {index}/{count} selects")
        traces.extend(StoredTrace.of(trace) for trace in loaded.records)
        logs.append(_read_log(path))
    traces.sort(key=lambda trace: trace.expression_id)
    metadata = build_metadata(parameters, params, source, traces, None, neural=neural)
    file_io.save_encoded(output, "traces", [t.data for t in traces], metadata, overwrite=args.overwrite)
    seconds = time.perf_counter() - started
    write_run_log(output, argv, {"merged_shards": count, "merge_seconds": seconds, "shard_logs": logs})
    print(_summary(traces, len(traces), seconds, output, prefix=f"merged {count} shards: "))


def _read_log(path: Path):
    """A shard's sidecar log, or None when it is missing or unreadable (it is informational)."""
    try:
        return json.loads(log_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        with file_io.exit_on_data_error():
            shard = _check_args(args)
            check_outputs(args, shard)
            records, expressions_metadata = load_expression_records(args.expressions_file)
            params = resolve_basic_sr_params(args, expressions_metadata)
            parameters = recorded_parameters(args, params)
            neural = neural_settings(parameters) if args.checkpoint else None
            source = source_info(args.expressions_file, expressions_metadata, len(records))
            selected = select_expressions(records, args.max_expressions, args.seed)
            if args.merge_shards:
                merge_shard_files(args, [SCRIPT, *argv], selected, params, parameters, source, neural)
            else:
                run_traces(args, [SCRIPT, *argv], shard, selected, params, parameters, source, neural)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
