"""generate_traces.py: record layout, determinism across workers/shards/resume, CLI errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import expressions as ex
import file_io
import generate_traces as gt
import trajectory as tj
from expression_parser import parse
from random_stream import derive_seed

REPO = Path(__file__).resolve().parent.parent

FORMULAS = [
    "x0 * x0 + x1", "x0 + 1.0", "x0 * x1 - x1 / (x0 + 2.0)", "(x0 + x1) * (x0 - 1.0)",
    "x0 * x0 * x0 - x1", "x0 / (x1 * x1 + 1.0)", "x1 - x0 * 2.0", "x0 * x1 * x1 + 1.0",
    "(x0 - x1) / (x0 * x0 + 1.0)", "x0 * x0 - x1 * x1 + x0", "x1", "2.0 * x0 * x1 - x0",
]
FAST = ["--num_generations", "20", "--quiet"]


def make_records(count: int, seed: int = 0) -> list[dict]:
    """Expression records with ids 100, 103, ... stored out of id order."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        formula = FORMULAS[i % len(FORMULAS)]
        if i >= len(FORMULAS):  # longer, harder targets beyond the base list
            formula = f"({formula}) * ({FORMULAS[(5 * i + 1) % len(FORMULAS)]})"
        tree = parse(formula)
        X = rng.uniform(-2.0, 2.0, size=(int(rng.integers(30, 60)), 2)).astype(np.float32)
        y = ex.evaluate(tree, X).astype(np.float32)
        records.append({"id": 100 + 3 * i, "expression": ex.to_string(tree), "n_vars": 2, "X": X, "y": y})
    return records[::-1]


def save_expressions(path, records, constants=(1.0, 2.0)) -> Path:
    metadata = file_io.make_metadata({"n_expressions": len(records)}, 0)
    metadata.update(binary_operators=["+", "-", "*", "/"], unary_operators=[])
    if constants is not None:
        metadata["constants"] = list(constants)
    return file_io.save(path, "expressions", records, metadata)


@pytest.fixture(scope="module")
def expressions_file(tmp_path_factory) -> Path:
    return save_expressions(tmp_path_factory.mktemp("expr") / "small_12.pkl.gz", make_records(12))


def run_cli(*args) -> int:
    """main's exit status (data-file errors exit through SystemExit)."""
    try:
        return gt.main([str(a) for a in args])
    except SystemExit as exit:
        return exit.code


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --------------------------------------------------------------------------
# Records


def test_trace_record_fields_and_trajectory_invariants():
    record = make_records(12)[-2]  # "x0 + 1.0", id 103: in the initial population
    hard = make_records(12)[0]  # "2.0 * x0 * x1 - x0"
    params = {"population_size": 20, "num_generations": 15, "max_depth": 10, "max_size": 25,
              "tournament_size": 3, "constants": [1.0], "binary_operators": ["+", "-", "*", "/"],
              "unary_operators": []}
    easy = gt.trace_one(record, params, seed=42)
    # Solved, though float32 rounding of y keeps the MSE above BasicSR's early-stop threshold.
    assert easy["solved"] and easy["final_mse"] < 1e-12
    trace = gt.trace_one(hard, params, seed=42)
    assert set(trace) == {"expression_id", "target_expression", "n_vars", "final_expression", "final_mse",
                          "solved", "n_generations", "n_evaluations", "trajectory", "seed"}
    assert trace["expression_id"] == hard["id"] and trace["target_expression"] == hard["expression"]
    assert trace["seed"] == derive_seed(42, hard["id"]) and trace["n_vars"] == 2
    assert isinstance(trace["final_mse"], float) and isinstance(trace["solved"], bool)
    trajectory = trace["trajectory"]
    generations = trace["n_generations"]
    assert trajectory["population"].shape == (generations + 1, 20)
    assert tj.origins_at(trajectory, 0) == ["init"] * 20
    assert (trajectory["parents"][0] == tj.NO_PARENT).all()
    best = int(trajectory["best_index"][-1])
    assert trajectory["ancestors_of_best"][-1] == [best]
    assert len(trajectory["ancestors_of_best"]) == generations + 1
    assert tj.expression_text(trajectory, trajectory["population"][-1, best]) == trace["final_expression"]
    assert trace["final_mse"] == trajectory["best_mse"][-1]
    assert trace["n_evaluations"] == 20 * (generations + 1)
    # Same inputs, same trace; the fit time is not part of it.
    again = gt.trace_one(hard, params, seed=42)
    assert again["final_expression"] == trace["final_expression"]
    assert np.array_equal(again["trajectory"]["fitnesses"], trajectory["fitnesses"])


def test_solved_on_points_uses_nmse():
    y = np.array([1.0, 2.0, 3.0])
    assert gt.solved_on_points(1e-12, y) and not gt.solved_on_points(1e-9, y)
    assert gt.solved_on_points(1e-11, 1e3 * y)
    assert not gt.solved_on_points(1e-9, np.full(3, 2.0))  # constant y: plain MSE
    assert not gt.solved_on_points(float("inf"), y)


# --------------------------------------------------------------------------
# Determinism


def test_workers_and_merged_shards_give_identical_bytes(expressions_file, tmp_path, capsys):
    common = ["--expressions_file", expressions_file, *FAST]
    assert run_cli(*common, "--output", tmp_path / "w1.pkl.gz") == 0
    assert run_cli(*common, "--output", tmp_path / "w2.pkl.gz", "--workers", "2") == 0
    for index in range(3):
        assert run_cli(*common, "--output", tmp_path / "m.pkl.gz", "--shard", f"{index}/3") == 0
    assert (tmp_path / "m.shard1of3.pkl.gz").exists()
    assert run_cli(*common, "--output", tmp_path / "m.pkl.gz", "--merge_shards", "3") == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("merged 3 shards: traces 12 ") and "traces/s" in summary
    w1 = (tmp_path / "w1.pkl.gz").read_bytes()
    assert (tmp_path / "w2.pkl.gz").read_bytes() == w1
    assert (tmp_path / "m.pkl.gz").read_bytes() == w1

    traces, metadata = file_io.load(tmp_path / "w1.pkl.gz", kind="traces")
    assert [t["expression_id"] for t in traces] == [100 + 3 * i for i in range(12)]
    assert metadata["complete"] is True and metadata["shard"] is None
    assert metadata["n_traces"] == 12 and metadata["expressions_sha256"] == gt.file_sha256(expressions_file)
    assert "timestamp" not in metadata and "hostname" not in metadata and "workers" not in metadata["parameters"]
    assert metadata["command"].startswith("python generate_traces.py --expressions_file ")
    assert metadata["solver"] == "BasicSR" and metadata["basic_sr_params"]["num_generations"] == 20
    shard, shard_meta = file_io.load(tmp_path / "m.shard1of3.pkl.gz")
    assert [t["expression_id"] for t in shard] == [103, 112, 121, 130]
    assert shard_meta["shard"] == {"index": 1, "count": 3}
    log = (tmp_path / "w2.log.json").read_text()
    assert '"workers": 2' in log and '"wall_seconds"' in log


def test_core_bytes_do_not_depend_on_worker_chunks(tmp_path):
    # 40 records with 2 workers travel in chunks of 2: records of one chunk are
    # unpickled together and could share objects, which would change the bytes.
    records = make_records(40)
    params = {"population_size": 10, "num_generations": 3, "max_depth": 10, "max_size": 25,
              "tournament_size": 3, "constants": [1.0], "binary_operators": ["+", "-", "*", "/"],
              "unary_operators": []}
    files = []
    for workers in (1, 2):
        traces = gt.generate_traces(records, params, seed=1, workers=workers, progress=False)
        assert [t["expression_id"] for t in traces] == sorted(r["id"] for r in records)
        files.append(file_io.save(tmp_path / f"w{workers}.pkl.gz", "traces", traces, {}).read_bytes())
    assert files[0] == files[1]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    source = save_expressions(tmp_path / "forty.pkl.gz", make_records(40))
    common = ["--expressions_file", str(source), "--num_generations", "60", "--quiet"]
    final = tmp_path / "out.pkl.gz"
    partial = tmp_path / "out.partial.pkl.gz"
    process = subprocess.Popen(
        [sys.executable, "generate_traces.py", *common, "--output", str(final), "--checkpoint_every", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert partial.exists(), process.stderr.read() if process.poll() is not None else "no partial file"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not final.exists()
    done = file_io.load(partial, kind="traces")
    assert done.metadata["complete"] is False and 1 <= len(done.records) < 40

    assert run_cli(*common, "--output", final, "--resume") == 0
    assert not partial.exists()
    assert '"traces_resumed": 0' not in (tmp_path / "out.log.json").read_text()
    assert run_cli(*common, "--output", tmp_path / "straight.pkl.gz") == 0
    assert final.read_bytes() == (tmp_path / "straight.pkl.gz").read_bytes()


def test_resume_refuses_a_partial_file_of_other_parameters(expressions_file, tmp_path, capsys):
    output = tmp_path / "out.pkl.gz"
    assert run_cli("--expressions_file", expressions_file, *FAST, "--output", tmp_path / "other.pkl.gz",
                   "--population_size", "10") == 0
    other = file_io.load(tmp_path / "other.pkl.gz")
    file_io.save(gt.partial_path(output), "traces", other.records[:2], {**other.metadata, "complete": False})
    capsys.readouterr()
    assert run_cli("--expressions_file", expressions_file, *FAST, "--output", output, "--resume") == 2
    line = one_error_line(capsys)
    assert "out.partial.pkl.gz" in line and "population_size" in line
    assert not output.exists()


def test_without_resume_a_stale_partial_file_is_replaced(expressions_file, tmp_path, capsys):
    output = tmp_path / "out.pkl.gz"
    gt.partial_path(output).write_bytes(b"left over from a killed run")
    assert run_cli("--expressions_file", expressions_file, *FAST, "--output", output) == 0
    assert "ignoring the partial file" in capsys.readouterr().err
    assert output.exists() and not gt.partial_path(output).exists()


# --------------------------------------------------------------------------
# Selection, parameters, names


def test_max_expressions_picks_a_seeded_subset_sorted_by_id(expressions_file, tmp_path):
    records, _ = gt.load_expression_records(expressions_file)
    first = gt.select_expressions(records, 5, seed=7)
    assert [r["id"] for r in first] == [r["id"] for r in gt.select_expressions(records, 5, seed=7)]
    assert [r["id"] for r in first] == sorted(r["id"] for r in first) and len(first) == 5
    others = {tuple(r["id"] for r in gt.select_expressions(records, 5, seed=s)) for s in range(8)}
    assert len(others) > 1
    assert gt.select_expressions(records, 50, seed=7) == records
    assert run_cli("--expressions_file", expressions_file, *FAST, "--max_expressions", "5", "--seed", "7",
                   "--output", tmp_path / "sub.pkl.gz") == 0
    traces, metadata = file_io.load(tmp_path / "sub.pkl.gz")
    assert [t["expression_id"] for t in traces] == [r["id"] for r in first]
    assert metadata["parameters"]["max_expressions"] == 5 and "--max_expressions 5" in metadata["command"]


def test_constants_default_to_the_expressions_metadata(tmp_path):
    with_constants = save_expressions(tmp_path / "a.pkl.gz", make_records(2), constants=(1.0, 2.0))
    without = save_expressions(tmp_path / "b.pkl.gz", make_records(2), constants=None)
    cases = [(with_constants, [], [1.0, 2.0]), (without, [], [1.0]),
             (with_constants, ["--constants", ""], []), (without, ["--constants", "0.5,3"], [0.5, 3.0])]
    for index, (source, extra, expected) in enumerate(cases):
        output = tmp_path / f"out{index}.pkl.gz"
        assert run_cli("--expressions_file", source, *FAST, *extra, "--output", output) == 0
        metadata = file_io.load(output).metadata
        assert metadata["basic_sr_params"]["constants"] == expected
        assert metadata["parameters"]["constants"] == expected


def test_output_names():
    assert [file_io.format_count(n) for n in (50, 999, 1000, 2500, 10000, 1_000_000, 1_500_000)] == \
        ["50", "999", "1k", "2.5k", "10k", "1M", "1.5M"]
    assert gt.default_output_name(1000, "datasets/expressions/train_1k_arith_c05.pkl.gz") == \
        "gen1k_train_1k_arith_c05.pkl.gz"
    final = Path("d/gen50_x.pkl.gz")
    assert gt.shard_path(final, 2, 4) == Path("d/gen50_x.shard2of4.pkl.gz")
    assert gt.partial_path(final) == Path("d/gen50_x.partial.pkl.gz")
    assert gt.log_path(final) == Path("d/gen50_x.log.json")


def test_default_output_goes_to_output_dir(expressions_file, tmp_path):
    assert run_cli("--expressions_file", expressions_file, *FAST, "--output_dir", tmp_path) == 0
    assert (tmp_path / "gen20_small_12.pkl.gz").exists() and (tmp_path / "gen20_small_12.log.json").exists()


# --------------------------------------------------------------------------
# Errors: one line, exit 2


def test_existing_output_is_not_overwritten(expressions_file, tmp_path, capsys):
    output = tmp_path / "out.pkl.gz"
    output.write_bytes(b"precious")
    assert run_cli("--expressions_file", expressions_file, *FAST, "--output", output) == 2
    assert str(output) in one_error_line(capsys) and output.read_bytes() == b"precious"
    assert run_cli("--expressions_file", expressions_file, *FAST, "--output", output, "--overwrite") == 0
    assert file_io.load(output).kind == "traces"


@pytest.mark.parametrize("problem", ["traces", "missing", "corrupt"])
def test_bad_expressions_file_exits_2_naming_it(problem, expressions_file, tmp_path, capsys):
    bad = tmp_path / "bad.pkl.gz"
    if problem == "traces":
        file_io.save(bad, "traces", [], {})
    elif problem == "corrupt":
        bad.write_bytes(expressions_file.read_bytes()[:200])
    assert run_cli("--expressions_file", bad, *FAST, "--output", tmp_path / "out.pkl.gz") == 2
    line = one_error_line(capsys)
    assert str(bad) in line
    if problem == "traces":
        assert "'traces'" in line
    assert not (tmp_path / "out.pkl.gz").exists()


def test_merge_refuses_missing_or_mismatched_shards(expressions_file, tmp_path, capsys):
    common = ["--expressions_file", expressions_file, *FAST, "--output", tmp_path / "m.pkl.gz"]
    assert run_cli(*common, "--shard", "0/2") == 0
    assert run_cli(*common, "--merge_shards", "2") == 2
    assert "m.shard1of2.pkl.gz" in one_error_line(capsys)
    assert run_cli(*common, "--shard", "1/2", "--seed", "3") == 0
    assert run_cli(*common, "--merge_shards", "2") == 2
    assert "seed" in one_error_line(capsys) and not (tmp_path / "m.pkl.gz").exists()


@pytest.mark.parametrize("flags", [["--checkpoint", "ckpt"], ["--batch_size", "4"], ["--shard", "3/3"],
                                   ["--population_size", "1"], ["--constants", "a,b"]])
def test_unusable_options_exit_2(flags, expressions_file, tmp_path, capsys):
    assert run_cli("--expressions_file", expressions_file, *FAST, *flags, "--output", tmp_path / "o.pkl.gz") == 2
    line = one_error_line(capsys)
    if "--checkpoint" in flags:
        assert "checkpoint ckpt: not found" in line
    if "--batch_size" in flags:
        assert "--batch_size needs --checkpoint" in line


@pytest.mark.parametrize("flags, named", [
    (["--seed", "-1"], "--seed"), (["--checkpoint_seconds", "nan"], "--checkpoint_seconds"),
    (["--checkpoint_seconds", "inf"], "--checkpoint_seconds"), (["--checkpoint_seconds", "-1"], "--checkpoint_seconds"),
    (["--checkpoint_every", "-1"], "--checkpoint_every"),
])
def test_bad_seed_and_checkpoint_intervals_exit_2_naming_the_flag(flags, named, expressions_file, tmp_path, capsys):
    output = tmp_path / "o.pkl.gz"
    assert run_cli("--expressions_file", expressions_file, *FAST, *flags, "--output", output) == 2
    line = one_error_line(capsys)
    assert named in line and flags[1] in line
    assert not output.exists()


def test_output_that_is_the_expressions_file_is_refused(tmp_path, capsys):
    source = save_expressions(tmp_path / "e.pkl.gz", make_records(2))
    before = source.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pkl.gz").symlink_to(source)
    for output in (source, tmp_path / "sub" / ".." / "e.pkl.gz", tmp_path / "link.pkl.gz"):
        assert run_cli("--expressions_file", source, *FAST, "--output", output, "--overwrite") == 2
        assert "is the input file" in one_error_line(capsys)
    assert source.read_bytes() == before


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_unwritable_output_fails_before_tracing_in_one_line(where, expressions_file, tmp_path, capsys, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep")
    output = tmp_path / ("folder" if where == "folder" else "file/out.pkl.gz")
    monkeypatch.setattr(gt, "iter_traces", lambda *a, **k: pytest.fail("traced before checking the output"))
    assert run_cli("--expressions_file", expressions_file, *FAST, "--output", output, "--overwrite") == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {output}: ") and ".tmp." not in line
    assert (tmp_path / "file").read_text() == "keep"
