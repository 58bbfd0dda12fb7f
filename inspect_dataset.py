"""Describe a ttsr data file: expressions, traces, or training JSONL.

    python inspect_dataset.py datasets/expressions/arith_1k_c05_X.pkl.gz
    python inspect_dataset.py datasets/traces/gen1k_arith_1k_c05_X.pkl.gz --show 3
    python inspect_dataset.py datasets/training/train.jsonl

The kind is detected from the file: ttsr data files (gzip) are read with
file_io.load and described by their kind; anything else that is JSON Lines
(a `.jsonl` name, or text starting with '{') is read as training data, with
the metadata of a sidecar JSON file beside it when one is found. Prints the
provenance (command, seed, code version) and statistics per kind; `--show N`
adds N example records. A missing, corrupt or unreadable file prints one
``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

import file_io
import trajectory as tj
from expression_parser import ParseError, parse
from file_io import DataFileError
from operators import OPERATORS

JSONL_TEXT_FIELDS = ("context", "population", "target")
SIDECAR_SUFFIXES = (".meta.json", ".metadata.json", ".json")
HISTOGRAM_BINS = 10
HISTOGRAM_WIDTH = 40
SHOW_CHARS = 300  # long strings in --show are cut to this length


# --------------------------------------------------------------------------
# Small formatting helpers


def spread(values) -> str:
    """'min 1  median 2  mean 2.5  max 4' (or 'none')."""
    values = list(values)
    if not values:
        return "none"
    return (f"min {_number(min(values))}  median {_number(statistics.median(values))}  "
            f"mean {_number(statistics.fmean(values))}  max {_number(max(values))}")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def counts(counter: Counter, sort_keys: bool = False) -> str:
    """'a: 3, b: 1' in descending count (or key) order."""
    items = sorted(counter.items()) if sort_keys else counter.most_common()
    return ", ".join(f"{key}: {count}" for key, count in items) or "none"


def text_histogram(values, bins: int = HISTOGRAM_BINS, width: int = HISTOGRAM_WIDTH) -> list[str]:
    """Rows of '  label | ####  count': one per value when there are few, else `bins` ranges."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return ["  (no values)"]
    distinct = np.unique(values)
    if distinct.size <= bins:
        labels = [_number(int(v) if float(v).is_integer() else float(v)) for v in distinct]
        heights = [int(np.sum(values == v)) for v in distinct]
    elif np.all(values == np.round(values)):  # integers: ranges 'a-b' of whole numbers
        edges = np.unique(np.round(np.linspace(distinct[0], distinct[-1] + 1, bins + 1)))
        heights = np.histogram(values, bins=edges)[0].tolist()
        labels = [f"{int(low)}-{int(high) - 1}" for low, high in zip(edges[:-1], edges[1:])]
    else:
        heights, edges = np.histogram(values, bins=bins)
        labels = [f"[{edges[i]:.4g}, {edges[i + 1]:.4g}{']' if i == bins - 1 else ')'}" for i in range(bins)]
        heights = heights.tolist()
    label_width = max(len(label) for label in labels)
    tallest = max(heights) or 1
    return [f"  {label:>{label_width}} | {'#' * round(width * h / tallest):<{width}} {h}"
            for label, h in zip(labels, heights)]


def _short(value, limit: int = SHOW_CHARS) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def provenance(metadata: dict) -> list[str]:
    """Command, seed, code version (and timestamp) lines of a metadata dict."""
    lines = []
    for key in ("command", "seed", "code_version", "timestamp"):
        if metadata.get(key) is not None:
            lines.append(f"{key}: {metadata[key]}")
    return lines


# --------------------------------------------------------------------------
# Expressions


def expression_tokens(expression) -> tuple | None:
    """Prefix tokens of a stored expression (text or tuple); None if unparseable."""
    if isinstance(expression, (tuple, list)):
        return tuple(expression)
    try:
        return parse(expression)
    except (ParseError, TypeError):
        return None


def describe_expressions(records: list, metadata: dict, show: int) -> list[str]:
    trees = [expression_tokens(record.get("expression")) for record in records]
    parsed = [tree for tree in trees if tree is not None]
    operators = Counter(token for tree in parsed for token in tree if token.__class__ is str and token in OPERATORS)
    lines = [
        f"expressions: {len(records)}",
        f"n_vars: {counts(Counter(record.get('n_vars') for record in records), sort_keys=True)}",
        f"size (nodes): {spread(len(tree) for tree in parsed)}",
        *text_histogram([len(tree) for tree in parsed]),
        f"operators: {counts(operators)}",
        f"points per expression: {spread(len(record['y']) for record in records if 'y' in record)}",
    ]
    if len(parsed) < len(records):
        lines.append(f"unparseable expressions: {len(records) - len(parsed)}")
    for key in ("binary_operators", "unary_operators", "constants"):
        if key in metadata:
            lines.append(f"{key} (metadata): {metadata[key]}")
    for record in records[:show]:
        points = len(record["y"]) if "y" in record else "?"
        lines.append(f"  id {record.get('id')}  n_vars {record.get('n_vars')}  points {points}  "
                     f"{_short(record.get('expression'))}")
    return lines


# --------------------------------------------------------------------------
# Traces


def origin_counts(traces: list) -> Counter:
    """How every individual of every generation was made, over all traces."""
    total = Counter()
    for trace in traces:
        trajectory = trace["trajectory"]
        codes = np.bincount(np.asarray(trajectory["origins"]).ravel(), minlength=len(trajectory["origin_names"]))
        for name, count in zip(trajectory["origin_names"], codes.tolist()):
            total[name] += count
    return total


def describe_traces(traces: list, metadata: dict, show: int) -> list[str]:
    n = len(traces)
    solved = sum(bool(trace.get("solved")) for trace in traces)
    mse = [float(trace["final_mse"]) for trace in traces]
    finite = [value for value in mse if np.isfinite(value)]
    populations = Counter(int(trace["trajectory"]["population"].shape[1]) for trace in traces)
    lines = [
        f"traces: {n}" + ("" if metadata.get("complete", True) else "  (partial file: run incomplete)"),
        f"solved: {solved}/{n} ({solved / n:.1%})" if n else "solved: 0/0",
        "generations run:",
        *text_histogram([trace["n_generations"] for trace in traces]),
        (f"final MSE: mean {statistics.fmean(finite):.4g}  median {statistics.median(finite):.4g}"
         f"  (non-finite: {len(mse) - len(finite)})") if finite else "final MSE: none finite",
        f"origins (all individuals): {counts(origin_counts(traces))}",
        f"population size: {counts(populations, sort_keys=True)}",
    ]
    for key in ("expressions_file", "basic_sr_params", "shard"):
        if key in metadata:
            lines.append(f"{key}: {metadata[key]}")
    for trace in traces[:show]:
        lines.append(
            f"  id {trace['expression_id']}  solved {trace['solved']}  generations {trace['n_generations']}"
            f"  mse {trace['final_mse']:.3g}\n    target {_short(trace['target_expression'])}"
            f"\n    final  {_short(trace['final_expression'])}"
            f"\n    ancestors of best per generation: {[len(a) for a in trace['trajectory']['ancestors_of_best']][:20]}"
        )
        if tj.n_generations(trace["trajectory"]) != trace["n_generations"]:
            lines.append("    warning: trajectory length differs from n_generations")
    return lines


# --------------------------------------------------------------------------
# JSON Lines training data


def find_sidecar(path: Path) -> Path | None:
    """A metadata JSON next to a JSONL file, if one exists."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for suffix in SIDECAR_SUFFIXES:
        for candidate in (path.with_name(stem + suffix), path.with_name(path.name + suffix)):
            if candidate.is_file() and candidate != path:
                return candidate
    return None


def describe_jsonl(path: Path, show: int) -> list[str]:
    rows = list(file_io.read_jsonl(path))
    keys = Counter(key for row in rows for key in row)
    lines = [f"kind: jsonl (training data)", f"lines: {len(rows)}", f"keys: {counts(keys)}"]
    sidecar = find_sidecar(path)
    if sidecar is not None:
        lines += _sidecar_lines(sidecar)
    for field in JSONL_TEXT_FIELDS:
        lengths = [len(row[field]) for row in rows if isinstance(row.get(field), str)]
        if lengths:
            lines.append(f"{field} length (chars): {spread(lengths)}")
    if "expression_id" in keys:
        lines.append(f"distinct expression_ids: {len({json.dumps(row.get('expression_id')) for row in rows})}")
    for row in rows[:show]:
        lines.append("  {" + ", ".join(f"{key!r}: {_short(value)}" for key, value in row.items()) + "}")
    return lines


def _sidecar_lines(sidecar: Path) -> list[str]:
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # the sidecar is optional: report, do not fail
        return [f"sidecar metadata: {sidecar} (unreadable: {type(error).__name__})"]
    if not isinstance(metadata, dict):
        return [f"sidecar metadata: {sidecar} (not a JSON object)"]
    inner = metadata.get("metadata") if isinstance(metadata.get("metadata"), dict) else metadata
    return [f"sidecar metadata: {sidecar}", *provenance(inner)]


# --------------------------------------------------------------------------
# Dispatch and CLI


def is_jsonl(path: Path) -> bool:
    """True for a `.jsonl` name, or a non-gzip file whose first non-blank byte is '{'."""
    if path.suffix == ".jsonl":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False  # file_io.load reports the problem
    return not head.startswith(file_io.GZIP_MAGIC) and head.lstrip()[:1] == b"{"


def describe(path, show: int = 0) -> str:
    """The whole report for one file (raises DataFileError)."""
    path = Path(path)
    if is_jsonl(path):
        return "\n".join([f"file: {path}", *describe_jsonl(path, show)])
    loaded = file_io.load(path)
    lines = [f"file: {path}", f"kind: {loaded.kind}  version {loaded.version}",
             *provenance(loaded.metadata)]
    records = loaded.records
    try:
        if loaded.kind == "expressions":
            lines += describe_expressions(records, loaded.metadata, show)
        elif loaded.kind == "traces":
            lines += describe_traces(records, loaded.metadata, show)
        else:
            lines.append(f"records: {len(records)}  metadata keys: {sorted(loaded.metadata)}")
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        raise DataFileError(f"{path}: unexpected {loaded.kind} record layout "
                            f"({type(error).__name__}: {error})") from None
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Describe a ttsr expressions, traces or training JSONL file.")
    parser.add_argument("path", help="the file to describe")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="also print N example records")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with file_io.exit_on_data_error():
        print(describe(args.path, max(0, args.show)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
