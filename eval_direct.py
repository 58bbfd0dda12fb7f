"""Evaluate a direct-mode checkpoint: greedy expressions for the (X, y) of a validation file.

    python eval_direct.py --checkpoint checkpoints/direct_tiny --data datasets/training/direct_val.jsonl \
        --output results/direct_tiny_val.json

Input lines (direct_conversion.py): {"expression_id", "target" ("{expr}<EOS>"),
"n_vars", and either inline "X" and "y" or "data_ref": {"file", "id"}}; a
referenced expressions file is loaded once (a relative path is looked up
next to the JSONL file, then in the working directory).

Per example the model continues `<BOS>` after the points' prefix (greedy,
KV cache); then

    well_formed   the output ended with <EOS> and `format_utils.parse_generated`
                  read it (a generation cut off by --max_new_tokens is not)
    nmse          MSE / var(y) on ALL the example's points (MSE when var(y) = 0),
                  as problems.py defines it; inf (null in JSON) when ill-formed or
                  a prediction is not finite
    accurate      nmse < 1e-10 (problems.NMSE_THRESHOLD)
    r2            1 - nmse clipped to [0, 1]: the share of y's variance explained,
                  0 when no better than y's mean, and 0 for an ill-formed output
                  (no answer explains nothing); clipping keeps one wild formula
                  from dominating the mean
    exact_match   generated text == target text (both end in <EOS>)

Summary: accuracy, mean_r2 (all examples, as above), mean_r2_well_formed
(well-formed ones only), r2_above_0.99 (the share with R² >= 0.99, Kamienny
et al.'s accuracy), well_formed_rate, exact_match_rate. Data errors, bad
counts and an --output that is the --data file or cannot be written print one
line and exit 2, before the model loads; an existing --output is replaced
only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import expressions as ex
import file_io
import format_utils as fu
from file_io import DataFileError
from neural_sr import load_errors
from point_embedder import PrefixLM, encode_points, greedy_decode, load_model
from problems import NMSE_THRESHOLD, nmse
from progress import Progress, library_bars_off
from tokenizer import load_tokenizer

DEFAULT_MAX_NEW_TOKENS = 64
R2_ACCURACY = 0.99


# --------------------------------------------------------------------------
# Data


class ExpressionsCache:
    """Expressions files loaded once each, records indexed by id."""

    def __init__(self):
        self.files: dict[Path, dict[int, dict]] = {}

    def record(self, path: Path, expression_id: int) -> dict:
        if path not in self.files:
            records = file_io.load(path, kind="expressions").records
            self.files[path] = {int(record["id"]): record for record in records}
        found = self.files[path].get(expression_id)
        if found is None:
            raise DataFileError(f"{path}: no expression with id {expression_id}")
        return found


def _resolve(reference: str, data_path: Path) -> Path:
    """A data_ref file: absolute as given, else next to the JSONL file, else relative to the working directory."""
    path = Path(reference)
    if path.is_absolute() or not (data_path.parent / path).exists():
        return path
    return data_path.parent / path


def load_examples(data_path, max_examples: int | None = None) -> list[dict]:
    """Direct-mode lines as {expression_id, target, X (n, d) float64, y (n,) float64}; DataFileError if unusable."""
    data_path = Path(data_path)
    cache = ExpressionsCache()
    examples = []
    for number, row in enumerate(file_io.read_jsonl(data_path, require_nonempty=True), start=1):
        if max_examples is not None and len(examples) >= max_examples:
            break
        where = f"{data_path}:{number}"
        if not isinstance(row.get("target"), str):
            raise DataFileError(f"{where}: no 'target' text")
        if "X" in row and "y" in row:
            X, y = row["X"], row["y"]
        elif isinstance(row.get("data_ref"), dict) and {"file", "id"} <= row["data_ref"].keys():
            record = cache.record(_resolve(row["data_ref"]["file"], data_path), int(row["data_ref"]["id"]))
            X, y = record["X"], record["y"]
        else:
            raise DataFileError(f"{where}: needs inline 'X' and 'y' or a 'data_ref' {{file, id}}")
        examples.append({"expression_id": row.get("expression_id"), "target": row["target"],
                         **_checked_arrays(X, y, where)})
    return examples


def _checked_arrays(X, y, where: str) -> dict:
    try:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataFileError(f"{where}: X or y is not numeric ({exc})") from None
    X = X[:, None] if X.ndim == 1 else X
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise DataFileError(f"{where}: X of shape {X.shape} does not match y of {len(y)} values")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise DataFileError(f"{where}: non-finite values in X or y")
    return {"X": X, "y": y}


# --------------------------------------------------------------------------
# Scoring


def score(generated: str, example: dict) -> dict:
    """The per-example verdict (see the module docstring)."""
    expression = fu.parse_generated(generated) if generated.endswith(fu.EOS) else None
    well_formed = expression is not None
    error = nmse(ex.evaluate(expression, example["X"]), example["y"]) if well_formed else math.inf
    r2 = min(1.0, max(0.0, 1.0 - error)) if math.isfinite(error) else 0.0
    return {
        "expression_id": example["expression_id"],
        "target": example["target"],
        "generated": generated,
        "well_formed": well_formed,
        "nmse": error if math.isfinite(error) else None,
        "r2": r2,
        "accurate": error < NMSE_THRESHOLD,
        "exact_match": generated == example["target"],
    }


def summarize(results: list[dict]) -> dict:
    """Rates and means over the per-example results."""
    count = len(results)
    well_formed = [r for r in results if r["well_formed"]]
    return {
        "n_examples": count,
        "accuracy": sum(r["accurate"] for r in results) / count,
        "mean_r2": sum(r["r2"] for r in results) / count,
        "mean_r2_well_formed": (sum(r["r2"] for r in well_formed) / len(well_formed)) if well_formed else None,
        "r2_above_0.99": sum(r["r2"] >= R2_ACCURACY for r in results) / count,
        "well_formed_rate": len(well_formed) / count,
        "exact_match_rate": sum(r["exact_match"] for r in results) / count,
    }


# --------------------------------------------------------------------------
# Evaluation


def evaluate_direct(model: PrefixLM, tokenizer, examples: list[dict], max_new_tokens: int,
                    batch_size: int = 64, progress: bool = True) -> list[dict]:
    """Greedy-decode every example in batches and score it."""
    settings = model.embedder.config
    results = []
    with Progress(len(examples), "eval_direct", disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            try:
                points, mask = encode_points([e["X"] for e in batch], [e["y"] for e in batch],
                                             settings.max_input_dim, settings.max_points)
            except ValueError as exc:
                raise DataFileError(f"examples {start}..{start + len(batch) - 1}: {exc}") from None
            texts = greedy_decode(model, tokenizer, None, points, mask, max_new_tokens)
            results.extend(score(text, example) for text, example in zip(texts, batch))
            bar.update(len(batch))
    return results


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_checkpoint(folder) -> tuple[PrefixLM, object]:
    """The PrefixLM and tokenizer saved in a checkpoint folder; DataFileError when it is not one."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DataFileError(f"{folder}: not a checkpoint folder (no config.json)")
    try:
        model, tokenizer = load_model(folder), load_tokenizer(folder)
    except load_errors() as exc:
        raise DataFileError(f"{folder}: cannot load the checkpoint ({' '.join(str(exc).split())[:300]})") from None
    if not isinstance(model, PrefixLM):
        raise DataFileError(f"{folder}: a {type(model).__name__} checkpoint; direct mode needs a point-embedder "
                            f"model (PrefixLM)")
    return model, tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Greedy evaluation of a direct-mode (X, y) -> expression model.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (model, config and tokenizer)")
    parser.add_argument("--data", required=True, help="direct-mode validation JSONL (inline X/y or data_ref)")
    parser.add_argument("--max_examples", type=int, default=None, help="evaluate only the first N lines")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help=f"generation limit (default: the checkpoint config's max_new_tokens, "
                             f"else {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--batch_size", type=int, default=64, help="examples decoded together (default 64)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto: cuda if available)")
    parser.add_argument("--output", default=None, help="write the summary and per-example results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_args(args) -> None:
    """Bad counts and output paths end the run here, before anything is loaded (one `error:` line, exit 2)."""
    for flag, value in (("--max_examples", args.max_examples), ("--max_new_tokens", args.max_new_tokens),
                        ("--batch_size", args.batch_size)):
        if value is not None and value < 1:
            _fail(f"{flag} must be at least 1, got {value}")
    if args.output is None:
        return
    file_io.refuse_input_as_output(args.output, [args.data])
    if Path(args.output).exists() and not args.overwrite:
        _fail(f"{args.output}: already exists (use --overwrite to replace it)")
    file_io.check_writable(args.output)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with library_bars_off():  # our own bar reports progress; theirs would add a line per load
        return run(args, argv)


def run(args, argv) -> int:
    """main's body, once the arguments are parsed."""
    started = time.monotonic()
    with file_io.exit_on_data_error():
        check_args(args)
        examples = load_examples(args.data, args.max_examples)  # cheap, so bad data fails before the model loads
        model, tokenizer = load_checkpoint(args.checkpoint)
        max_new_tokens = args.max_new_tokens or getattr(model.config, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS
        model.to(_pick_device(args.device)).eval()
        results = evaluate_direct(model, tokenizer, examples, max_new_tokens, args.batch_size, not args.quiet)
    summary = summarize(results)
    seconds = time.monotonic() - started
    if args.output:
        report = {**summary, "checkpoint": str(args.checkpoint), "data": str(args.data),
                  "max_new_tokens": max_new_tokens, "seconds": seconds,
                  "metadata": file_io.make_metadata(vars(args), seed=None, argv=argv and ["eval_direct.py", *argv]),
                  "examples": results}
        with file_io.exit_on_data_error(), \
                file_io.atomic_open(args.output, "w", overwrite=args.overwrite) as handle:
            json.dump(report, handle, indent=1)
            handle.write("\n")
    print(f"eval_direct: {summary['n_examples']} examples | accuracy {summary['accuracy']:.1%} | "
          f"mean R² {summary['mean_r2']:.3f} | well-formed {summary['well_formed_rate']:.1%} | "
          f"exact {summary['exact_match_rate']:.1%} | {seconds:.1f} s"
          + (f" -> {args.output}" if args.output else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
