"""Tests for generate_expressions (synthetic training data) and progress."""

import io
import math
import pickle
from collections import Counter

import numpy as np
import pytest

import file_io
import generate_expressions as ge
from expression_parser import parse
from expressions import evaluate, is_variable, variables_used
from generate_expressions import ExpressionParams, GenerationError, generate_expressions
from operators import BINARY_OPERATORS, UNARY_OPERATORS
from problems import matches_benchmark
from progress import Progress, format_seconds
from random_stream import RandomStream, make_generator

VOLATILE_METADATA = ("command", "timestamp", "run")  # differ between runs by design


@pytest.fixture(scope="module")
def default_run():
    return generate_expressions(120, seed=3)


@pytest.fixture(scope="module")
def full_run():
    params = ExpressionParams(binary_ops=("+", "-", "*", "/"), unary_ops=("sin", "exp", "log", "sqrt"))
    return generate_expressions(80, params, seed=4)


def _check_records(records):
    assert [record["id"] for record in records] == list(range(len(records)))
    for record in records:
        expression = parse(record["expression"])
        X, y, n_vars = record["X"], record["y"], record["n_vars"]
        assert X.dtype == np.float32 and y.dtype == np.float32
        assert X.shape == (len(y), n_vars) and len(y) >= ge.MIN_POINTS
        assert variables_used(expression) == {f"x{i}" for i in range(n_vars)}
        y_eval = evaluate(expression, X).astype(np.float32)
        assert np.allclose(y_eval, y, rtol=1e-5, atol=1e-6)
        assert np.array_equal(y_eval, y)  # exact by construction
        assert np.all(np.isfinite(y)) and np.ptp(y) > 0


@pytest.mark.parametrize("run", ["default_run", "full_run"])
def test_records_parse_and_reproduce_y(run, request):
    records, _ = request.getfixturevalue(run)
    _check_records(records)


@pytest.mark.parametrize("run", ["default_run", "full_run"])
def test_no_duplicates_and_no_benchmark_leak(run, request):
    records, metadata = request.getfixturevalue(run)
    prints = [ge.fingerprint(parse(r["expression"]), r["n_vars"]) for r in records]
    assert len(set(prints)) == len(records)
    assert all(matches_benchmark(parse(r["expression"]), r["n_vars"]) is None for r in records)
    assert len({(r["expression"], r["n_vars"]) for r in records}) == len(records)
    assert metadata["n_candidates"] == len(records) + sum(metadata["rejections"].values())


def test_fingerprint_identifies_equivalent_forms():
    fingerprint = ge.fingerprint
    assert fingerprint(parse("x0 + x1"), 2) == fingerprint(parse("x1 + x0"), 2)
    assert fingerprint(parse("(x0 + x1) + x2"), 3) == fingerprint(parse("x0 + (x1 + x2)"), 3)
    assert fingerprint(parse("(x0 + 1) - 1 - x0 + x1"), 2) == fingerprint(parse("x1"), 2)
    assert fingerprint(parse("x0 * x1"), 2) != fingerprint(parse("x0 + x1"), 2)
    assert fingerprint(parse("x0 * x1"), 2) != fingerprint(parse("x0 * x1"), 3)


def test_unary_operators_only_when_asked(default_run, full_run):
    plain = [t for r in default_run[0] for t in parse(r["expression"])]
    assert not set(plain) & set(UNARY_OPERATORS)
    assert set(plain) & set(BINARY_OPERATORS) <= {"+", "-", "*"}
    full = Counter(t for r in full_run[0] for t in parse(r["expression"]))
    assert set(full) & set(UNARY_OPERATORS) == {"sin", "exp", "log", "sqrt"}


def test_metadata(default_run):
    records, metadata = default_run
    assert metadata["binary_operators"] == ["+", "-", "*"]
    assert metadata["unary_operators"] == [] and metadata["constants"] == [1.0]
    assert set(metadata["rejections"]) == set(ge.REJECTION_REASONS)
    assert metadata["rejections"]["duplicate"] > 0 and metadata["rejections"]["benchmark"] > 0
    assert metadata["seed"] == 3 and metadata["parameters"]["complexity"] == 0.5
    assert metadata["n_expressions"] == len(records) == 120
    assert metadata["run"]["workers"] == 1 and metadata["run"]["expressions_per_second"] > 0


def test_benchmark_equivalent_candidates_are_rejected():
    # One variable and one operator: x0 + 1.0, x0 * x0, x0 + x0 (= 2 x0), x0 * 1.0 ...
    # are benchmarks; x0 - 1.0 and 1.0 - x0 are the only other non-constant forms.
    params = ExpressionParams(max_vars=1, n_binary_ops=1)
    records, metadata = generate_expressions(2, params, seed=0)
    assert {r["expression"] for r in records} == {"(x0 - 1.0)", "(1.0 - x0)"}
    assert metadata["rejections"]["benchmark"] > 0
    assert metadata["rejections"]["constant_output"] > 0  # x0 - x0
    benchmark = next(c for c in (ge.generate_candidate(i, params, 0) for i in range(100))
                     if c.reason == "benchmark")
    assert matches_benchmark(benchmark.expression, 1) is not None


def test_allow_benchmark_keeps_benchmark_expressions():
    params = ExpressionParams(max_vars=1, n_binary_ops=1, allow_benchmark=True)
    records, metadata = generate_expressions(4, params, seed=0)
    assert metadata["rejections"]["benchmark"] == 0
    assert any(matches_benchmark(parse(r["expression"]), 1) for r in records)


def test_too_few_distinct_expressions_raises():
    params = ExpressionParams(max_vars=1, n_binary_ops=1)
    with pytest.raises(GenerationError, match="only 2 of 3"):
        generate_expressions(3, params, seed=0, max_candidates=200)


def test_fixed_binary_operator_count():
    records, _ = generate_expressions(40, ExpressionParams(n_binary_ops=3), seed=1)
    for record in records:
        tokens = parse(record["expression"])
        assert sum(token in BINARY_OPERATORS for token in tokens) == 3
        assert record["n_vars"] <= 4


def test_no_constants_when_list_is_empty():
    records, metadata = generate_expressions(60, ExpressionParams(constants=()), seed=2)
    assert metadata["constants"] == []
    for record in records:
        assert all(is_variable(t) or t in BINARY_OPERATORS for t in parse(record["expression"]))


def test_result_does_not_depend_on_chunking(default_run):
    records, metadata = generate_expressions(120, seed=3, chunk_size=7)
    assert pickle.dumps(records) == pickle.dumps(default_run[0])
    assert metadata["rejections"] == default_run[1]["rejections"]
    other, _ = generate_expressions(20, seed=4)
    assert [r["expression"] for r in other] != [r["expression"] for r in records[:20]]


def test_shapes_are_uniform():
    # Catalan(3) = 5 shapes with three operators, each with probability 1/5.
    stream = RandomStream(make_generator(0, 1))
    counts = Counter(tuple(ge.random_shape(stream, 3)) for _ in range(5000))
    assert len(counts) == 5
    assert all(abs(count - 1000) < 150 for count in counts.values())
    assert ge._tree_count(1, 10) == math.comb(20, 10) // 11  # Catalan(10)


def test_inputs_are_standardised():
    stream = RandomStream(make_generator(0, 2))
    X = ge.sample_inputs(stream, 150, 6)
    assert X.shape == (150, 6)
    assert np.allclose(X.mean(axis=0), 0, atol=1e-9) and np.allclose(X.std(axis=0), 1)
    rotation = ge.random_orthogonal(stream.generator, 3, 5)
    assert np.allclose(rotation @ rotation.transpose(0, 2, 1), np.eye(5))


def test_file_names():
    counts = (7, 1000, 2500, 10_000, 1_000_000)
    assert [file_io.format_count(n) for n in counts] == ["7", "1k", "2.5k", "10k", "1M"]
    name = ge.default_file_name(1000, ExpressionParams(), "20261123-073000")
    assert name == "arith_1k_c05_20261123-073000.pkl.gz"
    params = ExpressionParams(unary_ops=("sin",), complexity=1.0, n_binary_ops=4)
    assert ge.default_file_name(2500, params, "T") == "full_2.5k_c10_b4_T.pkl.gz"


# --------------------------------------------------------------------------
# CLI


def _load(path):
    return file_io.load(path, kind="expressions")


def _stable(metadata):
    return {key: value for key, value in metadata.items() if key not in VOLATILE_METADATA}


def test_worker_count_does_not_change_the_file(tmp_path, capsys):
    # Metadata holds the command, a timestamp and timings, so the records and the
    # rest of the metadata are compared rather than the file bytes.
    common = ["--n_expressions", "300", "--seed", "5", "--max_vars", "4"]
    ge.main([*common, "--workers", "1", "--output", str(tmp_path / "one.pkl.gz")])
    ge.main([*common, "--workers", "2", "--output", str(tmp_path / "two.pkl.gz")])
    one, two = _load(tmp_path / "one.pkl.gz"), _load(tmp_path / "two.pkl.gz")
    assert pickle.dumps(one.records) == pickle.dumps(two.records)
    assert _stable(one.metadata) == _stable(two.metadata)
    assert two.metadata["run"]["workers"] == 2
    assert "accepted 300 of" in capsys.readouterr().out
    _check_records(two.records)


def test_cli_names_the_file_and_tags_the_operator_count(tmp_path, capsys):
    ge.main(["--n_expressions", "30", "--n_binary_ops", "2", "--constants", "",
             "--output_dir", str(tmp_path)])
    (path,) = tmp_path.glob("arith_30_c05_b2_*.pkl.gz")
    records, metadata = _load(path)
    assert len(records) == 30 and metadata["constants"] == []
    assert metadata["parameters"]["n_binary_ops"] == 2
    assert "generate_expressions.py --n_expressions 30 --n_binary_ops 2" in metadata["command"]
    assert str(path) in capsys.readouterr().out


def test_demo_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert ge.main(["--demo", "--output_dir", str(tmp_path / "out")]) == 0
    assert list(tmp_path.iterdir()) == []
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 and all("n_vars=" in line and "n_points=" in line for line in lines)


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    path = tmp_path / "data.pkl.gz"
    path.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as exit_info:
        ge.main(["--n_expressions", "5", "--output", str(path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "already exists" in error
    assert path.read_bytes() == b"keep me"
    ge.main(["--n_expressions", "5", "--output", str(path), "--overwrite"])
    assert len(_load(path).records) == 5


@pytest.mark.parametrize("flags", [["--binary_ops", "+,^"], ["--unary_ops", "sin,foo"],
                                   ["--constants", "1,a"], ["--complexity", "0"]])
def test_bad_arguments_exit_2_with_one_line(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ge.main([*flags, "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_too_few_distinct_expressions(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ge.main(["--n_expressions", "3", "--max_vars", "1", "--n_binary_ops", "1",
                 "--max_candidates", "200", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: only 2 of 3 expressions")
    assert list(tmp_path.iterdir()) == []


def test_operator_aliases_and_lists():
    assert ge.parse_operators("add, mul,,-") == ("+", "*", "-")
    assert ge.parse_constants("") == () and ge.parse_constants("1, -2.5") == (1.0, -2.5)


# --------------------------------------------------------------------------
# progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_is_silent_off_terminal_until_close():
    stream, clock = io.StringIO(), _Clock()
    bar = Progress(1000, "gen", stream=stream, clock=clock)
    clock.now = 2.0
    bar.update(400)
    assert stream.getvalue() == ""
    assert bar.line() == "gen: 40% 400/1000 [00:02<00:03, 200.0/s]"
    bar.close()
    bar.close()
    assert stream.getvalue() == "gen: 40% 400/1000 [00:02<00:03, 200.0/s]\n"


def test_progress_off_terminal_writes_a_line_a_minute():
    """A log file (a Slurm job's output) shows progress and ETA while the work runs, one line per minute."""
    stream, clock = io.StringIO(), _Clock()
    with Progress(1000, "gen", stream=stream, clock=clock) as bar:
        for step in range(1, 151):  # one unit a second
            clock.now = float(step)
            bar.update()
        assert stream.getvalue().splitlines() == ["gen: 6% 60/1000 [01:00<15:40, 1.0/s]",
                                                  "gen: 12% 120/1000 [02:00<14:40, 1.0/s]"]
    assert stream.getvalue().splitlines()[-1] == "gen: 15% 150/1000 [02:30<14:10, 1.0/s]"
    assert "\r" not in stream.getvalue()


def test_progress_redraws_a_terminal_at_most_five_times_a_second():
    stream, clock = _Terminal(), _Clock()
    with Progress(100, "gen", stream=stream, clock=clock) as bar:
        for step in range(100):
            clock.now = step * 0.01  # one second in all
            bar.update()
    assert 5 <= stream.getvalue().count("\r") <= 7  # ~5 redraws and the final line
    assert stream.getvalue().endswith("100% 100/100 [00:01<00:00, 101.0/s]\n")


def test_progress_blanks_the_rest_of_a_longer_line():
    stream, clock = _Terminal(), _Clock()
    bar = Progress(None, "gen", stream=stream, clock=clock)
    clock.now = 1.0
    bar.update(100000)  # 'gen: 100000 [00:01, 100000.0/s]'
    clock.now = 2.0
    bar.update(-99990)
    bar.close()
    first, second, final = stream.getvalue().split("\r")[1:]
    assert len(second) == len(first) and second.startswith("gen: 10 [00:02, 5.0/s] ")
    assert final == "gen: 10 [00:02, 5.0/s]\n"


def test_progress_disabled_prints_nothing():
    stream = _Terminal()
    with Progress(10, "gen", stream=stream, disable=True) as bar:
        bar.update(10)
    assert stream.getvalue() == ""
    assert format_seconds(3725) == "1:02:05" and format_seconds(float("nan")) == "?"


def test_guarded_division_points_are_dropped_and_degenerate_formulas_rejected():
    X = np.random.default_rng(0).standard_normal((40, 2))
    # x0 / (x1 - x1) divides by exactly zero everywhere: rejected, never stored.
    degenerate = ("+", "x0", "/", "x0", "-", "x1", "x1")
    assert ge.evaluate_dataset(degenerate, X)[2] == "division_by_zero"
    # A denominator that is zero at some points only: those points are dropped.
    X[:5, 1] = 0.0
    X32, y32, reason = ge.evaluate_dataset(("/", "x0", "x1"), X)
    assert reason is None and len(y32) == 35 and np.all(X32[:, 1] != 0.0)


def test_many_workers_finish_and_match_one_worker():
    """More workers than cores: the pool shuts down (Pool.terminate deadlocked here with 16 workers
    while chunks were still queued; seen on the 16-core GPU machine and reproduced on 2 cores)."""
    import subprocess
    import sys

    code = ("import generate_expressions as g; r, m = g.generate_expressions(300, workers=16); "
            "print(len(r), r[-1]['expression'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=str(__import__("pathlib").Path(ge.__file__).parent))
    assert result.returncode == 0, result.stderr
    records, _ = generate_expressions(300, workers=1)
    assert result.stdout.split(None, 1) == ["300", records[-1]["expression"] + "\n"]


@pytest.mark.parametrize("flags, named", [
    (["--complexity", "inf"], "--complexity"), (["--complexity", "nan"], "complexity"),
    (["--max_vars", "1000"], "--max_vars"), (["--max_vars", str(ge.MAX_VARS + 1)], "--max_vars"),
    (["--seed", "-1"], "--seed"),
])
def test_unusable_values_exit_2_naming_the_flag(flags, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ge.main(["--n_expressions", "3", *flags, "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and named in error
    assert list(tmp_path.iterdir()) == []


def test_params_refuse_infinite_complexity_and_too_many_variables():
    with pytest.raises(ValueError, match="complexity must be finite"):
        ge.ExpressionParams(complexity=math.inf)
    with pytest.raises(ValueError, match=f"max_vars must be at most {ge.MAX_VARS}"):
        ge.ExpressionParams(max_vars=ge.MAX_VARS + 1)
    assert ge.ExpressionParams(max_vars=ge.MAX_VARS).max_vars == ge.MAX_VARS


def test_a_negative_seed_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="seed -1: must be a non-negative integer"):
        ge.generate_expressions(2, ge.ExpressionParams(), seed=-1, argv=[])


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_unwritable_output_fails_before_generating_in_one_line(where, tmp_path, capsys, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep")
    output = tmp_path / ("folder" if where == "folder" else "file/out.pkl.gz")
    monkeypatch.setattr(ge, "generate_expressions", lambda *a, **k: pytest.fail("generated before checking"))
    with pytest.raises(SystemExit) as exit_info:
        ge.main(["--n_expressions", "3", "--output", str(output), "--overwrite"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {output}: ") and error.count("\n") == 1 and ".tmp." not in error
    assert (tmp_path / "file").read_text() == "keep" and (tmp_path / "folder").is_dir()
