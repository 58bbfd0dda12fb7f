"""Convert expressions into direct training examples: the data (X, y) -> the expression.

    python direct_conversion.py --input datasets/expressions/arith_1k_c05_X.pkl.gz --split
    python direct_conversion.py --input datasets/traces/gen1k_arith_1k_c05_X.pkl.gz --inline_data

writes ``datasets/training/direct[_inline]_{input name}.{train,val}.jsonl``,
their sidecars and the tokenizer (see conversion_common.py).

The input is an expressions file (every expression), or a traces file (the
traced expressions; X and y from the expressions file its metadata names, or
--expressions_file). One example per expression; the model's input is the
points, embedded by the point embedder (SPEC: up to 64 points, X padded to
10 dimensions, y appended), not text, so the only model-visible text is the
target.

One JSON object per line:

    expression_id  int
    target         str  `{expr}<EOS>` (format_utils.format_target)
    n_vars         int
    n_points       int  points the expressions file holds for it
    X, y           with --inline_data: lists of numbers, the first --max_points
                   rows (the generator stores rows in random order), each value
                   the shortest decimal that reads back as the stored float32
    data_ref       otherwise: {"file": expressions file, "id": expression id},
                   where X and y are found
    metadata       {"source": input file name}

The split (--split) puts an expression in the same part as the one-step and
autoregressive conversions made with the same --seed and --val_fraction.
--sample_fraction keeps each expression with that probability (seeded per
expression id).
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
import file_io
import format_utils as fu

SCRIPT = "direct_conversion.py"
DEFAULT_MAX_POINTS = 64  # what the point embedder reads (SPEC)
DEFAULT_CONSTANTS = (1.0,)


@dataclass(frozen=True)
class DirectOptions:
    inline_data: bool = False
    max_points: int = DEFAULT_MAX_POINTS  # 0 = all
    sample_fraction: float = 1.0
    seed: int = 0
    parentheses: str = "full"  # how the target expression is written (format_utils.PARENTHESES)


def float32_list(values) -> list:
    """Numbers (nested lists for 2-D) that read back exactly as the float32 values, in the fewest digits."""
    array = np.asarray(values, dtype=np.float32)
    return np.vectorize(float, otypes=[object])(array.astype(str)).tolist()


def direct_examples(record: dict, options: DirectOptions = DirectOptions(), data_file: str = "",
                    source: str = "", counts: Counter | None = None) -> Iterator[dict]:
    """The direct row of one expression record (none when sampled out or its data is not finite)."""
    counts = Counter() if counts is None else counts
    expression_id = int(record["id"])
    mask = cc.keep_mask(options.seed, expression_id, 1, options.sample_fraction)
    if mask is not None and not mask[0]:
        counts["sampled_out"] += 1
        return
    X, y = np.asarray(record["X"]), np.asarray(record["y"])
    row = {"expression_id": expression_id, "target": fu.format_target(record["expression"], options.parentheses),
           "n_vars": int(record.get("n_vars", X.shape[1] if X.ndim == 2 else 1)), "n_points": int(len(y))}
    if options.inline_data:
        rows = slice(None, options.max_points or None)
        if not (np.isfinite(X[rows]).all() and np.isfinite(y[rows]).all()):
            counts["skipped_non_finite_data"] += 1  # JSON has no NaN or inf
            return
        row["X"], row["y"] = float32_list(X[rows]), float32_list(y[rows])
    else:
        row["data_ref"] = {"file": str(data_file), "id": expression_id}
    row["metadata"] = {"source": Path(source).name}
    yield row


def record_lines(record: dict, counts: Counter, options: DirectOptions, data_file: str, source: str):
    """The JSONL lines of one expression record (picklable with functools.partial, for workers)."""
    return map(cc.json_line, direct_examples(record, options, data_file, source, counts))


def load_direct_input(path, expressions_override=None) -> tuple[list[dict], Path, list[dict], dict]:
    """(records, expressions file, source entries, expressions metadata) of an expressions or traces --input."""
    loaded = file_io.load(path, kind=("expressions", "traces"))
    if loaded.kind == "expressions":
        if expressions_override is not None:
            raise cc.UsageError("--expressions_file is for a traces --input; the input is an expressions file")
        records = list(cc.expressions_by_id(loaded.records, path).values())
        return records, Path(path), [cc.source_entry("expressions", path)], dict(loaded.metadata)
    traces = cc.checked_traces(loaded.records, path)
    expressions_path = cc.traces_expressions_file(path, loaded.metadata, expressions_override)
    by_id, metadata = cc.load_expressions(expressions_path)
    records = cc.records_for_traces(traces, by_id, expressions_path)
    sources = [cc.source_entry("traces", path), cc.source_entry("expressions", expressions_path)]
    return records, expressions_path, sources, metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert expressions (or the traced ones) into direct training JSONL: (X, y) -> expression.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cc.add_common_arguments(
        parser, input_help="expressions file, or traces file (its traced expressions)",
        expressions_help="with a traces --input: the expressions file holding X, y "
                         "(default: the one the traces metadata names)")
    parser.add_argument("--inline_data", action="store_true",
                        help="write X and y into each line (default: a reference to the expressions file)")
    parser.add_argument("--max_points", type=int, default=DEFAULT_MAX_POINTS,
                        help="with --inline_data: write at most this many points (0: all)")
    return parser


def convert(args, argv: list[str]) -> dict:
    """The CLI body: check options, load, convert, write (see conversion_common.run_conversion)."""
    cc.check_common_arguments(args)
    if args.max_points < 0:
        raise cc.UsageError(f"--max_points must be at least 0, got {args.max_points}")
    args.output = args.output or cc.default_output("direct", ["inline" if args.inline_data else ""], args.input,
                                                   args.parentheses)
    cc.check_outputs(args)
    records, expressions_path, sources, metadata = load_direct_input(args.input, args.expressions_file)
    options = DirectOptions(args.inline_data, args.max_points, args.sample_fraction, args.seed, args.parentheses)
    source = str(args.input)
    conversion = cc.Conversion(
        name="direct", items=records, unit="expressions",
        expression_id=lambda record: int(record["id"]),
        lines=functools.partial(record_lines, options=options, data_file=str(expressions_path), source=source),
        texts=cc.target_only, sources=sources,
        max_vars=max(int(record.get("n_vars", 1)) for record in records),
        constants=tuple(metadata.get("constants") or DEFAULT_CONSTANTS),
        parameters={**cc.common_parameters(args), "inline_data": args.inline_data, "max_points": args.max_points},
    )
    return cc.run_conversion(conversion, args, argv, SCRIPT)


def main(argv=None) -> int:
    return cc.run_cli(build_parser, convert, argv)


if __name__ == "__main__":
    sys.exit(main())
