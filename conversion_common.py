"""What the three conversions share: inputs, seeded split and sampling, writing, sidecar, CLI.

`one_step_conversion.py`, `autoreg_conversion.py` and `direct_conversion.py`
each define how one trace (or expression) becomes JSONL rows; everything
around that lives here, once:

Inputs. `load_traces` reads a traces file (kind checked, records checked);
`load_expressions` an expressions file, records indexed by id. X and y are not
in traces: `traces_expressions_file` finds the expressions file the traces
metadata names (or `--expressions_file`), and refuses a file whose sha256
differs from the one recorded. `search_settings` reads the operators and
constants BasicSR searched with, which the context shows.

Randomness. Every draw comes from a Generator seeded by (--seed, stream,
expression id) (`random_stream.derive_seed`), so results do not depend on
file order, chunking or what else is converted:
    split   an expression is in the validation part when its first uniform
            of the SPLIT stream is below --val_fraction. The assignment
            depends only on (seed, expression id, val_fraction): the one-step,
            autoregressive and direct datasets made with one seed put the
            same expressions in validation, and no expression is in both parts.
    sample  `keep_mask` draws one uniform per candidate position of a trace
            (generation x slot) from the SAMPLE stream; a candidate is kept
            when its uniform is below --sample_fraction.

Outputs. `<output>.jsonl`, or with --split `<output>.train.jsonl` and
`<output>.val.jsonl`. Each JSONL file gets a sidecar `<name>.meta.json`
(written last, so its presence means the dataset is complete; it is the file
`inspect_dataset.py` shows next to the data) holding: file_io.make_metadata
(command, parameters, seed, code version), the source files with their
sha256, counts, token statistics measured with the tokenizer on a seeded
sample of up to TOKEN_SAMPLE examples (every sampled example is also checked
to round-trip through the tokenizer), and where the tokenizer is. The
tokenizer is saved to `<output folder>/tokenizer/` (or --tokenizer_dir) so
train.py reads the same one; an existing tokenizer there with another
vocabulary is an error, not silently replaced. Files are written atomically;
nothing is replaced without --overwrite.

Speed. --workers N converts the traces (expressions) in N processes; the
parent writes their lines in input order, so the output is the same bytes
for any N. The summary's examples/s covers converting and writing, not the
token statistics (the Rust tokenizer does roughly a million tokens a second).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path, PurePath
from typing import Callable, Iterable

import numpy as np

import file_io
import format_utils as fu
import tokenizer as tk
from file_io import DataFileError
from parallel import parallel_map
from generate_traces import file_sha256
from progress import Progress
from random_stream import make_generator

DEFAULT_OUTPUT_DIR = Path("datasets/training")
DEFAULT_VAL_FRACTION = 0.1
TOKEN_SAMPLE = 2000  # examples measured with the tokenizer per output file
SIDECAR_FORMAT = "ttsr-training-jsonl"
SIDECAR_VERSION = 1
PKL_GZ = ".pkl.gz"

# Random streams of one seed (the first item id after the seed), kept apart so
# that changing one option cannot change the draws of another.
SPLIT_STREAM, SAMPLE_STREAM, TOKEN_STREAM = 1, 2, 3

TRACE_FIELDS = ("expression_id", "n_vars", "trajectory")
EXPRESSION_FIELDS = ("id", "expression", "X", "y")
TRAJECTORY_FIELDS = ("expressions", "population", "fitnesses", "origins", "origin_names", "ancestors_of_best")

# Origins whose individuals are not learning targets: the elite copy is not a
# child of the state (prototype defect 5: it dominated the targets), and a
# restart re-seeds the population like generation 0 after a stagnation the
# prompt does not show.
ELITE_ORIGIN, RESTART_ORIGIN = "elite", "restart"


class UsageError(Exception):
    """A bad combination of options or files; printed as one `error:` line, exit 2."""


# --------------------------------------------------------------------------
# Inputs


def load_traces(path) -> tuple[list[dict], dict]:
    """Trace records and metadata of a traces file; DataFileError (one line naming the file) if unusable."""
    loaded = file_io.load(path, kind="traces")
    return checked_traces(loaded.records, path), dict(loaded.metadata)


def checked_traces(records, path) -> list[dict]:
    """The records of a traces file, checked to be a non-empty list of traces with trajectories."""
    if not isinstance(records, list):
        raise DataFileError(f"{path}: records are a {type(records).__name__}, expected a list")
    if not records:
        raise DataFileError(f"{path}: holds no traces")
    for index, trace in enumerate(records):
        missing = [key for key in TRACE_FIELDS if not isinstance(trace, dict) or key not in trace]
        if not missing:
            missing = [key for key in TRAJECTORY_FIELDS if key not in trace["trajectory"]]
        if missing:
            raise DataFileError(f"{path}: trace {index} lacks {missing}")
    return records


def load_expressions(path) -> tuple[dict[int, dict], dict]:
    """{id: record} (in id order) and metadata of an expressions file (DataFileError if unusable or empty)."""
    loaded = file_io.load(path, kind="expressions")
    return expressions_by_id(loaded.records, path), dict(loaded.metadata)


def expressions_by_id(records, path) -> dict[int, dict]:
    """The records of an expressions file as {id: record} in id order, checked."""
    if not isinstance(records, list):
        raise DataFileError(f"{path}: records are a {type(records).__name__}, expected a list")
    if not records:
        raise DataFileError(f"{path}: holds no expressions")
    by_id = {}
    for index, record in enumerate(records):
        missing = [k for k in EXPRESSION_FIELDS if not isinstance(record, dict) or k not in record]
        if missing:
            raise DataFileError(f"{path}: record {index} lacks {missing}")
        by_id[int(record["id"])] = record
    if len(by_id) != len(records):
        raise DataFileError(f"{path}: duplicate expression ids")
    return dict(sorted(by_id.items()))


def search_settings(metadata: dict, path) -> dict:
    """binary_operators, unary_operators, constants (tuples) from a traces file's `basic_sr_params`."""
    params = metadata.get("basic_sr_params")
    keys = ("binary_operators", "unary_operators", "constants")
    if not isinstance(params, dict) or any(key not in params for key in keys):
        raise DataFileError(f"{path}: metadata lacks basic_sr_params with {', '.join(keys)}")
    return {key: tuple(params[key]) for key in keys}


def traces_expressions_file(traces_path, metadata: dict, override=None) -> Path:
    """The expressions file the traces were made from: --expressions_file, else the one the metadata names.

    A name recorded relative to another working folder is also looked up next
    to the traces file. The file must have the sha256 the traces recorded.
    """
    recorded = metadata.get("expressions_file")
    if override is not None:
        path = Path(override)
    elif recorded is None:
        raise DataFileError(f"{traces_path}: metadata names no expressions_file; pass --expressions_file")
    else:
        path = Path(recorded)
        beside = Path(traces_path).parent / path.name
        if not path.exists() and beside.exists():
            path = beside
        if not path.exists():
            raise DataFileError(f"{traces_path}: its expressions file {recorded} (needed for X and y) "
                                f"is missing; pass --expressions_file")
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    expected = metadata.get("expressions_sha256")
    if expected is not None and file_sha256(path) != expected:
        raise DataFileError(f"{path}: sha256 differs from the one recorded in {traces_path} "
                            f"(not the expressions file these traces were made from)")
    return path


def records_for_traces(traces: list[dict], by_id: dict[int, dict], expressions_path) -> list[dict]:
    """The expression record of every trace, in trace order (DataFileError when an id is missing)."""
    missing = [int(t["expression_id"]) for t in traces if int(t["expression_id"]) not in by_id]
    if missing:
        raise DataFileError(f"{expressions_path}: lacks expression ids {missing[:5]} that the traces use")
    return [by_id[int(t["expression_id"])] for t in traces]


@dataclass
class TraceInput:
    """A traces file ready for conversion: traces, the context of each, provenance."""

    path: Path
    traces: list[dict]
    metadata: dict
    settings: dict  # search_settings
    contexts: list  # fu.ProblemContext per trace
    sources: list[dict]  # source_entry of each file read
    max_vars: int


def load_trace_input(path, context_type: str, expressions_override=None) -> TraceInput:
    """Load a traces file and build each trace's problem context (X, y from its expressions file if needed)."""
    traces, metadata = load_traces(path)
    settings = search_settings(metadata, path)
    sources = [source_entry("traces", path)]
    records = [None] * len(traces)
    if context_type != "basic":  # only rich and superrich show statistics of y
        expressions_path = traces_expressions_file(path, metadata, expressions_override)
        by_id, _ = load_expressions(expressions_path)
        records = records_for_traces(traces, by_id, expressions_path)
        sources.append(source_entry("expressions", expressions_path))
    contexts = [
        fu.problem_context(context_type, int(trace["n_vars"]), settings["binary_operators"],
                           settings["unary_operators"], settings["constants"],
                           None if record is None else record["X"], None if record is None else record["y"])
        for trace, record in zip(traces, records)
    ]
    max_vars = max(int(trace["n_vars"]) for trace in traces)
    return TraceInput(Path(path), traces, metadata, settings, contexts, sources, max_vars)


def source_entry(kind: str, path) -> dict:
    """How a sidecar names an input file."""
    return {"kind": kind, "path": str(path), "sha256": file_sha256(path)}


def file_stem(path) -> str:
    """A data file's name without `.pkl.gz` (or its last suffix)."""
    name = Path(path).name
    return name[: -len(PKL_GZ)] if name.endswith(PKL_GZ) else Path(name).stem


# --------------------------------------------------------------------------
# Seeded split and sampling


def is_validation(seed: int, expression_id: int, val_fraction: float) -> bool:
    """Whether an expression belongs to the validation part (see the module docstring)."""
    return bool(make_generator(seed, SPLIT_STREAM, expression_id).random() < val_fraction)


def keep_mask(seed: int, expression_id: int, shape, fraction: float) -> np.ndarray | None:
    """Booleans of `shape`, each True with probability `fraction`; None (keep all) when fraction is 1."""
    if fraction >= 1.0:
        return None
    return make_generator(seed, SAMPLE_STREAM, expression_id).random(shape) < fraction


class Reservoir:
    """A uniform sample of up to `size` items from a stream of unknown length (Li's algorithm L).

    After the first `size` items it draws only when it takes an item, so
    offering an item costs a comparison.
    """

    def __init__(self, size: int, generator: np.random.Generator):
        self.size = size
        self.items: list = []
        self.seen = 0
        self._generator = generator
        self._weight = 1.0
        self._next = size - 1  # index of the next item to take once full

    def add(self, item) -> None:
        index = self.seen
        self.seen += 1
        if index < self.size:
            self.items.append(item)
            if index == self.size - 1:
                self._advance()
        elif index == self._next:
            self.items[int(self._generator.integers(self.size))] = item
            self._advance()

    def _advance(self) -> None:
        uniform = self._generator.random
        self._weight *= math.exp(math.log(1.0 - uniform()) / self.size)
        if self._weight >= 1.0:  # cannot happen with a proper uniform; keep the arithmetic finite
            self._next += 1
            return
        self._next += int(math.log(1.0 - uniform()) / math.log1p(-self._weight)) + 1


# --------------------------------------------------------------------------
# Outputs


def default_output(kind: str, parts: Iterable[str], input_path, parentheses: str = "full") -> Path:
    """datasets/training/{kind}_{part_part...}[_minparen]_{input stem}.jsonl"""
    parts = [*parts, "minparen" if parentheses == "minimal" else ""]
    name = "_".join([kind, *[p for p in parts if p], file_stem(input_path)])
    return DEFAULT_OUTPUT_DIR / f"{name}.jsonl"


def jsonl_base(output) -> Path:
    """The output path without `.jsonl`."""
    output = Path(output)
    return output.with_name(output.name[: -len(".jsonl")]) if output.name.endswith(".jsonl") else output


def part_paths(output, split: bool) -> dict[str | None, Path]:
    """{part: JSONL path}: {None: output} or {'train': base.train.jsonl, 'val': base.val.jsonl}."""
    if not split:
        return {None: Path(output)}
    base = jsonl_base(output)
    return {part: base.with_name(f"{base.name}.{part}.jsonl") for part in ("train", "val")}


def sidecar_path(jsonl_path) -> Path:
    """`<name>.meta.json` beside `<name>.jsonl`."""
    base = jsonl_base(jsonl_path)
    return base.with_name(base.name + ".meta.json")


def refuse_existing(paths: dict, overwrite: bool) -> None:
    """UsageError when an output file or its sidecar exists and --overwrite is not given."""
    for path in paths.values():
        for candidate in (path, sidecar_path(path)):
            if candidate.exists() and not overwrite:
                raise UsageError(f"{candidate}: already exists (use --overwrite to replace it)")


def check_outputs(args) -> dict[str | None, Path]:
    """Before loading anything: the output files and sidecars of --output are not an input file, are new
    (or --overwrite is given) and can be written. Returns part_paths.

    UsageError for an existing file without --overwrite; file_io.OutputError (one line naming the
    path) for an input file, a folder, a file in the way or a folder that cannot be written.
    """
    paths = part_paths(args.output, args.split)
    inputs = [args.input, args.expressions_file]
    for path in paths.values():
        for candidate in (path, sidecar_path(path)):
            file_io.refuse_input_as_output(candidate, inputs)
    refuse_existing(paths, args.overwrite)
    for path in paths.values():
        for candidate in (path, sidecar_path(path)):
            file_io.check_writable(candidate)
    return paths


json_line = json.JSONEncoder(ensure_ascii=False).encode  # a row as one JSONL line (json.dumps bytes)
quote = encode_basestring  # a str as a JSON string literal, as json_line writes it


@dataclass
class Part:
    """One output file being written: its handle, counts and token sample."""

    path: Path
    handle: object
    reservoir: Reservoir
    examples: int = 0
    expression_ids: set = field(default_factory=set)


class DatasetWriter:
    """Writes lines atomically to one JSONL file, or to train/val files split by expression id."""

    def __init__(self, paths: dict, seed: int, val_fraction: float | None, overwrite: bool):
        self.paths = paths
        self.seed = seed
        self.val_fraction = val_fraction
        self.overwrite = overwrite
        self.parts: dict[str | None, Part] = {}
        self._part_of: dict[int, Part] = {}
        self._stack = ExitStack()

    def __enter__(self) -> "DatasetWriter":
        for name, path in self.paths.items():
            handle = self._stack.enter_context(file_io.atomic_open(path, "w", overwrite=self.overwrite))
            reservoir = Reservoir(TOKEN_SAMPLE, make_generator(self.seed, TOKEN_STREAM, len(self.parts)))
            self.parts[name] = Part(path, handle, reservoir)
        return self

    def __exit__(self, *exc_info):
        return self._stack.__exit__(*exc_info)

    def part_for(self, expression_id: int) -> Part:
        """The part an expression's lines go to (decided once per expression)."""
        part = self._part_of.get(expression_id)
        if part is None:
            if None in self.parts:
                part = self.parts[None]
            else:
                validation = is_validation(self.seed, expression_id, self.val_fraction)
                part = self.parts["val" if validation else "train"]
            self._part_of[expression_id] = part
        return part

    def write_lines(self, expression_id: int, lines: Iterable[str]) -> None:
        """Write the JSONL lines (no newline) of one expression to its part."""
        part = self.part_for(expression_id)
        write, offer = part.handle.write, part.reservoir.add
        count = part.examples
        for line in lines:
            write(line + "\n")
            offer(line)
            count += 1
        if count > part.examples:  # an expression counts where it has examples
            part.expression_ids.add(expression_id)
        part.examples = count


# --------------------------------------------------------------------------
# Tokenizer and statistics


def dataset_tokenizer(max_vars: int, constants):
    """The tokenizer for this data: at least tokenizer.DEFAULT_MAX_VARS variables, the search constants."""
    return tk.build_tokenizer(max(tk.DEFAULT_MAX_VARS, int(max_vars)), tuple(constants))


def tokenizer_folder(args) -> Path:
    """--tokenizer_dir, else `tokenizer/` beside the output."""
    return Path(args.tokenizer_dir) if args.tokenizer_dir else Path(args.output).parent / "tokenizer"


def check_tokenizer_folder(tokenizer, folder: Path) -> bool:
    """True when `tokenizer` must be saved to `folder`; UsageError when another tokenizer is there."""
    if not (folder / "tokenizer.json").exists():
        return True
    existing = tk.load_tokenizer(folder)
    if existing.get_vocab() != tokenizer.get_vocab():
        raise UsageError(f"{folder}: holds a tokenizer with another vocabulary ({len(existing)} tokens, "
                         f"this data needs {len(tokenizer)}); pass --tokenizer_dir")
    return False


def prompt_target(row: dict) -> tuple[str, str]:
    """(prompt, target) of a one-step or autoregressive row, as the model sees them."""
    return fu.build_prompt(row["context"], row["population"]), row["target"]


def target_only(row: dict) -> tuple[str, str]:
    """(no prompt, target) of a direct row: its input is (X, y), not text."""
    return "", row["target"]


def _spread(lengths: list[int]) -> dict:
    if not lengths:
        return {"mean": 0.0, "max": 0}
    return {"mean": round(float(np.mean(lengths)), 2), "max": int(max(lengths))}


def token_statistics(tokenizer, lines: list[str], texts: Callable[[dict], tuple[str, str]]) -> dict:
    """Tokens per prompt, target and whole example over JSONL `lines`; ValueError if one does not round-trip.

    The tokenizer never merges across a `<...>` marker, so the tokens of
    prompt + target are the prompt's followed by the target's: encoding the
    whole text and the target suffices.
    """
    backend = tokenizer.backend_tokenizer  # the Rust tokenizer: the Python wrapper costs more than the work
    pairs = [texts(json.loads(line)) for line in lines]
    full = [prompt + target for prompt, target in pairs]
    full_ids = [encoding.ids for encoding in backend.encode_batch(full, add_special_tokens=False)]
    target_ids = [encoding.ids for encoding in backend.encode_batch([t for _, t in pairs], add_special_tokens=False)]
    unknown = tokenizer.unk_token_id
    decoded = backend.decode_batch(full_ids, skip_special_tokens=False)
    for text, ids, back in zip(full, full_ids, decoded):
        if back != text or unknown in ids:
            raise ValueError(f"the tokenizer does not round-trip the example {text!r}")
    statistics = {"sampled_examples": len(pairs), "target_tokens": _spread([len(i) for i in target_ids])}
    if any(prompt for prompt, _ in pairs):
        statistics["prompt_tokens"] = _spread([len(f) - len(t) for f, t in zip(full_ids, target_ids)])
        statistics["example_tokens"] = _spread([len(i) for i in full_ids])
    return statistics


# --------------------------------------------------------------------------
# The conversion run


@dataclass
class Conversion:
    """Everything `run_conversion` needs besides the parsed arguments."""

    name: str  # 'one_step', 'autoreg', 'direct'
    items: list  # traces or expression records
    expression_id: Callable[[object], int]  # the expression an item belongs to (decides its split part)
    lines: Callable[[object, Counter], Iterable[str]]  # one item -> its JSONL lines (counting skips)
    texts: Callable[[dict], tuple[str, str]]  # row -> (prompt, target)
    sources: list[dict]  # source_entry of every input file
    max_vars: int
    constants: tuple
    parameters: dict  # resolved options, for the sidecar
    unit: str = "traces"  # progress bar label
    extra: dict = field(default_factory=dict)  # more sidecar fields (search settings, layout)


def trace_conversion(name: str, data: TraceInput, lines: Callable, args, **parameters) -> Conversion:
    """The Conversion of a traces file's (trace, problem context) items (one-step, autoregressive).

    `parameters`: the script's own options for the sidecar, after the common
    ones and the context type.
    """
    return Conversion(
        name=name, items=list(zip(data.traces, data.contexts)),
        expression_id=lambda item: int(item[0]["expression_id"]),
        lines=lines, texts=prompt_target, sources=data.sources, max_vars=data.max_vars,
        constants=data.settings["constants"],
        parameters={**common_parameters(args), "context_type": args.context_type, **parameters},
        extra={"search_settings": {k: list(v) for k, v in data.settings.items()}},
    )


def _item_lines(lines_for, item) -> tuple[list[str], Counter]:
    """The lines of one item and what it skipped (run in a worker when there are several)."""
    counts: Counter = Counter()
    return list(lines_for(item, counts)), counts


def converted_items(conversion: Conversion, workers: int = 1):
    """(item, its lines, its skip counts) in item order; the same for any number of workers.

    With workers > 1, `conversion.lines` must pickle (a module-level function,
    or a functools.partial of one).
    """
    items = conversion.items
    results = parallel_map(functools.partial(_item_lines, conversion.lines), items, workers)
    for item, (lines, counts) in zip(items, results):
        yield item, lines, counts


def write_sidecar(path: Path, content: dict) -> None:
    with file_io.atomic_open(path, "w") as handle:
        # Paths (e.g. a defaulted --output) are written as text.
        json.dump(content, handle, indent=2, default=_json_text)
        handle.write("\n")


def _json_text(value):
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def run_conversion(conversion: Conversion, args, argv: list[str], script: str) -> dict:
    """Convert every item, write the JSONL part(s), the tokenizer and the sidecars; print a summary line.

    Returns {"paths", "counts", "skipped", "token_statistics", "seconds", "cpu_seconds"}; the
    seconds (and the examples/s of the summary) cover converting and writing the rows, not the
    token statistics; cpu_seconds is this process's CPU time over the same span.
    """
    paths = part_paths(args.output, args.split)
    for path in paths.values():  # the expressions file a traces file names is known only now
        for candidate in (path, sidecar_path(path)):
            file_io.refuse_input_as_output(candidate, [source["path"] for source in conversion.sources])
    tokenizer = dataset_tokenizer(conversion.max_vars, conversion.constants)
    folder = tokenizer_folder(args)
    save_tokenizer = check_tokenizer_folder(tokenizer, folder)  # fail before the work, not after
    skipped: Counter = Counter()
    started, cpu_started = time.perf_counter(), time.process_time()
    with DatasetWriter(paths, args.seed, args.val_fraction, args.overwrite) as writer:
        with Progress(len(conversion.items), conversion.unit, disable=args.quiet) as bar:
            for item, lines, counts in converted_items(conversion, args.workers):
                writer.write_lines(conversion.expression_id(item), lines)
                skipped.update(counts)
                bar.update(1)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        # Measured before the files are renamed into place: a dataset that the
        # tokenizer cannot represent is never published.
        statistics = {name: token_statistics(tokenizer, part.reservoir.items, conversion.texts)
                      for name, part in writer.parts.items()}
        for path in paths.values():  # an earlier run's sidecar must never describe the new rows
            sidecar_path(path).unlink(missing_ok=True)
    timing = {"convert": round(seconds, 3), "convert_cpu": round(cpu_seconds, 3),  # CPU: this process only
              "token_statistics": round(time.perf_counter() - started - seconds, 3)}
    if save_tokenizer:
        tk.save_tokenizer(tokenizer, folder)
    part_counts = {name: {"examples": part.examples, "expressions": len(part.expression_ids)}
                   for name, part in writer.parts.items()}
    metadata = file_io.make_metadata(conversion.parameters, args.seed, [script, *argv])
    for name, part in writer.parts.items():  # last: a sidecar means its dataset is complete
        write_sidecar(sidecar_path(part.path), {
            "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "conversion": conversion.name,
            "part": name, "files": {str(k): str(p) for k, p in paths.items()},
            "metadata": metadata, "sources": conversion.sources,
            "counts": {**part_counts[name], "all_parts": _total(part_counts), "skipped": dict(skipped)},
            "token_statistics": statistics[name],
            "tokenizer": {"path": str(folder), "vocab_size": len(tokenizer)},
            "seconds": timing, **conversion.extra,
        })
    for name, counts in part_counts.items():
        if not counts["examples"]:
            print(f"note: {paths[name]} has no examples", file=sys.stderr)
    print(summary_line(conversion.name, part_counts, skipped, statistics, seconds, paths))
    return {"paths": paths, "counts": part_counts, "skipped": dict(skipped),
            "token_statistics": statistics, "seconds": seconds, "cpu_seconds": cpu_seconds}


def _total(part_counts: dict) -> dict:
    return {key: sum(c[key] for c in part_counts.values()) for key in ("examples", "expressions")}


def summary_line(name, part_counts, skipped, statistics, seconds, paths) -> str:
    """'one_step: 95000 examples, 50 expressions (train 85500 / val 9500); dropped ...; tokens ...; 1.2 s -> path'"""
    total = _total(part_counts)
    text = f"{name}: {total['examples']} examples from {total['expressions']} expressions"
    if len(part_counts) > 1:
        text += " (" + " / ".join(f"{n} {c['examples']} ex, {c['expressions']} expr"
                                  for n, c in part_counts.items()) + ")"
    if skipped:
        text += "; " + ", ".join(f"{key} {value}" for key, value in sorted(skipped.items()))
    first = next(iter(statistics.values()))
    if "prompt_tokens" in first:
        text += f"; prompt tokens mean {first['prompt_tokens']['mean']:.0f} max {first['prompt_tokens']['max']}"
    text += f"; target tokens mean {first['target_tokens']['mean']:.1f} max {first['target_tokens']['max']}"
    rate = total["examples"] / seconds if seconds > 0 else float("nan")
    return f"{text}; {seconds:.1f} s ({rate:,.0f} examples/s) -> {', '.join(map(str, paths.values()))}"


# --------------------------------------------------------------------------
# CLI plumbing


def add_common_arguments(parser: argparse.ArgumentParser, input_help: str, expressions_help: str) -> None:
    """--input, --output, split, sampling, seed and file options shared by the three conversions."""
    add = parser.add_argument
    add("--input", required=True, help=input_help)
    add("--output", default=None,
        help=f"output JSONL path (default: a name under {DEFAULT_OUTPUT_DIR}/ built from the options and "
             "the input name); with --split, <output>.train.jsonl and <output>.val.jsonl")
    add("--expressions_file", default=None, help=expressions_help)
    add("--sample_fraction", type=float, default=1.0,
        help="keep each example with this probability, seeded per (seed, expression id)")
    add("--split", action="store_true", help="write train and val files, split by expression id")
    add("--val_fraction", type=float, default=None,
        help=f"share of expressions in the val file with --split (default {DEFAULT_VAL_FRACTION})")
    add("--seed", type=int, default=0, help="seed of the split, the sampling and the token-statistics sample")
    add("--parentheses", choices=fu.PARENTHESES, default="full",
        help="how expressions are written: 'full' brackets every binary operation, '((x0*x0)+1.0)' (the shipped "
             "model's); 'minimal' only where precedence needs it, 'x0*x0+1.0' (about 30%% fewer tokens per "
             "expression); recorded in the sidecar, and from there in every checkpoint trained on the data")
    add("--tokenizer_dir", default=None, help="where to save the tokenizer (default: <output folder>/tokenizer)")
    add("--overwrite", action="store_true", help="replace existing output files")
    add("--workers", type=int, default=1, help="worker processes (the output does not depend on it)")
    add("--quiet", action="store_true", help="no progress bar")


def check_common_arguments(args) -> None:
    """Validate the shared options and fill in --val_fraction (UsageError on bad values)."""
    if not 0.0 < args.sample_fraction <= 1.0:
        raise UsageError(f"--sample_fraction must be in (0, 1], got {args.sample_fraction}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.val_fraction is not None and not args.split:
        raise UsageError("--val_fraction needs --split")
    if args.split:
        args.val_fraction = DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
        if not 0.0 < args.val_fraction < 1.0:
            raise UsageError(f"--val_fraction must be in (0, 1), got {args.val_fraction}")


def common_parameters(args) -> dict:
    """The shared options as recorded in the sidecar."""
    return {key: getattr(args, key) for key in
            ("input", "output", "expressions_file", "sample_fraction", "split", "val_fraction", "seed",
             "parentheses")}


def run_cli(build_parser: Callable[[], argparse.ArgumentParser], convert: Callable[[object, list], object],
            argv=None) -> int:
    """A conversion script's main: parse, `convert(args, argv)`; bad data files and options print one
    `error:` line and exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        with file_io.exit_on_data_error():
            convert(args, argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


