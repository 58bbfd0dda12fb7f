"""Training examples for train.py: reading, tokenizing, length-grouped batching, collating.

An example is a token sequence `prompt + target` and the number of prompt
tokens; the loss covers the target tokens only (labels -100 elsewhere).

    onestep, autoreg   prompt = format_utils.build_prompt(context, population),
                       target = row["target"] (ends with <EOS>)
    direct             prompt = DIRECT_PROMPT (`<BOS>`), target as
                       above; the input is the points (X, y), which the
                       collator turns into the point embedder's tensors.

A target that lacks the final <EOS> gets one (the model must learn to stop).
An example longer than the model's positions is skipped and counted, never
truncated: a cut target would teach the model to stop mid-expression.

Storage: `TokenizedExamples` keeps every example's ids in one flat uint16
array with offsets, read from JSONL by `file_io.read_jsonl` (the plain
reader), or in an Arrow table memory-mapped by the Hugging Face `datasets`
library when it is installed (`use_datasets`). Both yield the same items in
the same order: {"input_ids": int array, "n_prompt": int} (+ "X", "y").

Batching: `LengthGroupedSampler` shuffles with (seed, epoch), cuts the order
into mega-batches and sorts each by length, so a batch holds examples of
nearly equal length; `Collator` pads to the longest example of the batch
(right padding). With right padding and causal attention no real token ever
attends to a pad, so the collator leaves the attention mask out by default,
which lets SDPA use its fused causal kernels; the result is identical.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

import file_io
import format_utils as fu
from file_io import DataFileError
from progress import library_bars_off

MODES = ("onestep", "autoreg", "direct")
DIRECT_PROMPT = fu.BOS  # = point_embedder.DIRECT_PROMPT: what the decoder reads after the point prefix
TEXT_FIELDS = ("context", "population", "target")
IGNORE_INDEX = -100  # label of a position without loss
ENCODE_CHUNK = 4096  # rows tokenized per call of the (parallel) fast tokenizer


def datasets_available() -> bool:
    """Whether the optional Hugging Face `datasets` library is installed."""
    return importlib.util.find_spec("datasets") is not None


# --------------------------------------------------------------------------
# Rows to texts


def row_texts(row: dict, mode: str, where: str) -> tuple[str, str]:
    """(prompt, target) of one JSONL row; DataFileError naming `where` when a field is missing."""
    needed = ("target",) if mode == "direct" else TEXT_FIELDS
    missing = [key for key in needed if row.get(key) is None]
    if missing:
        raise DataFileError(f"{where}: row lacks {missing} (a {mode} example needs {list(needed)})")
    wrong = [key for key in needed if not isinstance(row[key], str)]
    if wrong:
        raise DataFileError(f"{where}: field {wrong[0]!r} is {type(row[wrong[0]]).__name__}, not text")
    target = row["target"]
    if not target.endswith(fu.EOS):
        target += fu.EOS
    if mode == "direct":
        return DIRECT_PROMPT, target
    return fu.build_prompt(row["context"], row["population"]), target


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt + target and the prompt length, for each (prompt, target).

    Prompt and target are tokenized apart: the ttsr tokenizer has no token
    across a `<...>` marker, so this equals tokenizing the whole text. Each
    distinct prompt is tokenized once: a one-step dataset repeats a state's
    prompt for every child of that state (up to population_size - 1 times).
    """
    if not pairs:
        return [], []
    encode = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    distinct = list(dict.fromkeys(p for p, _ in pairs))
    encoded = dict(zip(distinct, encode(distinct)))
    prompts = [encoded[p] for p, _ in pairs]
    targets = encode(t for _, t in pairs)
    return [p + t for p, t in zip(prompts, targets)], [len(p) for p in prompts]


# --------------------------------------------------------------------------
# Points (direct mode and the optional point prefix)


class PointSource:
    """X and y of an example: inline in the row, or by id from an expressions file (loaded once)."""

    def __init__(self, expressions_file=None):
        self.default_file = str(expressions_file) if expressions_file else None
        self._files: dict[str, dict[int, dict]] = {}

    def _records(self, path: str) -> dict[int, dict]:
        if path not in self._files:
            records = file_io.load(path, kind="expressions").records
            self._files[path] = {int(record["id"]): record for record in records}
        return self._files[path]

    def resolve(self, row: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
        """(X float32 (n, d), y float32 (n,)) of a row: `X`/`y`, else `data_ref`, else `expression_id`."""
        if "X" in row and "y" in row and row["X"] is not None:
            return _as_points(row["X"], row["y"])
        reference = row.get("data_ref")
        if isinstance(reference, dict) and reference.get("file") is not None:
            path, expression_id = str(reference["file"]), reference.get("id")
        else:
            path, expression_id = self.default_file, row.get("expression_id")
        if path is None or expression_id is None:
            raise DataFileError(f"{where}: row has no X, y, data_ref or (expression_id and expressions_file)")
        record = self._records(path).get(int(expression_id))
        if record is None:
            raise DataFileError(f"{path}: has no expression id {expression_id} (needed by {where})")
        return _as_points(record["X"], record["y"])


def _as_points(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    return (X[:, None] if X.ndim == 1 else X), np.asarray(y, dtype=np.float32).ravel()


# --------------------------------------------------------------------------
# Tokenized examples


@dataclass
class LoadReport:
    """What loading a JSONL file kept and skipped."""

    path: str
    rows: int = 0
    kept: int = 0
    too_long: int = 0
    longest_kept: int = 0
    backend: str = "plain"

    def line(self) -> str:
        text = f"{self.path}: {self.kept} of {self.rows} examples ({self.backend} reader)"
        if self.too_long:
            text += f"; skipped {self.too_long} longer than the model's positions"
        return text + f"; longest {self.longest_kept} tokens"


class TokenizedExamples(torch.utils.data.Dataset):
    """Examples as flat token ids + offsets (plain reader), with optional points."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, n_prompt: np.ndarray,
                 points: list | None = None, report: LoadReport | None = None):
        self.ids, self.offsets, self.n_prompt = ids, offsets, n_prompt
        self.points = points  # list of (X, y) or None
        self.lengths = np.diff(offsets).astype(np.int64)
        self.report = report

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        item = {"input_ids": self.ids[self.offsets[index]:self.offsets[index + 1]].astype(np.int64),
                "n_prompt": int(self.n_prompt[index])}
        if self.points is not None:
            item["X"], item["y"] = self.points[index]
        return item

    def subset(self, indices: Iterable[int]) -> "TokenizedExamples":
        """The examples at `indices` (in that order)."""
        indices = np.asarray(list(indices), dtype=np.int64)
        pieces = [self.ids[self.offsets[i]:self.offsets[i + 1]] for i in indices]
        ids = np.concatenate(pieces) if pieces else self.ids[:0]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces], dtype=np.int64)])
        points = None if self.points is None else [self.points[i] for i in indices]
        return TokenizedExamples(ids, offsets, self.n_prompt[indices], points, self.report)


class ArrowExamples(torch.utils.data.Dataset):
    """The same items as TokenizedExamples, over a memory-mapped `datasets.Dataset`."""

    def __init__(self, table, point_source: PointSource | None, where: str, report: LoadReport):
        self.table = table
        self.lengths = np.asarray(table["length"], dtype=np.int64)
        self.point_source, self.where, self.report = point_source, where, report

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict:
        row = self.table[int(index)]
        item = {"input_ids": np.asarray(row["input_ids"], dtype=np.int64), "n_prompt": int(row["n_prompt"])}
        if self.point_source is not None:
            item["X"], item["y"] = self.point_source.resolve(row, self.where)
        return item

    def subset(self, indices: Iterable[int]) -> "ArrowExamples":
        indices = [int(i) for i in indices]
        return ArrowExamples(self.table.select(indices), self.point_source, self.where, self.report)


def load_examples(path, tokenizer, mode: str, max_length: int, *, with_points: bool = False,
                  expressions_file=None, use_datasets=None, cache_dir=None, allow_empty: bool = False,
                  progress: bool = True):
    """Tokenized examples of a JSONL file (TokenizedExamples or ArrowExamples) with a LoadReport.

    `use_datasets`: None = when installed, True = required, False = never.
    `progress`: False silences the `datasets` library's progress bars.
    Raises DataFileError when no example fits in `max_length` tokens (an
    empty file is allowed with `allow_empty`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if use_datasets is None:
        use_datasets = datasets_available()
    if use_datasets and not datasets_available():
        raise RuntimeError("use_datasets is true but the `datasets` library is not installed (pip install datasets)")
    first = next(iter(file_io.read_jsonl(path)), None)  # a missing, binary or bad first line: one line
    source = PointSource(expressions_file) if with_points else None
    if use_datasets and first is not None:  # (`datasets` cannot read a file without rows)
        examples = _load_with_datasets(path, tokenizer, mode, max_length, source, cache_dir, progress)
    else:
        examples = _load_plain(path, tokenizer, mode, max_length, source)
    if examples.report.rows == 0 and not allow_empty:
        raise DataFileError(f"{path}: file has no rows")
    if len(examples) == 0 and not (allow_empty and examples.report.rows == 0):
        raise DataFileError(f"{path}: no example fits in {max_length} tokens ({examples.report.rows} rows, "
                            f"{examples.report.too_long} too long)")
    return examples


def _load_plain(path, tokenizer, mode, max_length, source) -> TokenizedExamples:
    report = LoadReport(str(path))
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32
    chunks, prompt_counts, points, rows = [], [], [] if source is not None else None, []

    def flush():
        pairs = [row_texts(row, mode, f"{path}:{number}") for number, row in rows]
        ids, n_prompt = encode_pairs(tokenizer, pairs)
        for (number, row), sequence, count in zip(rows, ids, n_prompt):
            if len(sequence) > max_length:
                report.too_long += 1
                continue
            chunks.append(np.asarray(sequence, dtype=dtype))
            prompt_counts.append(count)
            if points is not None:
                points.append(source.resolve(row, f"{path}:{number}"))
        rows.clear()

    for number, row in enumerate(file_io.read_jsonl(path), start=1):
        rows.append((number, row))
        report.rows += 1
        if len(rows) == ENCODE_CHUNK:
            flush()
    flush()
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    report.kept, report.longest_kept = len(chunks), int(lengths.max(initial=0))
    return TokenizedExamples(ids, offsets, np.asarray(prompt_counts, dtype=np.int32), points, report)


def _load_with_datasets(path, tokenizer, mode, max_length, source, cache_dir, progress=True) -> ArrowExamples:
    """Tokenize through `datasets` (Arrow, memory-mapped, cached); same items as the plain reader."""
    import datasets  # optional dependency, imported only here

    with library_bars_off(not progress, "datasets"):
        return _tokenize_with_datasets(datasets, path, tokenizer, mode, max_length, source, cache_dir)


def _tokenize_with_datasets(datasets, path, tokenizer, mode, max_length, source, cache_dir) -> ArrowExamples:
    """`_load_with_datasets`'s work, its bars settled."""
    report = LoadReport(str(path), backend="datasets")
    json_logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = json_logger.level
    json_logger.setLevel(logging.CRITICAL)  # a bad file is reported below, in one line
    try:
        table = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as error:  # DatasetGenerationError, ArrowInvalid ...: find the bad line with the plain reader
        for _ in file_io.read_jsonl(path):
            pass
        cause = error.__cause__ or error
        raise DataFileError(f"{path}: the datasets library cannot read it ({type(cause).__name__}: "
                            f"{' '.join(str(cause).split())[:200]})") from None
    finally:
        json_logger.setLevel(level)
    report.rows = len(table)
    needed = ("target",) if mode == "direct" else TEXT_FIELDS
    missing = [key for key in needed if key not in table.column_names]
    if missing:
        raise DataFileError(f"{path}: rows lack {missing} (a {mode} example needs {list(needed)})")

    def encode(batch, indices):
        rows = [{key: batch[key][i] for key in batch} for i in range(len(indices))]
        pairs = [row_texts(row, mode, f"{path}: row {index + 1}") for index, row in zip(indices, rows)]
        ids, n_prompt = encode_pairs(tokenizer, pairs)
        return {"input_ids": ids, "n_prompt": n_prompt, "length": [len(i) for i in ids]}

    keep = [c for c in ("X", "y", "data_ref", "expression_id") if source is not None and c in table.column_names]
    drop = [c for c in table.column_names if c not in keep]
    table = table.map(encode, batched=True, with_indices=True, batch_size=ENCODE_CHUNK, remove_columns=drop,
                      desc="tokenizing")
    table = table.filter(lambda lengths: [n <= max_length for n in lengths], input_columns="length",
                         batched=True, desc="length filter")
    report.kept = len(table)
    report.too_long = report.rows - report.kept
    report.longest_kept = int(max(table["length"], default=0))
    return ArrowExamples(table, source, str(path), report)


def select_subset(examples, max_examples: int | None, seed: int):
    """At most `max_examples` examples, a seeded random choice kept in file order (all when None)."""
    if max_examples is None or len(examples) <= max_examples:
        return examples
    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=max_examples, replace=False))
    return examples.subset(chosen)


# --------------------------------------------------------------------------
# Batching


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Indices in a (seed, epoch)-shuffled order, sorted by length within mega-batches.

    Each run of `batch_size` consecutive indices (one batch per device, taken
    round-robin by accelerate under DDP) then has nearly equal lengths. The
    mega-batches are visited in random order, except that the one holding the
    longest example goes first (an out-of-memory error shows at step 1).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_batches: int = 64):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.mega = max(1, int(batch_size) * int(group_batches))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = np.random.default_rng([self.seed, self.epoch])
        order = generator.permutation(len(self.lengths))
        groups = [order[i:i + self.mega] for i in range(0, len(order), self.mega)]
        groups = [group[np.argsort(-self.lengths[group], kind="stable")] for group in groups]
        groups = [groups[i] for i in generator.permutation(len(groups))]
        if groups:
            longest = int(np.argmax([self.lengths[group[0]] for group in groups]))
            groups.insert(0, groups.pop(longest))
        # Batches inside a mega-batch are shuffled too, whole, so lengths do not fall steadily.
        batches = []
        for group in groups:
            pieces = [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
            head, rest = pieces[:1], pieces[1:]
            batches.extend(head + [rest[i] for i in generator.permutation(len(rest))])
        return iter(int(i) for batch in batches for i in batch)


class LengthSortedSampler(torch.utils.data.Sampler):
    """All indices, longest first: evaluation batches with little padding, deterministic."""

    def __init__(self, lengths: Sequence[int]):
        self.order = np.argsort(-np.asarray(lengths), kind="stable")

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return iter(self.order.tolist())


@dataclass
class Collator:
    """Pads a batch on the right to its longest example; labels are -100 on prompt and padding.

    Returns input_ids, labels (int64), attention_mask when `attention_mask`,
    points and point_mask when `points_fn` (= point_embedder.encode_points),
    plus two ints the trainer counts and removes before the forward pass:
    n_real_tokens and n_batch_tokens (= batch size x padded length).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    attention_mask: bool = False
    points_fn: object = None
    point_options: dict = field(default_factory=dict)

    def __call__(self, features: list[dict]) -> dict:
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = int(math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        input_ids = np.full((len(features), width), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(features), width), IGNORE_INDEX, dtype=np.int64)
        for row, (feature, length) in enumerate(zip(features, lengths)):
            input_ids[row, :length] = feature["input_ids"]
            start = int(feature["n_prompt"])
            labels[row, start:length] = input_ids[row, start:length]
        batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}
        if self.attention_mask:
            batch["attention_mask"] = torch.from_numpy(
                (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64))
        if self.points_fn is not None:
            points, point_mask = self.points_fn([f["X"] for f in features], [f["y"] for f in features],
                                                **self.point_options)
            batch["points"], batch["point_mask"] = torch.as_tensor(points), torch.as_tensor(point_mask)
        batch["n_real_tokens"] = int(sum(lengths))
        batch["n_batch_tokens"] = int(len(features) * width)
        return batch


STAT_KEYS = ("n_real_tokens", "n_batch_tokens")


def pop_batch_stats(batch: dict) -> tuple[int, int]:
    """Remove and return (real tokens, processed tokens) that the Collator put in a batch."""
    return int(batch.pop("n_real_tokens", 0)), int(batch.pop("n_batch_tokens", 0))


# --------------------------------------------------------------------------
# Synthetic examples (tests and benchmarks)


def synthetic_rows(n_examples: int, seed: int = 0, population_size: int = 20, max_vars: int = 3,
                   max_depth: int = 4, mode: str = "onestep") -> list[dict]:
    """One-step (or autoregressive) rows shaped like real ones, from random trees and fitnesses.

    A population of BasicSR-sized random trees with fitnesses; the one-step
    target is one of its members (so a model can learn to copy), the
    autoregressive target a new random population. Deterministic in `seed`.
    """
    from expressions import random_tree
    from random_stream import RandomStream

    generator = np.random.default_rng([seed, 1])
    stream = RandomStream(np.random.default_rng([seed, 2]))
    operators = ("+", "-", "*", "/")
    rows = []
    for index in range(n_examples):
        n_vars = int(generator.integers(1, max_vars + 1))
        variables = [f"x{i}" for i in range(n_vars)]
        grow = lambda: random_tree(stream, variables, (1.0,), operators, max_depth)
        population = [grow() for _ in range(population_size)]
        fitnesses = -np.abs(generator.lognormal(0.0, 2.0, population_size))
        generation = int(generator.integers(0, 1000))
        context = fu.build_context("basic", generation, n_vars, operators, (), (1.0,))
        if mode == "autoreg":
            target = fu.format_population_target([grow() for _ in range(population_size)])
        else:
            target = fu.format_target(population[int(generator.integers(population_size))])
        rows.append({"context": context, "population": fu.format_population(population, fitnesses),
                     "target": target, "expression_id": index, "metadata": {"generation": generation}})
    return rows


def write_rows(path, rows: Iterable[dict]) -> Path:
    """Write rows as JSONL (atomically); returns the path."""
    file_io.write_jsonl(path, rows)
    return Path(path)


def describe_lengths(lengths: Sequence[int]) -> str:
    """'n 1000, tokens mean 712 min 520 max 803' for a log line."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return "n 0"
    return (f"n {lengths.size}, tokens mean {lengths.mean():.0f} min {lengths.min()} "
            f"max {lengths.max()}")
