"""inspect_dataset.py on expressions, traces and JSONL files, and on bad input."""

import json

import numpy as np
import pytest

import expressions as ex
import file_io
import generate_traces as gt
import inspect_dataset
from expression_parser import parse

FORMULAS = ["x0 * x0 + x1", "x0 + 1.0", "x0 / (x1 + 2.0)", "x1 - x0 * x0 * x0"]


@pytest.fixture(scope="module")
def expressions_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    records = []
    for i, formula in enumerate(FORMULAS):
        X = rng.uniform(-2, 2, size=(20 + 10 * i, 2)).astype(np.float32)
        y = ex.evaluate(parse(formula), X).astype(np.float32)
        records.append({"id": i, "expression": ex.to_string(parse(formula)), "n_vars": 2, "X": X, "y": y})
    metadata = {**file_io.make_metadata({"n_expressions": 4}, 5), "constants": [1.0]}
    return file_io.save(tmp_path_factory.mktemp("inspect") / "expr.pkl.gz", "expressions", records, metadata)


def inspect(capsys, *args) -> tuple[int, str, str]:
    try:
        status = inspect_dataset.main([str(a) for a in args])
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_expressions_file(expressions_file, capsys):
    status, out, _ = inspect(capsys, expressions_file, "--show", "2")
    assert status == 0
    assert "kind: expressions  version 1" in out and "seed: 5" in out and "code_version:" in out
    assert "expressions: 4" in out and "n_vars: 2: 4" in out
    assert "size (nodes): min 3  median 5  mean 5  max 7" in out
    assert "operators: +: 3, *: 3, /: 1, -: 1" in out
    assert "points per expression: min 20  median 35  mean 35  max 50" in out
    assert "  id 1  n_vars 2  points 30  (x0 + 1.0)" in out and "id 2 " not in out


def test_traces_file(expressions_file, tmp_path, capsys):
    output = tmp_path / "traces.pkl.gz"
    assert gt.main(["--expressions_file", str(expressions_file), "--num_generations", "5",
                    "--population_size", "10", "--quiet", "--output", str(output)]) == 0
    capsys.readouterr()
    status, out, _ = inspect(capsys, output, "--show", "1")
    assert status == 0
    assert "kind: traces  version 1" in out and "command: python generate_traces.py" in out
    assert "traces: 4\n" in out and "solved: " in out and "generations run:" in out
    assert "  5 | " in out  # the histogram row of runs with 5 generations
    assert "final MSE: mean " in out and "init: 40" in out and "population size: 10: 4" in out
    assert "  id 0  solved " in out and "target ((x0 * x0) + x1)" in out

    traces, metadata = file_io.load(output)
    partial = tmp_path / "partial.pkl.gz"
    file_io.save(partial, "traces", traces[:1], {**metadata, "complete": False})
    assert "traces: 1  (partial file: run incomplete)" in inspect(capsys, partial)[1]


def test_jsonl_with_sidecar_metadata(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    rows = [{"context": "generation: 1", "population": "x0 <FITNESS>-1.5", "target": "x0", "expression_id": 3},
            {"context": "generation: 22", "population": "x1 <FITNESS>-2.0", "target": "(x0 + x1)", "expression_id": 3},
            {"context": "generation: 3", "population": "x0", "target": "x1", "expression_id": 8}]
    file_io.write_jsonl(path, rows)
    (tmp_path / "train.meta.json").write_text(json.dumps({"command": "python one_step_conversion.py", "seed": 1}))
    status, out, _ = inspect(capsys, path, "--show", "1")
    assert status == 0
    assert "kind: jsonl" in out and "lines: 3" in out
    assert "keys: context: 3, population: 3, target: 3, expression_id: 3" in out
    assert "command: python one_step_conversion.py" in out
    assert "context length (chars): min 13  median 13  mean 13.33  max 14" in out
    assert "target length (chars): min 2  median 2  mean 4.333  max 9" in out
    assert "distinct expression_ids: 2" in out and "'target': x0" in out


def test_text_histogram_shapes():
    few = inspect_dataset.text_histogram([5, 5, 7], width=4)
    assert few == ["  5 | #### 2", "  7 | ##   1"]
    many = inspect_dataset.text_histogram(range(100), bins=4, width=4)
    assert len(many) == 4 and many[0].startswith("   0-24 |")


@pytest.mark.parametrize("content,name", [(b"garbage\x00\x01", "junk.bin"), (b'{"a": 1}\nnot json\n', "bad.jsonl"),
                                          (None, "missing.pkl.gz")])
def test_bad_files_exit_2_with_one_line(content, name, tmp_path, capsys):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    status, out, err = inspect(capsys, path)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
