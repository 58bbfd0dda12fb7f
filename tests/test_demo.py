"""demo.py (`make demo`): BasicSR and NeuralSR with the shipped checkpoint, side by side."""

from pathlib import Path

import pytest

import demo
from cli_helpers import run_main
from test_neural_sr import damaged_checkpoint

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "neuralsr-tiny"


def test_demo_prints_both_methods_side_by_side(capsys):
    assert demo.main(["--problems", "quadratic,cubic", "--num_generations", "2"]) == 0
    out = capsys.readouterr().out
    assert "| BasicSR" in out and "| NeuralSR" in out and "models/neuralsr-tiny on cpu" in out
    assert "quadratic" in out and "cubic" in out
    assert "BasicSR: solved" in out and "NeuralSR: solved" in out and "well-formed proposals" in out


def test_demo_input_errors_are_one_line(tmp_path, capsys):
    assert demo.main(["--checkpoint", str(tmp_path / "none")]) == 2
    assert "none: not found" in capsys.readouterr().err
    assert demo.main(["--methods", "basic,magic"]) == 2
    assert "unknown method(s) magic" in capsys.readouterr().err
    assert demo.main(["--problems", "no_such_problem", "--methods", "basic"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--population_size", "0"], "population_size must be an integer >= 2, got 0"),
    (["--num_generations", "-1"], "num_generations must be an integer >= 0, got -1"),
])
def test_demo_bad_numbers_are_one_line_errors_before_any_run(argv, message):
    code, out, err = run_main(demo, ["--methods", "basic", *argv])
    assert code == 2 and out == "" and err.strip().splitlines() == [f"error: {message}"]


@pytest.mark.parametrize("damage, what", [("truncated", "model.safetensors"), ("config_type", "hidden_size")])
def test_demo_damaged_checkpoint_is_one_line(tmp_path, damage, what):
    folder = damaged_checkpoint(SHIPPED, tmp_path / "damaged", damage)
    code, out, err = run_main(demo, ["--checkpoint", str(folder), "--problems", "quadratic", "--num_generations", "1"])
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"error: checkpoint {folder}: cannot load (") and what in lines[0]
