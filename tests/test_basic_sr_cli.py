"""Tests for the BasicSR command line (`python basic_sr.py ...`, `basic_sr.main(argv)`)."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

import basic_sr
import problems

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--population_size", "20", "--num_generations", "200", "--seed", "0", "--quiet"]


def _run_main(capsys, argv):
    """(exit code, stdout, stderr) of basic_sr.main(argv), argparse exits included."""
    try:
        code = basic_sr.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write(path, text):
    path.write_text(text)
    return str(path)


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------
# Benchmark problems


def test_pythagorean_seed_0_is_solved_in_process(capsys):
    code, out, err = _run_main(
        capsys,
        ["--problem", "pythagorean_3d", "--population_size", "20", "--num_generations", "1000", "--seed", "0", "--quiet"],
    )
    assert code == 0, err
    assert "problem     pythagorean_3d  solved: True" in out
    assert "gen " not in out  # --quiet: no progress lines
    assert "expression" in out and "mse" in out and "generations" in out


def test_pythagorean_seed_0_is_solved_via_subprocess():
    result = subprocess.run(
        [sys.executable, "basic_sr.py", "--problem", "pythagorean_3d", "--population_size", "20",
         "--num_generations", "1000", "--seed", "0", "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "solved: True" in result.stdout
    assert result.stderr == ""


def test_verbose_prints_progress(capsys):
    code, out, _ = _run_main(capsys, ["--problem", "bivariate_sum", "--population_size", "10", "--num_generations", "20", "--seed", "1"])
    assert code == 0
    assert "gen     0" in out


def test_unknown_problem_exit_code(capsys):
    code, out, err = _run_main(capsys, ["--problem", "nope"])
    assert code == 2
    assert out == ""
    assert _one_error_line(err).startswith("error:")


def test_unknown_problem_lists_problem_names(capsys):
    code, _, err = _run_main(capsys, ["--problem", "nope"])
    assert code == 2
    line = _one_error_line(err)
    assert "nope" in line
    for name in problems.PROBLEMS:
        assert name in line


def test_list_problems(capsys):
    code, out, err = _run_main(capsys, ["--list_problems"])
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 22  # header + 21 rows
    for name in problems.PROBLEMS:
        assert name in out


def test_problem_with_n_points_and_unary_operators(capsys, tmp_path):
    path = tmp_path / "summary.json"
    code, out, err = _run_main(
        capsys,
        ["--problem", "quadratic", "--n_points", "30", "--data_seed", "3", "--unary_operators", "sin,cos",
         "--constants", "1.0,2.0", "--binary_operators", "+,*", "--json", str(path), *FAST],
    )
    assert code == 0, err
    summary = json.loads(path.read_text())
    assert summary["params"]["unary_operators"] == ["sin", "cos"]
    assert summary["params"]["binary_operators"] == ["+", "*"]
    assert summary["params"]["constants"] == [1.0, 2.0]
    assert summary["problem"] == "quadratic"
    assert summary["metadata"]["command"].endswith("basic_sr.py --problem quadratic " + shlex.join(
        ["--n_points", "30", "--data_seed", "3", "--unary_operators", "sin,cos", "--constants", "1.0,2.0",
         "--binary_operators", "+,*", "--json", str(path), *FAST]))
    assert {"code_version", "timestamp", "parameters"} <= summary["metadata"].keys()


def test_json_in_an_unwritable_place_fails_before_the_search(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, out, err = _run_main(capsys, ["--problem", "quadratic", "--json", str(blocker / "out.json"), *FAST])
    assert code == 2 and "--json" in _one_error_line(err) and "a_file" in err
    assert "expression" not in out  # no search was run


# --------------------------------------------------------------------------
# CSV data


def test_good_csv_with_header_fits_and_writes_json(capsys, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(-2.0, 2.0, size=(30, 2))
    y = X[:, 0] * X[:, 1]
    rows = ["x0,x1,y"] + [",".join(repr(float(v)) for v in (a, b, c)) for (a, b), c in zip(X, y)]
    csv_path = _write(tmp_path / "data.csv", "\n".join(rows) + "\n")
    json_path = tmp_path / "out.json"
    code, out, err = _run_main(capsys, ["--data", csv_path, "--json", str(json_path), *FAST])
    assert code == 0, err
    assert err == ""
    assert "expression" in out and "simplified" in out and "generations" in out
    assert "solved" not in out  # no benchmark problem
    summary = json.loads(json_path.read_text())
    for key in ("expression", "mse", "generations", "evaluations", "size", "simplified", "params"):
        assert key in summary
    assert summary["expression"] in out
    assert summary["mse"] <= 1e-20  # x0 * x1 is easy
    assert isinstance(summary["generations"], int)
    assert summary["evaluations"] == 20 * (summary["generations"] + 1)
    assert "problem" not in summary


def test_good_csv_without_header(capsys, tmp_path):
    csv_path = _write(tmp_path / "plain.csv", "1,2\n2,4\n3,6\n4,8\n")
    code, out, err = _run_main(capsys, ["--data", csv_path, *FAST])
    assert code == 0, err
    assert "expression" in out


@pytest.mark.parametrize(
    "name, text, row",
    [
        ("nan.csv", "x0,y\n1,2\n2,nan\n3,4\n", "row 3"),
        ("inf.csv", "1,2\n2,3\n3,inf\n", "row 3"),
        ("text.csv", "x0,y\n1,2\n2,abc\n3,4\n", "row 3"),
        ("ragged.csv", "x0,x1,y\n1,2,3\n4,5\n6,7,8\n", "row 3"),
    ],
)
def test_bad_csv_rows_exit_2_naming_file_and_row(capsys, tmp_path, name, text, row):
    csv_path = _write(tmp_path / name, text)
    code, out, err = _run_main(capsys, ["--data", csv_path, *FAST])
    assert code == 2
    line = _one_error_line(err)
    assert csv_path in line
    assert row in line
    assert "expression" not in out


@pytest.mark.parametrize(
    "name, text",
    [
        ("short.csv", "x0,y\n1,2\n2,3\n"),
        ("empty.csv", ""),
        ("header_only.csv", "x0,y\n"),
        ("one_column.csv", "1\n2\n3\n4\n"),
    ],
)
def test_unusable_csv_exit_2(capsys, tmp_path, name, text):
    csv_path = _write(tmp_path / name, text)
    code, _, err = _run_main(capsys, ["--data", csv_path, *FAST])
    assert code == 2
    assert csv_path in _one_error_line(err)


def test_missing_csv_exit_2(capsys, tmp_path):
    missing = str(tmp_path / "does_not_exist.csv")
    code, _, err = _run_main(capsys, ["--data", missing, *FAST])
    assert code == 2
    assert missing in _one_error_line(err)


def test_bad_csv_via_subprocess(tmp_path):
    csv_path = _write(tmp_path / "nan.csv", "x0,y\n1,2\n2,nan\n3,4\n")
    result = subprocess.run(
        [sys.executable, "basic_sr.py", "--data", csv_path, "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert csv_path in line and "row 3" in line
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--population_size", "1"], "population_size"),
        (["--population_size", "5", "--tournament_size", "6"], "tournament_size"),
        (["--crossover_prob", "2"], "crossover_prob"),
        (["--binary_operators", "+,^"], "binary_operators"),
        (["--unary_operators", "tan"], "unary_operators"),
        (["--max_size", "0"], "max_size"),
        (["--time_limit", "0"], "time_limit"),
    ],
)
def test_invalid_hyperparameter_exit_2_one_line(capsys, argv, name):
    code, out, err = _run_main(capsys, ["--problem", "quadratic", "--quiet", *argv])
    assert code == 2
    line = _one_error_line(err)
    assert line.startswith("error:") and name in line
    assert out == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
        (["--data_seed", "-3"], "--data_seed must be a non-negative integer, got -3"),
        (["--n_points", "0"], "--n_points must be at least 2, got 0"),
        (["--n_points", "1"], "--n_points must be at least 2, got 1"),
        (["--n_points", "-1"], "--n_points must be at least 2, got -1"),
    ],
)
def test_bad_seed_or_n_points_exit_2_one_line(capsys, argv, message):
    code, out, err = _run_main(capsys, ["--problem", "pythagorean_3d", "--quiet", *argv])
    assert code == 2 and out == ""
    assert _one_error_line(err) == f"error: {message}"


def test_two_points_are_enough(capsys):
    code, out, err = _run_main(capsys, ["--problem", "pythagorean_3d", "--n_points", "2", "--num_generations", "1",
                                        "--seed", "0", "--quiet"])
    assert code == 0, err


@pytest.mark.parametrize(
    "argv",
    [
        ["--population_size", "ten"],
        ["--constants", "1,abc"],
        ["--problem", "quadratic", "--data", "x.csv"],
        ["--no_such_flag"],
    ],
)
def test_argparse_errors_exit_2(capsys, argv):
    code, out, err = _run_main(capsys, argv)
    assert code == 2
    assert "error" in err and out == ""


def test_help_mentions_every_flag(capsys):
    code, out, _ = _run_main(capsys, ["--help"])
    assert code == 0
    flags = [s for action in basic_sr.build_arg_parser()._actions for s in action.option_strings if s.startswith("--")]
    assert len(flags) >= 20
    for flag in flags:
        assert flag in out, flag
    # Every estimator parameter except verbose (set by --quiet) has a flag.
    for name in basic_sr.BasicSR._param_names():
        if name not in ("verbose", "collect_trajectory"):
            assert f"--{name}" in out, name


def test_cli_defaults_match_estimator_defaults():
    args = basic_sr.build_arg_parser().parse_args([])
    defaults = basic_sr.BasicSR().get_params()
    for name, value in defaults.items():
        if hasattr(args, name):
            parsed = getattr(args, name)
            assert (tuple(parsed) if isinstance(value, tuple) else parsed) == value, name
