"""Reading a researcher's own data: a CSV with columns x0..xk then y.

A header row is optional (a first row that is not all numbers is taken as the
header). Every problem is reported as one line naming the file and the row,
as `CSVDataError`, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import csv
import math

import numpy as np

MIN_ROWS = 3


class CSVDataError(ValueError):
    """A CSV that cannot be used as data; the message names the file and row."""


def _numbers(cells: list[str]) -> list[float] | None:
    try:
        return [float(cell) for cell in cells]
    except ValueError:
        return None


def load_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from a CSV whose last column is y."""
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CSVDataError(f"{path}: cannot read ({error})") from None
    if rows and _numbers(rows[0]) is None:
        rows = rows[1:]
        first_data_row = 2
    else:
        first_data_row = 1
    if len(rows) < MIN_ROWS:
        raise CSVDataError(f"{path}: need at least {MIN_ROWS} data rows, found {len(rows)}")
    width = len(rows[0])
    if width < 2:
        raise CSVDataError(f"{path}: need at least 2 columns (x0 and y), found {width}")
    values = []
    for offset, row in enumerate(rows):
        line = first_data_row + offset
        if len(row) != width:
            raise CSVDataError(f"{path}: row {line} has {len(row)} columns, expected {width}")
        numbers = _numbers(row)
        if numbers is None:
            raise CSVDataError(f"{path}: row {line} is not numeric: {','.join(row)[:60]!r}")
        if not all(math.isfinite(v) for v in numbers):
            raise CSVDataError(f"{path}: row {line} contains NaN or inf")
        values.append(numbers)
    data = np.array(values, dtype=np.float64)
    return data[:, :-1], data[:, -1]
