"""Tests for simple_evaluation.py and its shared core (evaluation.py, evaluation_report.py, peers.py).

Tiny budgets throughout. The neural path is in test_simple_evaluation_neural.py.
"""

import json
import statistics

import numpy as np
import pytest

import evaluation
import problems
import neural_comparison
import peers
import simple_evaluation
from cli_helpers import run_main
from evaluation import Budget, aggregate, generations_to_solve, parse_seeds, resolve_tasks
from expression_parser import parse

GPLEARN = peers.available("gplearn")
METHODS = ["basic"] + (["gplearn"] if GPLEARN else [])
PROBLEMS = "pythagorean_3d,surface_area_sphere_approx"
TINY = ["--population_size", "10", "--num_generations", "40", "--gplearn_population", "100"]
TIMING_FIELDS = {"seconds", "seconds_per_generation"}
RUN_FIELDS = {
    "method", "problem", "seed", "solved", "expression", "size", "mse", "generations", "evaluations",
    "population_size", "generations_to_solve", "evaluations_to_solve", "seconds", "seconds_per_generation",
    "best_mse_history",
}
AGGREGATE_FIELDS = {
    "method", "problem", "runs", "solved", "solve_rate", "median_generations_to_solve",
    "median_evaluations_to_solve", "mean_mse", "median_mse", "mean_seconds", "seconds_per_generation",
    "mean_size", "median_size", "well_formed_rate",
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One small CLI study: basic (+ gplearn) x 2 problems x 2 seeds."""
    output_dir = tmp_path_factory.mktemp("study")
    argv = ["--methods", ",".join(METHODS), "--problems", PROBLEMS, "--seeds", "2", *TINY,
            "--output_dir", str(output_dir), "--quiet"]
    code, out, err = run_main(simple_evaluation, argv)
    assert code == 0, err
    report = json.loads((output_dir / "evaluation.json").read_text())
    return {"dir": output_dir, "report": report, "stdout": out}


def test_study_writes_json_markdown_and_png_with_the_documented_fields(study):
    report = study["report"]
    assert report["format"] == evaluation.REPORT_FORMAT and report["version"] == evaluation.REPORT_VERSION
    assert {"command", "parameters", "code_version", "seed", "timestamp"} <= set(report["metadata"])
    assert "simple_evaluation.py --methods" in report["metadata"]["command"]
    assert report["metadata"]["seed"] == [0, 1]
    settings = report["settings"]
    assert settings["methods"] == METHODS and settings["seeds"] == [0, 1]
    assert settings["problems"] == PROBLEMS.split(",")
    assert settings["budget"] == {"population_size": 10, "num_generations": 40, "max_size": 25, "max_depth": 10,
                                  "evaluations": 410}
    assert len(report["runs"]) == len(METHODS) * 2 * 2
    assert all(RUN_FIELDS <= set(run) for run in report["runs"])
    assert [(r["method"], r["problem"], r["seed"]) for r in report["runs"]] == [
        (m, p, s) for m in METHODS for p in PROBLEMS.split(",") for s in (0, 1)]
    assert len(report["aggregates"]) == len(METHODS) * 2 and len(report["totals"]) == len(METHODS)
    assert all(set(row) == AGGREGATE_FIELDS for row in report["aggregates"] + report["totals"])
    assert list(report["methods"]) == METHODS
    assert all(set(info) == {"runs", "seconds", "seconds_per_run", "timing"} for info in report["methods"].values())
    markdown = (study["dir"] / "evaluation.md").read_text()
    assert "| problem | method | solved |" in markdown and "pythagorean_3d" in markdown
    assert "| problem | method | solved |" in study["stdout"]
    assert (study["dir"] / "best_mse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_records_are_consistent(study):
    for run in study["report"]["runs"]:
        history = run["best_mse_history"]
        assert history[-1] == run["mse"]
        if run["method"] == "basic":
            assert run["evaluations"] == 10 * (run["generations"] + 1)  # generation 0 is scored too
            assert len(history) == run["generations"] + 1
        else:  # gplearn: 100 x round(410 / 100) = 4 generations, fewer after its early stop
            assert run["population_size"] == 100 and len(history) == run["generations"] <= 4
            assert run["evaluations"] == 100 * run["generations"]
            assert {"solved_own_semantics", "native_expression", "parse_error"} <= set(run)
        if run["solved"] and run["method"] == "basic":  # counted by BasicSR (restarts score extra neighbours)
            at_least = run["population_size"] * (run["generations_to_solve"] + 1)
            assert at_least <= run["evaluations_to_solve"] <= run["evaluations"]
        elif run["solved"]:
            assert run["evaluations_to_solve"] == run["population_size"] * (run["generations_to_solve"] + 1)
        else:
            assert run["generations_to_solve"] is None
        if run["expression"] is not None:
            assert run["size"] == len(parse(run["expression"]))


def test_aggregates_match_the_run_records(study):
    report = study["report"]
    for row in report["aggregates"] + report["totals"]:
        runs = [r for r in report["runs"] if r["method"] == row["method"]
                and row["problem"] in (r["problem"], evaluation.ALL_PROBLEMS)]
        solved = [r for r in runs if r["solved"]]
        assert row["runs"] == len(runs) and row["solved"] == len(solved)
        to_solve = [r["generations_to_solve"] for r in solved]
        assert row["median_generations_to_solve"] == (statistics.median(to_solve) if to_solve else None)
        assert row["median_mse"] == pytest.approx(statistics.median(r["mse"] for r in runs))
        assert row["mean_mse"] == pytest.approx(statistics.fmean(r["mse"] for r in runs))
        assert row["median_size"] == statistics.median(r["size"] for r in runs)
        assert row["seconds_per_generation"] == pytest.approx(
            sum(r["seconds"] for r in runs) / sum(r["generations"] for r in runs))
        assert row["well_formed_rate"] is None


def test_aggregates_on_a_hand_checked_case():
    def run(method, problem, solved, to_solve, mse, seconds, generations, size, **extra):
        return {"method": method, "problem": problem, "solved": solved, "generations_to_solve": to_solve,
                "evaluations_to_solve": None if to_solve is None else 20 * (to_solve + 1), "mse": mse,
                "seconds": seconds, "generations": generations, "size": size, **extra}

    records = [
        run("basic", "a", True, 10, 0.0, 1.0, 10, 5),
        run("basic", "a", True, 21, 1e-20, 2.0, 21, 7),
        run("basic", "a", False, None, 4.0, 3.0, 100, 9),
        run("basic", "b", False, None, 2.0, 4.0, 100, 11),
        run("neural", "a", False, None, 1.0, 5.0, 50, 3, well_formed_rate=0.5, n_proposals=100),
        run("neural", "a", True, 30, 0.0, 5.0, 30, 5, well_formed_rate=1.0, n_proposals=300),
    ]
    per_problem, totals = aggregate(records)
    basic_a = per_problem[0]
    assert (basic_a["method"], basic_a["problem"], basic_a["runs"], basic_a["solved"]) == ("basic", "a", 3, 2)
    assert basic_a["solve_rate"] == pytest.approx(2 / 3)
    assert basic_a["median_generations_to_solve"] == 15.5  # median of 10 and 21
    assert basic_a["median_evaluations_to_solve"] == 330  # median of 220 and 440
    assert basic_a["median_mse"] == 1e-20 and basic_a["mean_mse"] == pytest.approx(4.0 / 3)
    assert basic_a["mean_seconds"] == 2.0 and basic_a["seconds_per_generation"] == pytest.approx(6.0 / 131)
    assert basic_a["median_size"] == 7 and basic_a["mean_size"] == 7
    assert basic_a["well_formed_rate"] is None
    neural_a = per_problem[2]
    assert neural_a["well_formed_rate"] == pytest.approx(350 / 400)  # pooled, not the mean rate 0.75
    basic_all = totals[0]
    assert (basic_all["problem"], basic_all["runs"], basic_all["solved"]) == (evaluation.ALL_PROBLEMS, 4, 2)
    assert basic_all["median_mse"] == 1.0  # median of 0, 1e-20, 2, 4
    assert basic_all["median_size"] == 8


def test_generations_to_solve_is_where_the_final_accuracy_was_first_reached():
    assert generations_to_solve([5.0, 1.0, 1e-20, 0.0], final_mse=0.0) == 2  # below the 3e-16 early stop
    assert generations_to_solve([5.0, 1e-12, 1e-12], final_mse=1e-12) == 1
    assert generations_to_solve([], final_mse=0.0) is None


def test_the_worker_count_does_not_change_results():
    plan = simple_evaluation.Plan(METHODS, resolve_tasks(PROBLEMS), [0, 1], Budget(10, 30), None, 100)

    def without_timing(report):
        runs = [{k: v for k, v in run.items() if k not in TIMING_FIELDS} for run in report["runs"]]
        solved = [(row["method"], row["problem"], row["solved"], row["median_mse"]) for row in report["aggregates"]]
        return runs, solved

    one = simple_evaluation.run_evaluation(plan, workers=1, progress=False)
    two = simple_evaluation.run_evaluation(plan, workers=2, progress=False)
    assert without_timing(one) == without_timing(two)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "basic,magic"], "unknown method 'magic'"),
    (["--problems", "no_such_problem"], "unknown problem 'no_such_problem'"),
    (["--seeds", "abc"], "--seeds"),
    (["--seeds", "0"], "--seeds"),
    (["--seeds", "1,1"], "--seeds"),
    (["--population_size", "1"], "population_size"),
    (["--workers", "0"], "--workers"),
    (["--methods", "neural", "--top_p", "0"], "--top_p"),
    (["--problems", "missing_data.csv"], "missing_data.csv"),
    (["--methods", "basic,neural", "--checkpoint", "no/such/checkpoint"], "checkpoint no/such/checkpoint: not found"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, argv, message):
    output_dir = tmp_path / "out"
    code, out, err = run_main(simple_evaluation, [*argv, "--output_dir", str(output_dir)])
    assert code == 2
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not output_dir.exists()


@pytest.mark.skipif(peers.available("operon"), reason="pyoperon is installed here")
def test_a_peer_that_is_not_installed_exits_2_with_one_line():
    code, _, err = run_main(simple_evaluation, ["--methods", "basic,operon"])
    assert code == 2 and err.count("\n") == 1 and "pip install pyoperon" in err


def test_help_explains_every_flag():
    for module in (simple_evaluation, neural_comparison):
        parser = module.build_parser()
        assert all(action.help for action in parser._actions), module.__name__
        code, out, _ = run_main(module, ["--help"])
        assert code == 0 and "--checkpoint" in out and "--num_generations" in out
    assert "--workers" in simple_evaluation.build_parser().format_help()


def test_seeds_are_a_count_or_a_list():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("4,7") == [4, 7]
    assert parse_seeds("7,") == [7]


def test_problems_by_name_tier_and_csv_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(0.5, 3.0, size=(30, 2))
    path = tmp_path / "my_data.csv"
    np.savetxt(path, np.column_stack([X, X[:, 0] * X[:, 1] + 1.0]), delimiter=",", header="x0,x1,y", comments="")
    tasks = resolve_tasks(f"harder,pythagorean_3d,{path}")
    assert [t.name for t in tasks][-1] == "my_data.csv" and len(tasks) == 6  # pythagorean_3d is in harder: once
    csv_task = tasks[-1]
    assert csv_task.solved(parse("x0 * x1 + 1.0")) and not csv_task.solved(parse("x0 * x1"))
    assert not csv_task.solved(None)
    X_seed_0, _ = csv_task.data(0)
    X_seed_1, _ = csv_task.data(1)
    assert np.array_equal(X_seed_0, X_seed_1)  # a CSV has one data set for every seed
    record = evaluation.run_basic(csv_task, 0, Budget(20, 200))
    assert record["problem"] == "my_data.csv" and record["solved"]


def test_gplearn_gets_an_equal_evaluation_budget():
    assert peers.gplearn_budget(Budget(20, 1000).evaluations) == (1000, 20)  # the study
    assert peers.gplearn_budget(410, 100) == (100, 4)
    assert peers.gplearn_budget(60) == (60, 1)  # tiny budgets shrink the population


@pytest.mark.skipif(not GPLEARN, reason="gplearn is not installed")
def test_gplearn_programs_are_written_in_ttsr_syntax():
    from gplearn.functions import add2, mul2

    assert peers.gplearn_program_to_text([add2, mul2, 0, 0, 1.5]) == "add(mul(x0, x0), 1.5)"
    expression, text, error = peers.gplearn_expression([add2, mul2, 0, 0, 1.5])
    assert expression == ("+", "*", "x0", "x0", 1.5) and error is None


def test_operon_runs_at_the_equal_budget():
    pytest.importorskip("pyoperon")
    task = resolve_tasks("surface_area_sphere_approx")[0]
    record = peers.run_operon(task, 0, Budget(10, 20))
    assert RUN_FIELDS <= set(record) and record["method"] == "operon"
    assert record["evaluations"] <= 10 * 21 and record["best_mse_history"] is None
    assert {"solved_own_semantics", "native_expression", "parse_error"} <= set(record)


def test_evaluations_to_solve_come_from_the_methods_own_count():
    # A restart at generation 2 scored 30 neighbours of the elite besides the population of 10.
    task = evaluation.Task("quadratic", problems.get_problem("quadratic"))
    history = [1.0, 0.5, 0.5, 1e-20]
    record = evaluation.make_record("basic", task, 0, expression=None, mse=1e-20, generations=3, evaluations=70,
                                    population_size=10, seconds=1.0, history=history, solved=True,
                                    evaluations_history=[10, 20, 60, 70])
    assert record["generations_to_solve"] == 3 and record["evaluations_to_solve"] == 70
    record = evaluation.make_record("gplearn", task, 0, expression=None, mse=1e-20, generations=3, evaluations=40,
                                    population_size=10, seconds=1.0, history=history, solved=True)
    assert record["evaluations_to_solve"] == 40


def test_negative_seeds_are_one_line_errors(tmp_path):
    output_dir = tmp_path / "out"
    for seeds in ("-1", "-1,2", "3,-4"):
        code, out, err = run_main(simple_evaluation, ["--methods", "basic", f"--seeds={seeds}",
                                                      "--output_dir", str(output_dir)])
        assert code == 2 and out == "" and err.count("\n") == 1 and "--seeds" in err and "non-negative" in err
    assert not output_dir.exists()
