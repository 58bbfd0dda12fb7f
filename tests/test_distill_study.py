"""The distillation recipe (experiments/distill.py): its CPU-sized variant end to end, resuming, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

import distill  # noqa: E402


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The CPU variant (experiments/distill-cpu.json) run once, in a temporary work folder."""
    workdir = tmp_path_factory.mktemp("distill")
    result = subprocess.run([sys.executable, str(REPO / "experiments" / "distill.py"), "--config",
                             str(REPO / "experiments" / "distill-cpu.json"), "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result.stdout


def test_cpu_variant_runs_every_stage_and_reports(study):
    workdir, stdout = study
    report = json.loads((workdir / "study.json").read_text())
    config = json.loads((REPO / "experiments" / "distill-cpu.json").read_text())
    assert report["benchmark_check"]["clean"] and report["benchmark_check"]["traced_expressions"] == 40
    assert report["traces"]["records"] == 40
    for name in config["conversions"]:
        assert report["conversions"][name]["train_examples"] > 0
    plan = distill.Study(config, workdir)
    for name in config["models"]:
        assert (plan.checkpoint(name) / "model.safetensors").exists()
        assert report["models"][name]["train"], name  # a loss curve
    # The DAgger model was fine-tuned from `main` on the learner's states labelled by the expert.
    tuned = json.loads((plan.checkpoint("dagger") / "ttsr_train_meta.json").read_text())
    assert (workdir / "dagger" / "dagger" / "iter01") in plan.checkpoint("dagger").parents
    resolved = json.loads((plan.checkpoint("dagger") / "resolved_config.json").read_text())
    assert resolved["init_from"] == str(plan.checkpoint("main"))
    assert tuned["train_examples"] > 0
    loop = report["dagger"]["dagger"]
    assert loop["complete"] and loop["method"] == "dagger"
    assert [entry["iteration"] for entry in loop["iterations"]] == [1]
    assert loop["iterations"][0]["round_examples"] > 0 and loop["iterations"][0]["traces"] == 8
    assert set(report["evaluations"]) == set(config["evaluations"])
    main = report["evaluations"]["main-10"]["methods"]
    assert set(main) == {"basic", "neural"} and main["neural"]["runs"] == main["basic"]["runs"] == 5
    assert 0.0 <= main["neural"]["well_formed_rate"] <= 1.0
    stages = {entry["stage"] for entry in report["commands"]}
    assert stages == {"expressions", "traces", "check", "convert", "train", "dagger", "evaluate"}
    assert "| main-10 | neural |" in (workdir / "study.md").read_text()
    assert "- DAgger `dagger` iteration 1: 8 rollouts" in (workdir / "study.md").read_text()
    # Every recorded command is a plain command line of the project's scripts.
    assert all("python" in entry["command"] and entry["exit"] == 0 for entry in report["commands"])


def test_a_second_run_skips_finished_stages(study):
    workdir, _ = study
    result = subprocess.run([sys.executable, str(REPO / "experiments" / "distill.py"), "--config",
                             str(REPO / "experiments" / "distill-cpu.json"), "--workdir", str(workdir),
                             "--stages", "expressions,traces,train"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("outputs exist, skipped") == 4  # expressions, traces, two models


def test_benchmark_check_finds_a_benchmark_expression(study, tmp_path):
    """The check can fail: a traces file whose expression is a benchmark problem is reported."""
    import file_io

    workdir, _ = study
    expressions = file_io.load(workdir / "expressions.pkl.gz", "expressions")
    records = [dict(record) for record in expressions.records[:3]]
    records[1]["expression"], records[1]["n_vars"] = "x1 * (x0 * x0)", 2  # bivariate_product, relabelled
    file_io.save(tmp_path / "e.pkl.gz", "expressions", records, expressions.metadata)
    traces = file_io.load(workdir / "traces.pkl.gz", "traces")
    kept = [record for record in traces.records if record["expression_id"] in {r["id"] for r in records}]
    file_io.save(tmp_path / "t.pkl.gz", "traces", kept, traces.metadata)
    result = distill.check_benchmarks(tmp_path / "e.pkl.gz", tmp_path / "t.pkl.gz", tmp_path / "check.json")
    assert not result["clean"] and [m["benchmark"] for m in result["benchmark_matches"]] == ["bivariate_product"]
    assert distill.main(["--check_benchmarks", str(tmp_path / "e.pkl.gz"), str(tmp_path / "t.pkl.gz"),
                         str(tmp_path / "c2.json")]) == 1


def test_bad_configs_fail_with_one_line(tmp_path, capsys):
    assert distill.main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err
    config = json.loads((REPO / "experiments" / "distill-cpu.json").read_text())
    config["models"]["main"]["conversion"] = "nope"
    (tmp_path / "bad.json").write_text(json.dumps(config))
    assert distill.main(["--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown conversion 'nope'" in capsys.readouterr().err
    assert distill.main(["--config", str(REPO / "experiments" / "distill-cpu.json"), "--stages", "train,fly"]) == 2
    assert "unknown stage(s) fly" in capsys.readouterr().err


def test_main_gives_back_the_callers_sigterm_handler(tmp_path, capsys):
    # main() turns SIGTERM into an interruption while it runs; a caller such as
    # pytest must get its own handler back, or a later SIGTERM breaks whatever
    # test is running instead of ending the run.
    def callers_handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, callers_handler)
    try:
        assert distill.main(["--config", str(tmp_path / "missing.json")]) == 2
        assert signal.getsignal(signal.SIGTERM) is callers_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    capsys.readouterr()


def test_jobs_side_by_side_share_the_cores_as_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "OMP_NUM_THREADS" not in distill.job_environment(1, cores=16)  # alone: torch's default
    assert distill.job_environment(4, cores=16)["OMP_NUM_THREADS"] == "4"
    assert distill.job_environment(3, cores=2)["OMP_NUM_THREADS"] == "1"
    assert distill.job_environment(2)["PYTHONUNBUFFERED"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's choice stands
    assert distill.job_environment(4, cores=16)["OMP_NUM_THREADS"] == "7"


def test_a_stage_runs_its_jobs_side_by_side_with_their_share_of_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    study = distill.Study(json.loads((REPO / "experiments" / "distill-cpu.json").read_text()), workdir=tmp_path)
    show = [sys.executable, "-c", "import os; print('threads', os.environ.get('OMP_NUM_THREADS'))"]
    jobs = [distill.Job("evaluate", name, show, [tmp_path / f"{name}.never"], tmp_path / "logs" / f"{name}.log")
            for name in ("a", "b")]
    distill.run_jobs(study, "evaluate", jobs, parallel=True, force=False, journal=[])
    assert [job.log.read_text().splitlines()[-1] for job in jobs] == ["threads 2", "threads 2"]
    distill.run_jobs(study, "evaluate", jobs[:1], parallel=True, force=False, journal=[])
    assert jobs[0].log.read_text().splitlines()[-1] == "threads None"  # alone: torch's default


def test_shipped_study_configs_are_valid():
    for path in sorted((REPO / "experiments").glob("distill-*.json")):
        config = distill.load_config(path)
        study = distill.Study(config, workdir="/nonexistent")
        for stage in distill.STAGES:
            study.jobs(stage)  # every job builds
        # In the repository's own work folder, the commands (and what the scripts record of them) are portable.
        inside = distill.Study(config)
        for stage in distill.STAGES:
            for job in inside.jobs(stage):
                assert not any(str(REPO) in part for part in job.argv[1:]), (stage, job.argv)


def test_a_given_model_is_evaluated_and_tuned_without_training():
    """A model {"checkpoint": path} has no train job; evaluations and DAgger loops start from that folder."""
    config = json.loads((REPO / "experiments" / "distill-cpu.json").read_text())
    config["models"]["shipped"] = {"checkpoint": "models/neuralsr-tiny"}
    config["models"]["dagger"]["dagger_from"] = "shipped"
    config["evaluations"]["main-10"]["model"] = "shipped"
    study = distill.Study(config, workdir="/nonexistent")
    assert study.checkpoint("shipped") == REPO / "models" / "neuralsr-tiny"
    assert "shipped" not in [job.name for job in study.jobs("train")]
    (loop,) = study.jobs("dagger")
    assert loop.argv[loop.argv.index("--checkpoint") + 1] == "models/neuralsr-tiny"
    assert "--resume" in loop.argv  # a rerun of the study continues the loop
    evaluation = next(job for job in study.jobs("evaluate") if job.name == "main-10")
    assert evaluation.argv[evaluation.argv.index("--checkpoint") + 1] == "models/neuralsr-tiny"


def _write_config(folder: Path, name: str, change) -> Path:
    config = json.loads((REPO / "experiments" / "distill-cpu.json").read_text())
    change(config)
    path = folder / name
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("name, change, message", [
    ("seed", lambda c: c.update(seed="zero"), "'seed' must be a whole number >= 0, got 'zero'"),
    ("negative_seed", lambda c: c.update(seed=-1), "'seed' must be a whole number >= 0"),
    ("workers", lambda c: c.update(workers=1.5), "'workers' must be a whole number"),
    ("models", lambda c: c.update(models="x"), "'models' must be an object of named objects, got 'x'"),
    ("model_entry", lambda c: c["models"].update(main=3), "'models' must be an object of named objects"),
    ("model_config", lambda c: c["models"]["main"].pop("config"), "model 'main': needs 'config'"),
    ("overrides", lambda c: c["models"]["main"].update(overrides=[1]), "'overrides' must be an object"),
    ("traces", lambda c: c.update(traces=["--quiet"]), "'traces' must be an object of script flags"),
    ("group", lambda c: c["evaluations"]["main-10"].update(group="first"), "'group' must be a whole number"),
    ("unknown", lambda c: c.update(worker=2), "unknown key 'worker'; did you mean 'workers'?"),
    ("dagger_from", lambda c: c["models"]["dagger"].update(dagger_from="nope"),
     "model 'dagger': dagger_from 'nope' must name a trained or given model"),
    ("dagger_of_dagger", lambda c: c["models"].update(again={**c["models"]["dagger"], "dagger_from": "dagger"}),
     "model 'again': dagger_from 'dagger' must name a trained or given model"),
    ("iterations", lambda c: c["models"]["dagger"]["options"].pop("--iterations"), '"--iterations" >= 1'),
    ("given", lambda c: c["models"].update(shipped={"checkpoint": 3}), "'checkpoint' must be a checkpoint folder"),
    ("unknown_far", lambda c: c.update(zzz=2), "unknown key 'zzz'; valid keys: workdir"),
])
def test_bad_config_values_fail_with_one_line(tmp_path, capsys, name, change, message):
    path = _write_config(tmp_path, f"{name}.json", change)
    assert distill.main(["--config", str(path), "--workdir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config {path}: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "work").exists()  # nothing made


def test_bad_config_files_and_workdirs_fail_with_one_line(tmp_path, capsys):
    (tmp_path / "binary.json").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    (tmp_path / "list.json").write_text("[1]")
    for argv, message in ((["--config", str(tmp_path)], "is a directory"),
                          (["--config", str(tmp_path / "binary.json")], "not UTF-8"),
                          (["--config", str(tmp_path / "list.json")], "is a JSON object")):
        assert distill.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: config ") and message in err and err.count("\n") == 1, err
    (tmp_path / "a_file").write_text("mine")
    config = str(REPO / "experiments" / "distill-cpu.json")
    for workdir in (tmp_path / "a_file", tmp_path / "a_file" / "work"):
        assert distill.main(["--config", config, "--workdir", str(workdir), "--stages", "report"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: workdir {workdir}: cannot create") and err.count("\n") == 1, err
    assert (tmp_path / "a_file").read_text() == "mine"
