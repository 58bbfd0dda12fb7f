"""The neural path of simple_evaluation.py and neural_comparison.py, on a random-weight tiny checkpoint.

`tiny_checkpoint` (tests/conftest.py) is a tiny GPT-Neo saved like train.py
saves one; its proposals are mostly junk, which exercises the fallback path.
Budgets are a few generations. Input errors need no model and run anywhere.
"""

import json
import os
import subprocess
import sys

import pytest

import neural_comparison
import simple_evaluation
from cli_helpers import run_main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--population_size", "8", "--num_generations", "3", "--device", "cpu"]
TIMING_FIELDS = {"seconds", "seconds_per_generation", "model_seconds", "latency_seconds"}


def test_the_issues_acceptance_command(tiny_checkpoint, tmp_path):
    """`python simple_evaluation.py --methods basic,neural --checkpoint <tiny> --seeds 3`, small budget."""
    command = [sys.executable, "simple_evaluation.py", "--methods", "basic,neural", "--checkpoint", str(tiny_checkpoint),
               "--seeds", "3", *SMALL, "--batch_size", "16", "--output_dir", str(tmp_path), "--quiet"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert (tmp_path / "evaluation.md").exists() and (tmp_path / "best_mse.png").exists()
    neural = [run for run in report["runs"] if run["method"] == "neural"]
    assert len(report["runs"]) == 30 and len(neural) == 15  # 5 harder problems x 3 seeds x 2 methods
    assert sorted({run["seed"] for run in neural}) == [0, 1, 2]
    for run in neural:
        assert 0.0 <= run["well_formed_rate"] <= 1.0 and run["n_proposals"] > 0
        assert run["n_neural"] <= run["n_proposals"]
        assert run["evaluations"] == 8 * (run["generations"] + 1)  # the same budget accounting as BasicSR
        assert len(run["best_mse_history"]) == run["generations"] + 1
    rows = {row["method"]: row for row in report["totals"]}
    assert rows["neural"]["well_formed_rate"] is not None and rows["basic"]["well_formed_rate"] is None
    assert report["settings"]["neural"]["checkpoint"] == str(tiny_checkpoint)
    assert report["methods"]["neural"]["runs"] == 15
    # The batched call's wall time is shared among its runs: the table's s/run and ms/gen measure cost.
    wall = report["methods"]["neural"]["seconds"]
    assert sum(run["seconds"] for run in neural) == pytest.approx(wall)
    assert rows["neural"]["mean_seconds"] == pytest.approx(report["methods"]["neural"]["seconds_per_run"])
    assert rows["neural"]["seconds_per_generation"] == pytest.approx(wall / sum(run["generations"] for run in neural))
    assert all(run["latency_seconds"] <= wall for run in neural)
    assert "neural: solved" in result.stdout


def test_batched_runs_equal_single_runs_under_greedy_decoding(tiny_checkpoint, tmp_path):
    """simple_evaluation's batched records = neural_comparison's single NeuralSR records (top_k 1)."""
    greedy = [*SMALL, "--top_k", "1", "--checkpoint", str(tiny_checkpoint)]
    code, _, err = run_main(simple_evaluation, ["--methods", "neural", "--problems", "mixed_polynomial",
                                                 "--seeds", "2", *greedy, "--output_dir", str(tmp_path), "--quiet"])
    assert code == 0, err
    batched = json.loads((tmp_path / "evaluation.json").read_text())["runs"]
    for seed, record in enumerate(batched):
        path = tmp_path / f"single_{seed}.json"
        code, _, err = run_main(neural_comparison, ["--problem", "mixed_polynomial", "--seed", str(seed),
                                                     *greedy, "--json", str(path)])
        assert code == 0, err
        single = json.loads(path.read_text())["runs"][1]
        drop = lambda run: {k: v for k, v in run.items() if k not in TIMING_FIELDS}
        assert drop(single) == drop(record)


def test_neural_comparison_prints_both_searches_side_by_side(tiny_checkpoint, tmp_path):
    path = tmp_path / "head_to_head.json"
    code, out, err = run_main(neural_comparison, ["--problem", "surface_area_sphere_approx", "--checkpoint",
                                                   str(tiny_checkpoint), *SMALL, "--every", "2", "--json", str(path)])
    assert code == 0, err
    assert "BasicSR best MSE" in out and "NeuralSR best MSE" in out
    assert "well-formed" in out and "fallbacks" in out and "expression" in out
    report = json.loads(path.read_text())
    assert [run["method"] for run in report["runs"]] == ["basic", "neural"]
    assert report["runs"][0]["seed"] == report["runs"][1]["seed"] == 0
    assert report["settings"]["budget"]["evaluations"] == 8 * 4


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "no/such/checkpoint"], "checkpoint no/such/checkpoint: not found"),
    (["--problem", "harder"], "--problem takes one problem"),
    (["--problem", "no_such_problem"], "unknown problem"),
    (["--every", "0"], "--every"),
])
def test_neural_comparison_bad_input_exits_2_with_one_line(tmp_path, argv, message):
    argv = argv if "--checkpoint" in argv else [*argv, "--checkpoint", str(tmp_path)]
    code, out, err = run_main(neural_comparison, argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0, got inf"),
    (["--top_p", "nan"], "--top_p must be in (0, 1] (1: off), got nan"),
    (["--top_k", "-1"], "--top_k must be >= 0 (0: off), got -1"),
    (["--neural_time_limit", "nan"], "--neural_time_limit must be a finite number > 0 seconds, got nan"),
    (["--neural_time_limit", "inf"], "--neural_time_limit must be a finite number > 0 seconds, got inf"),
])
def test_non_finite_sampling_and_time_flags_are_one_line_errors(tiny_checkpoint, tmp_path, flags, message):
    output_dir = tmp_path / "out"
    for module, argv in ((simple_evaluation, ["--methods", "neural", "--problems", "quadratic", "--seeds", "1",
                                              "--output_dir", str(output_dir)]),
                         (neural_comparison, ["--problem", "quadratic"])):
        code, out, err = run_main(module, [*argv, "--checkpoint", str(tiny_checkpoint), *SMALL, *flags])
        assert code == 2 and out == "" and err.strip().splitlines() == [f"error: {message}"], (module, err)
    assert not output_dir.exists()


@pytest.mark.parametrize("damage, what", [("truncated", "model.safetensors"), ("config_type", "hidden_size")])
def test_a_damaged_checkpoint_fails_before_any_run(tiny_checkpoint, tmp_path, damage, what):
    from test_neural_sr import damaged_checkpoint

    folder = damaged_checkpoint(tiny_checkpoint, tmp_path / "damaged", damage)
    output_dir = tmp_path / "out"
    for module, argv in ((simple_evaluation, ["--methods", "basic,neural", "--problems", "quadratic", "--seeds", "1",
                                              "--output_dir", str(output_dir)]),
                         (neural_comparison, ["--problem", "quadratic"])):
        code, out, err = run_main(module, [*argv, "--checkpoint", str(folder), *SMALL])
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, (module, err)  # out == "": not even the BasicSR runs
        assert lines[0].startswith(f"error: checkpoint {folder}: cannot load (") and what in lines[0]
    assert not output_dir.exists()


def test_output_locations_are_checked_before_any_run(tiny_checkpoint, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for output_dir in (a_file, a_file / "out"):
        code, out, err = run_main(simple_evaluation, ["--methods", "basic", "--problems", "quadratic", "--seeds", "1",
                                                      *SMALL, "--output_dir", str(output_dir)])
        assert code == 2 and out == "" and err.strip().splitlines() == [
            f"error: --output_dir {output_dir}: cannot create the folder (a file is in the way)"]
    for target, message in ((a_file / "x.json", "cannot be written (a file is in the way of its folder)"),
                            (tmp_path, "is a folder, not a file")):
        code, out, err = run_main(neural_comparison, ["--problem", "quadratic", "--checkpoint", str(tiny_checkpoint),
                                                      *SMALL, "--json", str(target)])
        assert code == 2 and out == "" and err.strip().splitlines() == [f"error: --json {target}: {message}"]


def test_neural_comparison_rejects_a_negative_seed(tiny_checkpoint):
    code, out, err = run_main(neural_comparison, ["--problem", "quadratic", "--checkpoint", str(tiny_checkpoint),
                                                  *SMALL, "--seed", "-1"])
    assert code == 2 and out == "" and err.strip().splitlines() == ["error: --seed must be a non-negative integer, got -1"]
