"""dagger.py: the commands it plans, the mixing rule, and the whole loop on the CPU.

`test_dagger_loop_end_to_end_with_neural_sr` needs NeuralSR (neural_sr.py,
`generate_traces.py --checkpoint`) and the `tiny_checkpoint` fixture; it is
skipped where they do not exist yet. `test_loop_runs_every_stage_with_a_stand_in_learner`
runs the same loop with BasicSR traces standing in for the NeuralSR
rollouts (same file format), so every other stage is exercised everywhere.
"""

import json
import shlex
from pathlib import Path

import pytest

import conversion_common as cc
import dagger
import file_io
import format_utils as fu
import generate_traces as gt
import one_step_conversion
import train
from pipeline_data import expressions_and_traces

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = {"model_type": "gpt_neo", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
              "attention_types": [[["global"], 2]], "intermediate_size": 64,
              "activation_function": "gelu_pytorch_tanh"}
POPULATION = 6  # short prompts: a tiny model's positions suffice
# A few CPU steps of fine-tuning, nothing on the side.
FAST_TRAINING = ["max_steps=2", "per_device_train_batch_size=4", "per_device_eval_batch_size=8", "warmup_steps=0",
                 "eval_steps=0", "save_steps=1000", "logging_steps=1", "sample_prompts=0", "dataloader_num_workers=0",
                 "use_datasets=false", "disable_tqdm=true", "device=cpu"]


@pytest.fixture(scope="module")
def imitation(tmp_path_factory):
    """(expressions file, imitation one-step train JSONL) made by the real pipeline with BasicSR."""
    folder = tmp_path_factory.mktemp("imitation")
    expressions, traces = expressions_and_traces(folder, 6, POPULATION, 8, seed=2, max_vars=2)
    data = folder / "training" / "onestep.jsonl"
    assert one_step_conversion.main(["--input", str(traces), "--output", str(data), "--split",
                                     "--val_fraction", "0.3", "--quiet"]) == 0
    return expressions, folder / "training" / "onestep.train.jsonl"


def loop_args(imitation, checkpoint, output_dir, *more) -> list[str]:
    expressions, data = imitation
    return ["--checkpoint", str(checkpoint), "--expressions_file", str(expressions), "--imitation_data", str(data),
            "--output_dir", str(output_dir), "--iterations", "2", "--population_size", str(POPULATION),
            "--num_generations", "4", "--batch_size", "4", "--quiet", *more]


def checkpoint_stub(folder: Path) -> Path:
    """A folder that passes dagger.py's up-front checkpoint check (config.json, tokenizer.json), no weights."""
    import tokenizer as tk

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neo"}))
    tk.save_tokenizer(tk.build_tokenizer(), folder)
    return folder


def write_rows(path: Path, count: int, tag: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"row": i, "tag": tag}) + "\n" for i in range(count)))
    return path


# --------------------------------------------------------------------------
# Planning and mixing (no model)


def test_dry_run_prints_every_stage_and_chains_the_checkpoints(imitation, tmp_path, capsys):
    output_dir = tmp_path / "loop"
    start = checkpoint_stub(tmp_path / "ckpt" / "final")  # a dry run checks its inputs too
    assert dagger.main(loop_args(imitation, start, output_dir, "--dry_run", "-o", "max_steps=7")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert not output_dir.exists()  # a dry run writes nothing
    commands = [line for line in lines if not line.startswith("# iteration")]
    assert len(commands) == 2 * 5
    scripts = [line.split()[1] if not line.startswith("#") else "mix" for line in commands]
    assert scripts == ["generate_traces.py", "dagger_relabel.py", "one_step_conversion.py", "mix", "train.py"] * 2
    first_traces, second_traces = (shlex.split(commands[i]) for i in (0, 5))
    assert first_traces[first_traces.index("--checkpoint") + 1] == str(start)
    final = output_dir / "iter01" / "train" / "final"
    assert second_traces[second_traces.index("--checkpoint") + 1] == str(final)
    assert "--batch_size" in first_traces and first_traces[first_traces.index("--seed") + 1] != \
        second_traces[second_traces.index("--seed") + 1]
    second_train = shlex.split(commands[9])
    overrides = [second_train[i + 1] for i, word in enumerate(second_train) if word == "-o"]
    assert "max_steps=7" in overrides and f"init_from={final}" in overrides and f"tokenizer={final}" in overrides
    assert overrides[0] == "disable_tqdm=true"  # --quiet: no training bar either
    assert f"train_file={output_dir / 'iter02' / 'data' / 'mixed.train.jsonl'}" in overrides
    assert "--dagger" in shlex.split(commands[2])
    assert str(output_dir / "iter01" / "data" / "dagger.train.jsonl") in commands[8]  # aggregate: round 1 too


def test_options_the_loop_sets_itself_are_refused(imitation, tmp_path, capsys):
    for extra in (["-o", "init_from=x"], ["--trace_args", "--seed 3"], ["--iterations", "0"]):
        assert dagger.main(loop_args(imitation, "ckpt", tmp_path / "loop", "--dry_run", *extra)) == 2
        assert capsys.readouterr().err.startswith("error: ")
    assert dagger.main(loop_args(imitation, tmp_path / "no_checkpoint", tmp_path / "loop")) == 2
    assert "no_checkpoint" in capsys.readouterr().err


def test_bad_inputs_are_refused_before_iteration_1_dry_run_or_not(imitation, tmp_path, capsys, monkeypatch):
    """Each bad input is one `error:` line naming it, exit 2, before any stage runs (dry run or not)."""
    expressions, data = imitation
    start = checkpoint_stub(tmp_path / "ckpt")
    empty_folder = tmp_path / "empty_folder"
    empty_folder.mkdir()
    (tmp_path / "bad.json").write_text('{"mode": "onestep",')
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    traces = file_io.save(tmp_path / "t.pkl.gz", "traces", [], {})  # a data file of another kind
    for stage in ("generate_traces", "dagger_relabel", "one_step_conversion", "train"):
        monkeypatch.setattr(__import__(stage), "main", lambda argv: pytest.fail("a stage ran"))

    def args_with(**changes):
        values = {"--checkpoint": start, "--expressions_file": expressions, "--imitation_data": data,
                  "--output_dir": tmp_path / "loop"}
        values.update(changes)
        argv = [item for flag, value in values.items() if not flag.startswith("-o") for item in (flag, str(value))]
        return argv + ["--iterations", "2", "--quiet"]

    cases = [
        (args_with(**{"--checkpoint": tmp_path / "missing"}), "missing: not found (--checkpoint)"),
        (args_with(**{"--checkpoint": empty_folder}), "no config.json"),
        (args_with(**{"--checkpoint": tmp_path / "broken"}), "broken: not a train.py checkpoint (config.json"),
        (args_with(**{"--checkpoint": tmp_path / "a_file"}), "not a folder (--checkpoint)"),
        (args_with(**{"--expressions_file": traces}), "expected a 'expressions' file, got 'traces'"),
        (args_with(**{"--expressions_file": data}), "(--expressions_file)"),
        (args_with(**{"--imitation_data": tmp_path / "missing.jsonl"}), "missing.jsonl: file not found"),
        (args_with(**{"--imitation_data": tmp_path / "empty.jsonl"}), "empty.jsonl: file has no rows"),
        (args_with(**{"--imitation_data": expressions}), "(--imitation_data)"),
        (args_with() + ["--config", str(tmp_path / "bad.json")], "bad.json: not valid JSON"),
        (args_with() + ["--config", str(tmp_path / "missing.json")], "missing.json: config file not found"),
        (args_with() + ["-o", "nokey=1"], "unknown config key 'nokey'"),
        (args_with() + ["-o", "learning_rate=-1"], "'learning_rate' must be > 0"),
        (args_with(**{"--output_dir": tmp_path / "a_file"}), "a_file: is a file (--output_dir"),
        (args_with(**{"--output_dir": tmp_path / "a_file" / "loop"}), "lies under a file"),
    ]
    for argv, message in cases:
        for extra in ([], ["--dry_run"]):
            assert dagger.main(argv + extra) == 2, (argv + extra, message)
            captured = capsys.readouterr()
            assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
            assert message in captured.err, (message, captured.err)
            assert not captured.out and not (tmp_path / "loop").exists()
    assert (tmp_path / "a_file").read_text() == "mine"


def data_with_prompt(imitation, folder: Path, **parameters) -> Path:
    """A copy of the imitation data whose conversion sidecar records other prompt `parameters`."""
    data = imitation[1]
    copy = folder / "other.train.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(data.read_bytes())
    sidecar = json.loads(cc.sidecar_path(data).read_text())
    sidecar["metadata"]["parameters"].update(parameters)
    cc.sidecar_path(copy).write_text(json.dumps(sidecar))
    return copy


def test_the_dagger_data_is_written_as_the_checkpoint_was_trained(imitation, tmp_path, capsys):
    """The conversion gets the checkpoint's parentheses; imitation data or --context_type of another prompt
    style than the checkpoint's is refused before iteration 1."""
    start = checkpoint_stub(tmp_path / "ckpt")  # no meta file: parentheses "full", context type unknown
    minimal_data = data_with_prompt(imitation, tmp_path / "minimal", parentheses="minimal")
    rich_data = data_with_prompt(imitation, tmp_path / "rich", context_type="rich")
    assert dagger.main(loop_args((imitation[0], minimal_data), start, tmp_path / "loop", "--dry_run")) == 2
    assert capsys.readouterr().err.strip() == (f"error: {minimal_data} (its sidecar): parentheses 'minimal', but "
                                               f"checkpoint {start} was trained on parentheses 'full'")
    (start / "ttsr_train_meta.json").write_text(json.dumps({"prompt": {"context_type": "basic",
                                                                       "parentheses": "minimal"}}))
    for data, extra, message in ((imitation[1], [], "(its sidecar): parentheses 'full', but checkpoint"),
                                 (rich_data, [], "(its sidecar): context_type 'rich', but checkpoint"),
                                 (minimal_data, ["--context_type", "rich"], "--context_type: context_type 'rich'")):
        assert dagger.main(loop_args((imitation[0], data), start, tmp_path / "loop", "--dry_run", *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert dagger.main(loop_args((imitation[0], minimal_data), start, tmp_path / "loop", "--dry_run")) == 0
    conversions = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if "one_step_conversion" in line]
    assert len(conversions) == 2
    assert all(words[words.index("--parentheses") + 1] == "minimal" for words in conversions)
    assert not (tmp_path / "loop").exists()


def test_help_explains_every_flag_and_context_types_match():
    for action in dagger.build_parser()._actions:
        assert action.help, action.option_strings
    assert dagger.CONTEXT_TYPES == fu.CONTEXT_TYPES


def test_mix_aggregates_rounds_with_a_seeded_share_of_imitation_rows(tmp_path):
    imitation = write_rows(tmp_path / "imitation.jsonl", 1000, "imitation")
    rounds = [write_rows(tmp_path / f"r{i}.jsonl", 50, f"round{i}") for i in (1, 2)]
    output = tmp_path / "mixed.jsonl"
    counts = dagger.mix_training_data(rounds, imitation, output, 2.0, seed=5)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    tags = [row["tag"] for row in rows]
    assert tags.count("round1") == tags.count("round2") == 50 == counts["round_rows"] / 2
    assert counts["imitation_keep_probability"] == 0.2 and 150 < tags.count("imitation") < 250
    assert counts["imitation_rows"] == tags.count("imitation") and counts["imitation_available"] == 1000
    first = output.read_bytes()
    dagger.mix_training_data(rounds, imitation, output, 2.0, seed=5)
    assert output.read_bytes() == first  # seeded
    assert dagger.mix_training_data(rounds, imitation, output, None, seed=5)["imitation_rows"] == 1000
    assert dagger.mix_training_data(rounds[1:], imitation, output, 0.0, seed=5)["imitation_rows"] == 0


# --------------------------------------------------------------------------
# The whole loop


@pytest.fixture(scope="module")
def stand_in_checkpoint(imitation, tmp_path_factory, torch_one_thread):
    """A tiny model trained for one step on the imitation data, saved by train.py."""
    folder = tmp_path_factory.mktemp("checkpoint")
    model = folder / "tiny-model.json"
    model.write_text(json.dumps(TINY_MODEL))
    overrides = [f"train_file={imitation[1]}", f"model_config={model}", f"output_dir={folder}", "run_name=start",
                 "init_from=null", *FAST_TRAINING, "max_steps=1"]
    argv = ["--config", str(REPO / dagger.DEFAULT_CONFIG)]
    for override in overrides:
        argv += ["-o", override]
    assert train.main(argv) == 0
    return folder / "start" / "final"


def check_loop_folder(output_dir: Path, start_checkpoint) -> dict:
    """The log and files of a finished 2-iteration loop; returns the log."""
    log = json.loads((output_dir / dagger.LOG_NAME).read_text())
    assert log["complete"] and [entry["iteration"] for entry in log["iterations"]] == [1, 2]
    checkpoint = str(start_checkpoint)
    for entry in log["iterations"]:
        assert entry["complete"] and entry["checkpoint_in"] == checkpoint
        assert [step["name"] for step in entry["steps"]] == ["traces", "relabel", "convert", "mix", "train"]
        assert all(step["status"] == "ok" for step in entry["steps"])
        checkpoint = entry["checkpoint_out"]
        assert (Path(checkpoint) / train.CHECKPOINT_META).exists()
        folder = Path(entry["folder"])
        relabelled = file_io.load(folder / "traces.dagger.pkl.gz")
        assert relabelled.metadata["dagger"] is True
        assert all("dagger_expressions" in trace for trace in relabelled.records)
        mix = entry["steps"][3]
        assert mix["round_rows"] > 0 and len(mix["rounds"]) == entry["iteration"]  # aggregate
        meta = json.loads((Path(checkpoint) / train.CHECKPOINT_META).read_text())
        assert meta["train_file"] == str(folder / "data" / "mixed.train.jsonl")
    assert log["final_checkpoint"] == checkpoint
    return log


GENERATE_TRACES = gt.main  # the real one, whatever a test has patched in


def stand_in_rollouts(calls: list, solved=None, fail_on: int | None = None):
    """generate_traces.main with BasicSR traces standing in for NeuralSR's rollouts (same file format).

    Each call's argv goes to `calls`; with `solved`, each trace's solved flag
    becomes solved(expression id); call number `fail_on` exits 2 after writing.
    """
    def rollouts(argv):
        calls.append(list(argv))
        argv = list(argv)
        for flag in ("--checkpoint", "--batch_size"):
            index = argv.index(flag)
            del argv[index:index + 2]
        status = GENERATE_TRACES(argv)
        if solved is not None:
            output = argv[argv.index("--output") + 1]
            loaded = file_io.load(output, kind="traces")
            records = [{**trace, "solved": solved(trace["expression_id"])} for trace in loaded.records]
            file_io.save(output, "traces", records, loaded.metadata)
        return 2 if len(calls) == fail_on else status

    return rollouts


def test_loop_runs_every_stage_with_a_stand_in_learner(imitation, stand_in_checkpoint, tmp_path, monkeypatch,
                                                       capsys):
    """BasicSR traces stand in for the NeuralSR rollouts; relabel, convert, mix and fine-tune are the real ones."""
    calls = []
    monkeypatch.setattr(gt, "main", stand_in_rollouts(calls))
    output_dir = tmp_path / "loop"
    overrides = [item for override in FAST_TRAINING for item in ("-o", override)]
    assert dagger.main(loop_args(imitation, stand_in_checkpoint, output_dir, *overrides)) == 0
    log = check_loop_folder(output_dir, stand_in_checkpoint)
    assert calls[1][calls[1].index("--checkpoint") + 1] == log["iterations"][0]["checkpoint_out"]
    assert "2 iterations complete" in capsys.readouterr().out
    # The log refuses a second run into the same folder; --resume finds nothing left to do.
    assert dagger.main(loop_args(imitation, stand_in_checkpoint, output_dir, *overrides)) == 2
    assert "--resume" in capsys.readouterr().err
    assert dagger.main(loop_args(imitation, stand_in_checkpoint, output_dir, "--resume", *overrides)) == 0
    assert len(calls) == 2


def test_resume_redoes_an_unfinished_iteration(imitation, stand_in_checkpoint, tmp_path, monkeypatch, capsys):
    """Iteration 2 dies after writing its traces; --resume keeps iteration 1 and redoes 2, replacing its files."""
    calls = []
    monkeypatch.setattr(gt, "main", stand_in_rollouts(calls, fail_on=2))
    output_dir = tmp_path / "loop"
    overrides = [item for override in FAST_TRAINING for item in ("-o", override)]
    assert dagger.main(loop_args(imitation, stand_in_checkpoint, output_dir, *overrides)) == 2
    assert "iteration 2, stage traces failed" in capsys.readouterr().err
    assert (output_dir / "iter02" / "traces.pkl.gz").exists()
    monkeypatch.setattr(gt, "main", stand_in_rollouts(calls))
    assert dagger.main(loop_args(imitation, stand_in_checkpoint, output_dir, "--resume", *overrides)) == 0
    log = check_loop_folder(output_dir, stand_in_checkpoint)
    assert [entry["iteration"] for entry in log["abandoned"]] == [2]
    assert len(calls) == 3 and "--overwrite" in calls[2] and "--overwrite" not in calls[0]


def test_expert_iteration_dry_run_has_no_expert_and_keeps_the_solved_runs(imitation, tmp_path, capsys):
    output_dir = tmp_path / "loop"
    start = checkpoint_stub(tmp_path / "ckpt" / "final")
    assert dagger.main(loop_args(imitation, start, output_dir, "--dry_run", "--method", "expert_iteration")) == 0
    commands = [line for line in capsys.readouterr().out.strip().splitlines() if not line.startswith("# iteration")]
    scripts = [line.split()[1] if not line.startswith("#") else "mix" for line in commands]
    assert scripts == ["generate_traces.py", "one_step_conversion.py", "mix", "train.py"] * 2
    convert = shlex.split(commands[1])
    assert {"--solved_only", "--ancestors_only"} <= set(convert) and "--dagger" not in convert
    assert convert[convert.index("--input") + 1] == str(output_dir / "iter01" / "traces.pkl.gz")
    assert str(output_dir / "iter01" / "data" / "solved.train.jsonl") in commands[6]  # aggregate: round 1 too
    assert f"val_file={output_dir / 'iter02' / 'data' / 'solved.val.jsonl'}" in commands[7]
    assert dagger.main(loop_args(imitation, start, output_dir, "--dry_run", "--method", "expert_iteration",
                                 "--ei_targets", "all")) == 0
    convert = shlex.split(capsys.readouterr().out.strip().splitlines()[2])
    assert "--solved_only" in convert and "--ancestors_only" not in convert
    assert dagger.main(loop_args(imitation, start, output_dir, "--dry_run", "--ei_targets", "all")) == 2
    assert "--method expert_iteration" in capsys.readouterr().err


def test_expert_iteration_tunes_on_the_solved_rollouts_only(imitation, stand_in_checkpoint, tmp_path, monkeypatch,
                                                            capsys):
    """Two rounds with stand-in rollouts, even expression ids flagged solved: the rounds' rows come from those."""
    calls = []
    monkeypatch.setattr(gt, "main", stand_in_rollouts(calls, lambda expression_id: expression_id % 2 == 0))
    output_dir = tmp_path / "loop"
    overrides = [item for override in FAST_TRAINING for item in ("-o", override)]
    argv = loop_args(imitation, stand_in_checkpoint, output_dir, "--method", "expert_iteration", "--val_fraction",
                     "0.2", *overrides)
    assert dagger.main(argv) == 0
    assert "examples from solved rollouts" in capsys.readouterr().out
    log = json.loads((output_dir / dagger.LOG_NAME).read_text())
    assert log["complete"] and log["parameters"]["ei_targets"] == "ancestors"
    checkpoint = str(stand_in_checkpoint)
    for entry in log["iterations"]:
        assert [step["name"] for step in entry["steps"]] == ["traces", "convert", "mix", "train"]
        assert entry["checkpoint_in"] == checkpoint
        checkpoint = entry["checkpoint_out"]
        folder = Path(entry["folder"])
        assert not (folder / "traces.dagger.pkl.gz").exists()
        traces = {t["expression_id"]: t for t in file_io.load(folder / "traces.pkl.gz").records}
        rows = [row for part in ("train", "val")
                for row in file_io.read_jsonl(folder / "data" / f"solved.{part}.jsonl")]
        assert rows and {row["expression_id"] % 2 for row in rows} == {0}
        for row in rows:  # --ei_targets ancestors: the moves that led to the final best
            ancestry = traces[row["expression_id"]]["trajectory"]["ancestors_of_best"]
            assert row["metadata"]["target_index"] in ancestry[row["metadata"]["generation"]]
        mix = entry["steps"][2]
        assert mix["round_rows"] > 0 and len(mix["rounds"]) == entry["iteration"]
        assert entry["summary"]["round_examples"] == len(rows) and "expert_labels" not in entry["summary"]
    assert log["final_checkpoint"] == checkpoint and len(calls) == 2
    # Resuming with the other method is refused: the log names what differs.
    assert dagger.main(loop_args(imitation, stand_in_checkpoint, output_dir, "--resume", "--val_fraction", "0.2",
                                 *overrides)) == 2
    assert "method" in capsys.readouterr().err


def test_expert_iteration_with_nothing_solved_stops_before_training(imitation, stand_in_checkpoint, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setattr(gt, "main", stand_in_rollouts([], lambda expression_id: False))
    output_dir = tmp_path / "loop"
    overrides = [item for override in FAST_TRAINING for item in ("-o", override)]
    assert dagger.main(loop_args(imitation, stand_in_checkpoint, output_dir, "--method", "expert_iteration",
                                 *overrides)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: iteration 1, stage mix: the rounds hold no training rows") and "solved" in err[-1]
    log = json.loads((output_dir / dagger.LOG_NAME).read_text())
    assert [step["status"] for step in log["iterations"][0]["steps"]] == ["ok", "ok", "failed"]
    assert not (output_dir / "iter01" / "train").exists()


def test_a_failing_stage_stops_the_loop_with_its_error_and_a_log(imitation, stand_in_checkpoint, tmp_path, capsys):
    """generate_traces.py exits 2 on a checkpoint without weights: the loop says where and stops.

    (A folder that is plainly no checkpoint is refused before iteration 1: test_bad_inputs_...)"""
    not_a_checkpoint = checkpoint_stub(tmp_path / "not_a_checkpoint")
    output_dir = tmp_path / "loop"
    assert dagger.main(loop_args(imitation, not_a_checkpoint, output_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: iteration 1, stage traces failed (exit 2)")
    log = json.loads((output_dir / dagger.LOG_NAME).read_text())
    assert not log["complete"] and log["iterations"][0]["steps"][0]["status"] == "failed"


def test_dagger_loop_end_to_end_with_neural_sr(imitation, tmp_path, request, torch_one_thread):
    """Two iterations with a tiny random-weight model: real NeuralSR rollouts, CPU, short."""
    pytest.importorskip("neural_sr", reason="NeuralSR (issue 6, helper A) is not in this tree yet")
    checkpoint = request.getfixturevalue("tiny_checkpoint")
    positions = json.loads((Path(checkpoint) / "config.json").read_text()).get("max_position_embeddings", 1024)
    output_dir = tmp_path / "loop"
    overrides = [item for override in [*FAST_TRAINING, f"max_length={min(1024, positions)}"]
                 for item in ("-o", override)]
    assert dagger.main(loop_args(imitation, checkpoint, output_dir, *overrides)) == 0
    log = check_loop_folder(output_dir, checkpoint)
    for entry in log["iterations"]:
        traces = file_io.load(Path(entry["folder"]) / "traces.pkl.gz")
        assert traces.metadata.get("method") == "neural" and traces.metadata.get("checkpoint")
