"""demo.py (`make demo`): BasicSR and NeuralSR with the shipped checkpoint, side by side."""

import demo


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
