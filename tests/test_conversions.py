"""The three trace conversions (one-step, autoregressive, direct) on a small generated dataset."""

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import autoreg_conversion
import conversion_common as cc
import direct_conversion
import file_io
import format_utils as fu
import generate_expressions as ge
import generate_traces as gt
import inspect_dataset
import one_step_conversion
import tokenizer as tk
import train
from basic_sr import BasicSR
from trajectory import population_at

REPO = Path(__file__).resolve().parent.parent
POPULATION, GENERATIONS = 20, 15


# --------------------------------------------------------------------------
# A small generated dataset and helpers


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(expressions file, traces file) made by the real generators: 6 expressions, <= 3 variables."""
    folder = tmp_path_factory.mktemp("conversions")
    params = ge.ExpressionParams(binary_ops=("+", "-", "*", "/"), max_vars=3)
    records, metadata = ge.generate_expressions(6, params, seed=0, argv=["generate_expressions.py"])
    expressions = file_io.save(folder / "expr_6.pkl.gz", "expressions", records, metadata)
    traces = folder / "gen15_expr_6.pkl.gz"
    assert gt.main(["--expressions_file", str(expressions), "--output", str(traces), "--quiet",
                    "--population_size", str(POPULATION), "--num_generations", str(GENERATIONS)]) == 0
    return expressions, traces


@pytest.fixture(scope="module")
def traces(data):
    return cc.load_traces(data[1])[0]


def run(module, *args) -> int:
    """A conversion's main([...]); exit status (data errors exit through SystemExit)."""
    try:
        return module.main([str(a) for a in args])
    except SystemExit as exit:
        return exit.code


def rows_of(path) -> list[dict]:
    return list(file_io.read_jsonl(path))


def sidecar(path) -> dict:
    return json.loads(cc.sidecar_path(path).read_text())


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def convert(module, tmp_path, input_path, *args, name="out.jsonl"):
    """Run a conversion into tmp_path; returns the output path (asserting success)."""
    output = tmp_path / name
    assert run(module, "--input", input_path, "--output", output, "--quiet", *args) == 0
    return output


@pytest.fixture(scope="module")
def one_step_basic(data, tmp_path_factory):
    """The default one-step conversion (basic context) and its rows."""
    folder = tmp_path_factory.mktemp("one_step")
    output = convert(one_step_conversion, folder, data[1])
    return output, rows_of(output)


# --------------------------------------------------------------------------
# One-step


def test_one_step_rows_hold_the_state_before_and_a_child_after(one_step_basic, traces, data):
    output, rows = one_step_basic
    by_id = {t["expression_id"]: t for t in traces}
    assert len(rows) == sum(t["n_generations"] for t in traces) * (POPULATION - 1)
    for row in rows:
        assert list(row) == ["context", "population", "target", "expression_id", "metadata"]
        trajectory = by_id[row["expression_id"]]["trajectory"]
        meta = row["metadata"]
        generation, slot = meta["generation"], meta["target_index"]
        assert generation >= 1 and slot >= 1 and meta["source"] == data[1].name
        assert row["context"].startswith(f"gen:{generation - 1}vars:")
        previous = generation - 1
        assert row["population"] == fu.format_population(population_at(trajectory, previous),
                                                         trajectory["fitnesses"][previous])
        child = population_at(trajectory, generation)[slot]
        assert fu.parse_generated(row["target"]) == child and row["target"] == fu.format_target(child)
        assert meta["origin"] == trajectory["origin_names"][trajectory["origins"][generation, slot]] != "elite"
    meta = sidecar(output)
    assert meta["counts"]["examples"] == len(rows) and meta["counts"]["expressions"] == len(traces)
    assert meta["counts"]["skipped"] == {"dropped_elite_copies": sum(t["n_generations"] for t in traces)}
    assert meta["metadata"]["command"].startswith("python one_step_conversion.py --input")
    assert [s["kind"] for s in meta["sources"]] == ["traces"] and len(meta["sources"][0]["sha256"]) == 64
    stats = meta["token_statistics"]
    assert stats["sampled_examples"] == min(len(rows), cc.TOKEN_SAMPLE)
    assert 0 < stats["target_tokens"]["mean"] <= stats["target_tokens"]["max"] < stats["prompt_tokens"]["max"]


def test_one_step_lines_are_the_bytes_of_json_dumps(traces):
    context = fu.problem_context("basic", 3, ("+", "-", "*", "/"), (), (1.0,))
    for options in (one_step_conversion.OneStepOptions(),
                    one_step_conversion.OneStepOptions(keep_elite_copies=True, sample_fraction=0.5)):
        for trace in traces:
            rows = list(one_step_conversion.one_step_examples(trace, context, options, "dir/t.pkl.gz"))
            lines = list(one_step_conversion.one_step_lines(trace, context, options, "dir/t.pkl.gz"))
            assert lines == [json.dumps(row, ensure_ascii=False) for row in rows] and rows


def test_worker_processes_do_not_change_the_output(data, tmp_path):
    for module, args in ((one_step_conversion, ["--split", "--val_fraction", "0.5", "--sample_fraction", "0.5"]),
                         (autoreg_conversion, []), (direct_conversion, ["--inline_data"])):
        source = data[0] if module is direct_conversion else data[1]
        name = module.__name__
        one = convert(module, tmp_path, source, *args, name=f"{name}_1.jsonl")
        two = convert(module, tmp_path, source, *args, "--workers", "2", name=f"{name}_2.jsonl")
        for part in ([".train", ".val"] if "--split" in args else [""]):
            first, second = (Path(str(p).replace(".jsonl", f"{part}.jsonl")) for p in (one, two))
            assert first.read_bytes() == second.read_bytes() and first.stat().st_size
            assert sidecar(first)["counts"] == sidecar(second)["counts"]


def test_keep_elite_copies_keeps_slot_zero(data, traces, tmp_path):
    rows = rows_of(convert(one_step_conversion, tmp_path, data[1], "--keep_elite_copies"))
    assert len(rows) == sum(t["n_generations"] for t in traces) * POPULATION
    elites = [row for row in rows if row["metadata"]["target_index"] == 0]
    assert elites and all(row["metadata"]["origin"] == "elite" for row in elites)


def test_ancestors_only_targets_are_ancestors_of_the_final_best(data, traces, tmp_path):
    output = convert(one_step_conversion, tmp_path, data[1], "--ancestors_only")
    assert output.name == "out.jsonl"
    rows = rows_of(output)
    by_id = {t["expression_id"]: t["trajectory"] for t in traces}
    expected = {(t["expression_id"], g, slot) for t in traces
                for g, slots in enumerate(t["trajectory"]["ancestors_of_best"]) if g >= 1 for slot in slots if slot}
    found = {(r["expression_id"], r["metadata"]["generation"], r["metadata"]["target_index"]) for r in rows}
    assert found == expected and rows
    for row in rows:
        assert row["metadata"]["target_index"] in by_id[row["expression_id"]]["ancestors_of_best"][
            row["metadata"]["generation"]]


def test_solved_only_keeps_the_solved_runs_and_counts_the_others(data, traces, tmp_path):
    """Expert iteration's filter: rows only from traces flagged solved; with --ancestors_only, their ancestry."""
    flagged = [{**trace, "solved": index in (1, 4)} for index, trace in enumerate(traces)]
    source = tmp_path / "flagged.pkl.gz"
    file_io.save(source, "traces", flagged, file_io.load(data[1]).metadata)
    solved_ids = {flagged[1]["expression_id"], flagged[4]["expression_id"]}
    everything = rows_of(convert(one_step_conversion, tmp_path, source, name="all.jsonl"))
    output = convert(one_step_conversion, tmp_path, source, "--solved_only", name="solved.jsonl")
    rows = rows_of(output)
    assert rows and rows == [row for row in everything if row["expression_id"] in solved_ids]
    assert sidecar(output)["counts"]["skipped"]["unsolved_traces"] == len(traces) - 2
    assert sidecar(output)["metadata"]["parameters"]["solved_only"] is True
    ancestry = rows_of(convert(one_step_conversion, tmp_path, source, "--solved_only", "--ancestors_only",
                               name="solved_anc.jsonl"))
    all_ancestry = rows_of(convert(one_step_conversion, tmp_path, source, "--ancestors_only", name="anc.jsonl"))
    assert ancestry and ancestry == [row for row in all_ancestry if row["expression_id"] in solved_ids]


def test_solved_only_refuses_dagger_and_traces_without_the_flag(data, traces, tmp_path, capsys):
    assert run(one_step_conversion, "--input", data[1], "--output", tmp_path / "d.jsonl", "--dagger",
               "--solved_only") == 2
    assert "--solved_only" in one_error_line(capsys)
    unflagged = [{k: v for k, v in trace.items() if k != "solved"} for trace in traces]
    source = tmp_path / "unflagged.pkl.gz"
    file_io.save(source, "traces", unflagged, file_io.load(data[1]).metadata)
    assert run(one_step_conversion, "--input", source, "--output", tmp_path / "u.jsonl", "--solved_only",
               "--quiet") == 2
    line = one_error_line(capsys)
    assert str(source) in line and "solved" in line
    assert not (tmp_path / "u.jsonl").exists()


def test_sample_fraction_is_seeded_per_expression(data, traces, tmp_path):
    first = convert(one_step_conversion, tmp_path, data[1], "--sample_fraction", "0.3", "--seed", "7", name="a.jsonl")
    again = convert(one_step_conversion, tmp_path, data[1], "--sample_fraction", "0.3", "--seed", "7", name="b.jsonl")
    other = convert(one_step_conversion, tmp_path, data[1], "--sample_fraction", "0.3", "--seed", "8", name="c.jsonl")
    assert first.read_bytes() == again.read_bytes() != other.read_bytes()
    total = sum(t["n_generations"] for t in traces) * (POPULATION - 1)
    kept = len(rows_of(first))
    assert abs(kept / total - 0.3) < 0.06
    assert sidecar(first)["counts"]["skipped"]["sampled_out"] == total - kept
    # The same rows for an expression whatever else is converted with it, and in which order.
    context = fu.problem_context("basic", 3, ("+", "-", "*", "/"), (), (1.0,))
    options = one_step_conversion.OneStepOptions(sample_fraction=0.3, seed=7)
    alone = [row for trace in traces[::-1] for row in one_step_conversion.one_step_examples(trace, context, options)]
    key = lambda r: (r["expression_id"], r["metadata"]["generation"], r["metadata"]["target_index"])
    assert sorted(map(key, alone)) == sorted(map(key, rows_of(first)))
    # An expression whose rows are all sampled out is not counted as one the data holds.
    sparse = convert(one_step_conversion, tmp_path, data[1], "--sample_fraction", "0.002", name="d.jsonl")
    held = {row["expression_id"] for row in rows_of(sparse)}
    assert len(held) < len(traces) and sidecar(sparse)["counts"]["expressions"] == len(held)


def test_split_is_disjoint_by_expression_and_the_same_for_every_conversion(data, tmp_path):
    split = ("--split", "--val_fraction", "0.5", "--seed", "3")
    ids = {}
    for module, source in ((one_step_conversion, data[1]), (autoreg_conversion, data[1]),
                           (direct_conversion, data[0])):
        output = convert(module, tmp_path, source, *split, name=f"{module.__name__}.jsonl")
        assert not output.exists()
        base = output.with_suffix("")
        train, val = (base.with_name(base.name + f".{part}.jsonl") for part in ("train", "val"))
        train_ids = {r["expression_id"] for r in rows_of(train)}
        val_ids = {r["expression_id"] for r in rows_of(val)}
        assert train_ids and val_ids and not train_ids & val_ids and len(train_ids | val_ids) == 6
        meta = sidecar(val)
        assert meta["part"] == "val" and meta["counts"]["expressions"] == len(val_ids)
        assert meta["counts"]["all_parts"]["expressions"] == 6
        ids[module.__name__] = val_ids
        expected = {i for i in range(6) if cc.is_validation(3, i, 0.5)}
        assert val_ids == expected
    assert len({frozenset(v) for v in ids.values()}) == 1


@pytest.mark.parametrize("module", [one_step_conversion, autoreg_conversion])
def test_default_output_path_with_split_writes_data_and_sidecars(module, data, tmp_path, monkeypatch):
    # Regression: a defaulted --output (a Path) once crashed the sidecar's JSON.
    monkeypatch.chdir(tmp_path)
    assert run(module, "--input", data[1], "--split", "--quiet") == 0
    written = sorted(p.name for p in (tmp_path / "datasets" / "training").glob("*.jsonl"))
    assert len(written) == 2 and written[0].endswith(".train.jsonl") and written[1].endswith(".val.jsonl")
    for name in written:
        meta = sidecar(tmp_path / "datasets" / "training" / name)
        assert meta["metadata"]["parameters"]["output"] is None or isinstance(meta["metadata"]["parameters"]["output"], str)


def test_restart_children_are_not_targets(traces):
    trace = {**traces[0], "trajectory": dict(traces[0]["trajectory"])}
    trajectory = trace["trajectory"]
    trajectory["origin_names"] = [*trajectory["origin_names"], "restart"]
    trajectory["origins"] = trajectory["origins"].copy()
    trajectory["origins"][4, 1:] = len(trajectory["origin_names"]) - 1
    context = fu.problem_context("basic", 3, ("+", "-", "*", "/"), (), (1.0,))
    counts = Counter()
    rows = list(one_step_conversion.one_step_examples(trace, context, counts=counts))
    assert counts["skipped_restarts"] == POPULATION - 1
    assert not [r for r in rows if r["metadata"]["generation"] == 4]
    counts = Counter()
    rows = list(autoreg_conversion.autoreg_examples(trace, context, counts=counts))
    assert counts["skipped_restart_generations"] == 1 and 4 not in [r["metadata"]["generation"] for r in rows]


# --------------------------------------------------------------------------
# DAgger


def test_dagger_without_labels_or_with_ancestors_only_exits_2(data, tmp_path, capsys):
    assert run(one_step_conversion, "--input", data[1], "--output", tmp_path / "d.jsonl", "--dagger") == 2
    line = one_error_line(capsys)
    assert str(data[1]) in line and "dagger_expressions" in line
    assert run(one_step_conversion, "--input", data[1], "--output", tmp_path / "d.jsonl", "--dagger",
               "--ancestors_only") == 2
    assert "--ancestors_only" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_dagger_targets_come_from_the_labels(data, traces, tmp_path):
    labelled = []
    for index, trace in enumerate(traces):
        trajectory = trace["trajectory"]
        n_states = len(trajectory["population"])
        labels = [None]
        for generation in range(1, n_states):
            previous = population_at(trajectory, generation - 1)
            best = previous[int(np.argmax(trajectory["fitnesses"][generation - 1]))]
            others = [("+", *tree, 1.0) for tree in previous[:3]]
            entry = [best, *others]
            # Text labels (printed or model text) are accepted as well as prefix tuples.
            labels.append([fu.expression_to_model_text(t) for t in entry] if index % 2 else entry)
        labelled.append({**trace, "dagger_expressions": labels})
    labelled[-1] = {k: v for k, v in labelled[-1].items() if k != "dagger_expressions"}
    source = tmp_path / "dagger_traces.pkl.gz"
    loaded = file_io.load(data[1])
    file_io.save(source, "traces", labelled, loaded.metadata)
    output = convert(one_step_conversion, tmp_path, source, "--dagger")
    rows = rows_of(output)
    skipped = sidecar(output)["counts"]["skipped"]
    n_labelled = sum(t["n_generations"] for t in traces[:-1])
    assert len(rows) == 3 * n_labelled
    assert skipped == {"dropped_elite_copies": n_labelled, "traces_without_dagger_labels": 1}
    by_id = {t["expression_id"]: t for t in labelled}
    for row in rows:
        generation, slot = row["metadata"]["generation"], row["metadata"]["target_index"]
        label = by_id[row["expression_id"]]["dagger_expressions"][generation][slot]
        assert fu.parse_generated(row["target"]) == fu.model_text_to_expression(fu.expression_to_model_text(label))
        assert row["metadata"]["origin"] == "dagger" and slot >= 1
        assert row["context"].startswith(f"gen:{generation - 1}")  # the learner's state the expert answered


def test_dagger_origins_name_the_elite_copy_and_restarts(traces):
    trace = traces[0]
    trajectory = trace["trajectory"]
    n_states = len(trajectory["population"])
    entry = [("x0",), ("+", "x0", 1.0), ("*", "x0", "x0"), "x0 - 1.0"]
    labelled = {**trace, "dagger_expressions": [None] + [entry] * (n_states - 1),
                "dagger_origins": [None] + [["crossover", "elite", "restart", "mutation_point"]] * (n_states - 1)}
    context = fu.problem_context("basic", 3, ("+", "-", "*", "/"), (), (1.0,))
    options = one_step_conversion.OneStepOptions(dagger=True)
    counts = Counter()
    rows = list(one_step_conversion.one_step_examples(labelled, context, options, counts=counts))
    assert [r["metadata"]["origin"] for r in rows[:2]] == ["crossover", "mutation_point"]
    assert [r["target"] for r in rows[:2]] == ["x0<EOS>", "(x0-1.0)<EOS>"]
    assert counts == {"dropped_elite_copies": n_states - 1, "skipped_restarts": n_states - 1}
    broken = {**labelled, "dagger_expressions": labelled["dagger_expressions"][:-1]}
    with pytest.raises(file_io.DataFileError, match="one per generation"):
        list(one_step_conversion.one_step_examples(broken, context, options, "t.pkl.gz"))
    unreadable = {**labelled, "dagger_expressions": [None] + [["((x0+"] * 4] * (n_states - 1)}
    with pytest.raises(file_io.DataFileError, match="t.pkl.gz: expression .* generation 1: unreadable"):
        list(one_step_conversion.one_step_examples(unreadable, context, options, "t.pkl.gz"))


# --------------------------------------------------------------------------
# Autoregressive and direct


def test_autoreg_target_is_the_next_population_without_the_elite_copy(data, traces, tmp_path):
    output = convert(autoreg_conversion, tmp_path, data[1], "--context_type", "rich")
    rows = rows_of(output)
    assert len(rows) == sum(t["n_generations"] for t in traces)
    by_id = {t["expression_id"]: t["trajectory"] for t in traces}
    for row in rows:
        trajectory, generation = by_id[row["expression_id"]], row["metadata"]["generation"]
        assert fu.parse_generated_population(row["target"]) == population_at(trajectory, generation)[1:]
        assert row["metadata"]["n_targets"] == POPULATION - 1
        assert row["context"].startswith(f"gen:{generation - 1}") and "range:" in row["context"]
    assert [s["kind"] for s in sidecar(output)["sources"]] == ["traces", "expressions"]
    kept = rows_of(convert(autoreg_conversion, tmp_path, data[1], "--keep_elite_copies", name="k.jsonl"))
    assert all(len(fu.parse_generated_population(r["target"])) == POPULATION for r in kept)


def test_direct_by_reference_and_inline(data, tmp_path):
    expressions_path, traces_path = data
    by_id, _ = cc.load_expressions(expressions_path)
    rows = rows_of(convert(direct_conversion, tmp_path, expressions_path, name="ref.jsonl"))
    assert [r["expression_id"] for r in rows] == sorted(by_id)
    for row in rows:
        record = by_id[row["expression_id"]]
        assert row["data_ref"] == {"file": str(expressions_path), "id": row["expression_id"]}
        assert row["target"] == fu.format_target(record["expression"]) and fu.parse_generated(row["target"])
        assert row["n_vars"] == record["n_vars"] and row["n_points"] == len(record["y"]) and "X" not in row
    inline = rows_of(convert(direct_conversion, tmp_path, traces_path, "--inline_data", "--max_points", "10",
                             name="inline.jsonl"))
    assert len(inline) == len(by_id)
    for row in inline:
        record = by_id[row["expression_id"]]
        X, y = np.array(row["X"], dtype=np.float32), np.array(row["y"], dtype=np.float32)
        assert X.shape == (10, record["n_vars"]) and y.shape == (10,)
        assert np.array_equal(X, record["X"][:10]) and np.array_equal(y, record["y"][:10])
    assert "data_ref" not in inline[0] and inline[0]["metadata"]["source"] == traces_path.name


@pytest.mark.parametrize("module", [one_step_conversion, autoreg_conversion, direct_conversion])
def test_minimal_parentheses_write_the_same_expressions_in_fewer_tokens(module, data, tmp_path):
    source = data[0] if module is direct_conversion else data[1]
    full = rows_of(convert(module, tmp_path / "full", source))
    output = convert(module, tmp_path / "minimal", source, "--parentheses", "minimal")
    minimal = rows_of(output)
    assert len(minimal) == len(full) > 0
    read = fu.parse_generated if module is not autoreg_conversion else fu.parse_generated_population
    for a, b in zip(full, minimal):
        assert read(b["target"]) == read(a["target"]) and len(b["target"]) <= len(a["target"])
        if module is not direct_conversion:
            population = [fu.parse_generated(p.split(fu.FITNESS)[0]) for p in b["population"].split(";")]
            assert population == [fu.parse_generated(p.split(fu.FITNESS)[0]) for p in a["population"].split(";")]
            assert b["context"] == a["context"]
    trees = [fu.parse_generated(row["target"]) for row in minimal] if module is not autoreg_conversion else []
    assert all(row["target"] == fu.format_target(tree, "minimal") for row, tree in zip(minimal, trees))
    assert sum(b["target"].count("(") for b in minimal) < sum(a["target"].count("(") for a in full)
    meta = sidecar(output)
    assert meta["metadata"]["parameters"]["parentheses"] == "minimal"
    assert sidecar(tmp_path / "full" / "out.jsonl")["metadata"]["parameters"]["parentheses"] == "full"
    assert meta["token_statistics"]["target_tokens"]["mean"] < sidecar(
        tmp_path / "full" / "out.jsonl")["token_statistics"]["target_tokens"]["mean"]
    assert train.training_prompt_settings(output)["parentheses"] == "minimal"


# --------------------------------------------------------------------------
# What the model sees


def test_tokenizer_round_trips_every_example(data, one_step_basic, tmp_path):
    outputs = [one_step_basic[0],
               convert(one_step_conversion, tmp_path, data[1], "--context_type", "superrich", name="s.jsonl"),
               convert(autoreg_conversion, tmp_path, data[1], name="a.jsonl"),
               convert(direct_conversion, tmp_path, data[0], name="d.jsonl")]
    for output in outputs:
        tokenizer = tk.load_tokenizer(output.parent / "tokenizer")
        rows = rows_of(output)
        texts = [cc.prompt_target(r) if "context" in r else cc.target_only(r) for r in rows]
        texts = [prompt + target for prompt, target in texts]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for text, text_ids in zip(texts, ids):
            assert tokenizer.unk_token_id not in text_ids
            assert tokenizer.decode(text_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text


class RecordingSR(BasicSR):
    """BasicSR that keeps every state it updates from, as NeuralSR sees them (float64 fitnesses)."""

    def generate_new_population(self, population, fitnesses, generation):
        self.live_states.append((generation - 1, list(population), np.array(fitnesses, dtype=np.float64)))
        return super().generate_new_population(population, fitnesses, generation)


@pytest.mark.parametrize("context_type", ["basic", "superrich"])
def test_training_prompt_equals_the_live_inference_prompt(data, traces, tmp_path, context_type):
    rows = rows_of(convert(one_step_conversion, tmp_path, data[1], "--context_type", context_type))
    metadata = file_io.load(data[1]).metadata
    params = metadata["basic_sr_params"]
    records, _ = cc.load_expressions(data[0])
    for trace in traces[:3]:
        record = records[trace["expression_id"]]
        model = RecordingSR(**params, seed=trace["seed"], collect_trajectory=True)
        model.live_states = []
        model.fit(record["X"], record["y"])
        assert model.best_expression_ == trace["final_expression"]  # the same run as the trace
        training = {r["metadata"]["generation"]: fu.build_prompt(r["context"], r["population"])
                    for r in rows if r["expression_id"] == trace["expression_id"]}
        assert len(model.live_states) == len(training) == trace["n_generations"]
        for generation, population, fitnesses in model.live_states:
            # What the search itself holds: float64 data, float64 fitnesses, its own settings.
            state = fu.PromptState(generation, population, fitnesses, model.n_features_in_,
                                   tuple(model.binary_operators), tuple(model.unary_operators),
                                   tuple(model.constants), np.asarray(record["X"], dtype=np.float64),
                                   np.asarray(record["y"], dtype=np.float64), context_type)
            assert fu.prompt_for_state(state, fu.ContextCache()) == training[generation + 1]


# --------------------------------------------------------------------------
# Bad input, files, CLI


@pytest.mark.parametrize("module", [one_step_conversion, autoreg_conversion])
def test_an_expressions_file_where_traces_are_expected_exits_2(module, data, tmp_path, capsys):
    assert run(module, "--input", data[0], "--output", tmp_path / "x.jsonl") == 2
    line = one_error_line(capsys)
    assert str(data[0]) in line and "'traces'" in line and "'expressions'" in line


def test_bad_files_exit_2_with_one_line_naming_the_file(data, tmp_path, capsys):
    empty = tmp_path / "empty.pkl.gz"
    empty.write_bytes(b"")
    not_gzip = tmp_path / "rows.jsonl"
    not_gzip.write_text('{"a": 1}\n')
    for module in (one_step_conversion, autoreg_conversion, direct_conversion):
        for bad in (empty, not_gzip, tmp_path / "missing.pkl.gz"):
            assert run(module, "--input", bad, "--output", tmp_path / "o.jsonl") == 2
            assert str(bad) in one_error_line(capsys)
    evaluation = file_io.save(tmp_path / "eval.pkl.gz", "evaluation", [], {})
    assert run(direct_conversion, "--input", evaluation, "--output", tmp_path / "o.jsonl") == 2
    assert "'evaluation'" in one_error_line(capsys)
    assert not (tmp_path / "o.jsonl").exists()


def test_rich_context_needs_the_expressions_file(data, tmp_path, capsys):
    traces_copy = tmp_path / data[1].name
    shutil.copy(data[1], traces_copy)
    moved = tmp_path / "moved"
    moved.mkdir()
    hidden = moved / "elsewhere.pkl.gz"
    shutil.copy(data[0], hidden)
    metadata = file_io.load(traces_copy).metadata
    file_io.save(traces_copy, "traces", file_io.load(traces_copy).records,
                 {**metadata, "expressions_file": str(tmp_path / "gone.pkl.gz")})
    assert run(one_step_conversion, "--input", traces_copy, "--output", tmp_path / "r.jsonl",
               "--context_type", "rich") == 2
    assert "--expressions_file" in one_error_line(capsys)
    assert convert(one_step_conversion, tmp_path, traces_copy, "--context_type", "rich",
                   "--expressions_file", hidden, name="r.jsonl").exists()
    wrong = tmp_path / "wrong.pkl.gz"
    records, meta = file_io.load(data[0])
    file_io.save(wrong, "expressions", records[:-1], meta)
    assert run(one_step_conversion, "--input", traces_copy, "--output", tmp_path / "w.jsonl",
               "--context_type", "rich", "--expressions_file", wrong) == 2
    assert "sha256" in one_error_line(capsys)


def test_existing_output_is_not_replaced_without_overwrite(data, tmp_path, capsys):
    output = convert(one_step_conversion, tmp_path, data[1])
    before = output.read_bytes()
    assert run(one_step_conversion, "--input", data[1], "--output", output, "--sample_fraction", "0.5") == 2
    assert "--overwrite" in one_error_line(capsys) and output.read_bytes() == before
    convert(one_step_conversion, tmp_path, data[1], "--sample_fraction", "0.5", "--overwrite")
    assert output.read_bytes() != before


def test_an_overwrite_that_dies_before_its_sidecars_leaves_no_stale_sidecar(data, tmp_path, monkeypatch):
    """A sidecar means its dataset is complete: never the old run's sidecar beside the new rows."""
    output = convert(one_step_conversion, tmp_path, data[1], "--split")
    parts = cc.part_paths(output, split=True).values()
    assert all(cc.sidecar_path(path).exists() for path in parts)

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cc, "write_sidecar", die)
    with pytest.raises(KeyboardInterrupt):
        run(one_step_conversion, "--input", data[1], "--output", output, "--quiet", "--split", "--seed", "1",
            "--sample_fraction", "0.3", "--overwrite")
    assert not any(cc.sidecar_path(path).exists() for path in parts)


def test_another_tokenizer_in_the_output_folder_is_an_error(data, tmp_path, capsys):
    tk.save_tokenizer(tk.build_tokenizer(constants=(1.0, 2.5)), tmp_path / "tokenizer")
    assert run(one_step_conversion, "--input", data[1], "--output", tmp_path / "t.jsonl") == 2
    assert "--tokenizer_dir" in one_error_line(capsys) and not (tmp_path / "t.jsonl").exists()


def test_bad_options_exit_2(data, tmp_path, capsys):
    for args in (["--sample_fraction", "0"], ["--sample_fraction", "1.5"], ["--val_fraction", "0.2"],
                 ["--split", "--val_fraction", "1"]):
        assert run(one_step_conversion, "--input", data[1], "--output", tmp_path / "o.jsonl", *args) == 2
        one_error_line(capsys)


def test_default_output_names():
    assert cc.default_output("onestep", ["rich", "anc"], "d/gen1k_arith_1k.pkl.gz") == Path(
        "datasets/training/onestep_rich_anc_gen1k_arith_1k.jsonl")
    assert cc.default_output("direct", [""], "x/arith_1k.pkl.gz") == Path("datasets/training/direct_arith_1k.jsonl")
    assert cc.default_output("onestep", ["basic", ""], "d/t.pkl.gz", "minimal") == Path(
        "datasets/training/onestep_basic_minparen_t.jsonl")
    assert cc.part_paths(Path("o/x.jsonl"), True) == {"train": Path("o/x.train.jsonl"), "val": Path("o/x.val.jsonl")}
    assert cc.sidecar_path(Path("o/x.train.jsonl")) == Path("o/x.train.meta.json")


def test_reservoir_is_a_uniform_seeded_sample():
    samples = []
    for seed in range(2):
        reservoir = cc.Reservoir(100, np.random.default_rng(seed))
        for item in range(20000):
            reservoir.add(item)
        samples.append(reservoir.items)
        assert len(set(reservoir.items)) == 100 and abs(np.mean(reservoir.items) - 10000) < 1500
    assert samples[0] != samples[1]
    small = cc.Reservoir(100, np.random.default_rng(0))
    for item in range(30):
        small.add(item)
    assert small.items == list(range(30))


def test_shell_run_and_inspect_dataset_describes_the_output(data, tmp_path, capsys):
    output = tmp_path / "shell.jsonl"
    done = subprocess.run([sys.executable, "one_step_conversion.py", "--input", str(data[1]), "--output",
                           str(output), "--split", "--val_fraction", "0.5", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("one_step: ") and "examples/s" in summary[0]
    train = tmp_path / "shell.train.jsonl"
    assert inspect_dataset.main([str(train)]) == 0
    out = capsys.readouterr().out
    assert "kind: jsonl (training data)" in out and "shell.train.meta.json" in out
    assert "command: python one_step_conversion.py" in out and "distinct expression_ids:" in out
    # A corrupted line: inspect_dataset names the file and the line, exit 2.
    lines = train.read_text().splitlines()
    lines[2] = lines[2][:-5]
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit:
        inspect_dataset.main([str(train)])
    assert exit.value.code == 2 and f"{train}:3: not valid JSON" in one_error_line(capsys)


@pytest.mark.parametrize("module", [one_step_conversion, autoreg_conversion, direct_conversion])
def test_output_that_is_an_input_file_is_refused(module, data, tmp_path, capsys):
    expressions, traces = data
    copy = shutil.copy(traces, tmp_path / "t.pkl.gz")
    before = Path(copy).read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pkl.gz").symlink_to(copy)
    for output in (copy, tmp_path / "sub" / ".." / "t.pkl.gz", tmp_path / "link.pkl.gz"):
        assert run(module, "--input", copy, "--output", output, "--overwrite", "--quiet") == 2
        assert "is the input file" in one_error_line(capsys)
    assert Path(copy).read_bytes() == before
    expressions_copy = shutil.copy(expressions, tmp_path / "e.pkl.gz")
    assert run(module, "--input", copy, "--expressions_file", expressions_copy, "--output", expressions_copy,
               "--overwrite", "--quiet") == 2
    assert "is the input file" in one_error_line(capsys)
    assert Path(expressions_copy).read_bytes() == Path(expressions).read_bytes()


def test_output_that_is_the_expressions_file_the_traces_name_is_refused(data, tmp_path, capsys):
    expressions, traces = data
    before = expressions.read_bytes()
    assert run(direct_conversion, "--input", traces, "--output", expressions, "--overwrite", "--quiet") == 2
    assert "is the input file" in one_error_line(capsys)
    assert expressions.read_bytes() == before


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_unwritable_output_fails_before_converting_in_one_line(where, data, tmp_path, capsys, monkeypatch):
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "file").write_text("keep")
    output = tmp_path / ("folder.jsonl" if where == "folder" else "file/out.jsonl")
    monkeypatch.setattr(cc, "load_trace_input", lambda *a, **k: pytest.fail("loaded before checking the output"))
    assert run(one_step_conversion, "--input", data[1], "--output", output, "--overwrite", "--quiet") == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {output}: ") and ".tmp." not in line
    assert (tmp_path / "file").read_text() == "keep" and (tmp_path / "folder.jsonl").is_dir()


@pytest.mark.parametrize("module", [one_step_conversion, autoreg_conversion, direct_conversion])
def test_negative_seed_exits_2_naming_it(module, data, tmp_path, capsys):
    assert run(module, "--input", data[1], "--output", tmp_path / "o.jsonl", "--seed", "-1", "--quiet") == 2
    assert "--seed" in one_error_line(capsys)
    assert not (tmp_path / "o.jsonl").exists()
