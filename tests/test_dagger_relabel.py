"""dagger_relabel.py: labels from the learner's states, determinism, in place vs output, conversion, errors.

BasicSR traces made by generate_traces.py stand in for NeuralSR traces (same
file format). To show that the labels are computed from the LEARNER's
states (SPEC defect 2), some traces carry hand-made trajectories whose
populations BasicSR would never reach: every individual of generation k
holds the marker constant 100 + k and a per-slot constant s + 0.5, and the
recorded best is not in slot 0.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import dagger_relabel as dr
import expressions as ex
import file_io
import format_utils as fu
import generate_traces as gt
import one_step_conversion
from basic_sr import STAGNATION_LIMIT
from conversion_common import sidecar_path
from pipeline_data import expressions_and_traces
from trajectory import TrajectoryRecorder, population_at

POPULATION, GENERATIONS = 20, 12
SHORT_STATES = 8  # generations (states) of the hand-made trajectories, except one
LONG_STATES = STAGNATION_LIMIT + 10  # a learner whose best never improves, past the stagnation limit


# --------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(expressions file, BasicSR traces file) made by the real generators: 5 expressions, <= 2 variables."""
    return expressions_and_traces(tmp_path_factory.mktemp("relabel"), 5, POPULATION, GENERATIONS, seed=1,
                                  max_vars=2, constants=(1.0, 2.0))


def marker(generation: int) -> float:
    return 100.0 + generation


def handmade_population(generation: int, n_vars: int) -> list[tuple]:
    """Slot s: ((x_{s % n_vars} * (s + 0.5)) + marker): no BasicSR run with constants 1.0, 2.0 makes these."""
    return [("+", "*", f"x{slot % n_vars}", slot + 0.5, marker(generation)) for slot in range(POPULATION)]


def best_slot(generation: int) -> int:
    return (7 * generation + 3) % POPULATION


def handmade_trajectory(n_states: int, n_vars: int, improving: bool = True) -> dict:
    """A learner trajectory of hand-made states; the recorded best moves from slot to slot (`best_slot`).

    The fitnesses are recorded values, not scores on X, y: the expert must use
    what the learner recorded. Without `improving`, the best fitness never changes.
    """
    recorder = TrajectoryRecorder()
    for generation in range(n_states):
        best = best_slot(generation)
        fitnesses = np.array([-1.0 - abs(slot - best) - (0 if not improving else 1.0 / (1 + generation))
                              for slot in range(POPULATION)], dtype=np.float32)
        recorder.add_generation(handmade_population(generation, n_vars), fitnesses, [()] * POPULATION,
                                ["neural"] * POPULATION, best, 1.0)
    return recorder.finish()


def save_handmade(path, data, basic_sr_changes=None) -> Path:
    """The stand-in traces with hand-made trajectories (the first one long and never improving)."""
    loaded = file_io.load(data[1])
    traces = []
    for index, trace in enumerate(loaded.records):
        n_vars = int(trace["n_vars"])
        trajectory = (handmade_trajectory(LONG_STATES, n_vars, improving=False) if index == 0
                      else handmade_trajectory(SHORT_STATES, n_vars))
        traces.append({**trace, "trajectory": trajectory, "n_generations": len(trajectory["population"]) - 1})
    metadata = dict(loaded.metadata)
    if basic_sr_changes:
        metadata["basic_sr_params"] = {**metadata["basic_sr_params"], **basic_sr_changes}
    return file_io.save(path, "traces", traces, metadata)


def run(*args) -> int:
    return dr.main([str(a) for a in args])


def relabel(input_path, output, *args) -> list[dict]:
    """Relabel into `output` (asserting success); the relabelled traces."""
    assert run("--input", input_path, "--output", output, "--quiet", *args) == 0
    return file_io.load(output, kind="traces").records


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def replaces_one_subtree(child: tuple, parent: tuple, donor: tuple) -> bool:
    """child == parent with one subtree replaced by a whole subtree of `donor`."""
    for start in range(len(parent)):
        head, tail = parent[:start], parent[ex.subtree_end(parent, start):]
        if len(child) < len(head) + len(tail) or child[:start] != head or child[len(child) - len(tail):] != tail:
            continue
        middle = child[start:len(child) - len(tail)]
        if any(donor[j:ex.subtree_end(donor, j)] == middle for j in range(len(donor))):
            return True
    return False


@pytest.fixture(scope="module")
def handmade(data, tmp_path_factory):
    """(hand-made learner traces, their relabelled traces)."""
    folder = tmp_path_factory.mktemp("handmade")
    source = save_handmade(folder / "learner.pkl.gz", data)
    return file_io.load(source).records, relabel(source, folder / "learner.dagger.pkl.gz")


# --------------------------------------------------------------------------
# Labels come from the learner's states


def test_every_label_is_the_elite_or_made_from_the_learners_previous_state(handmade):
    learner, relabelled = handmade
    search_constants = {1.0, 2.0}
    with_marker = children_seen = 0
    for before, trace in zip(learner, relabelled):
        trajectory = trace["trajectory"]
        assert trajectory["population"].tolist() == before["trajectory"]["population"].tolist()  # kept as it was
        n_states = len(trajectory["population"])
        assert len(trace["dagger_expressions"]) == len(trace["dagger_origins"]) == n_states
        assert [trace[field][0] for field in dr.LABEL_FIELDS] == [None, None, None]
        for generation in range(1, n_states):
            state = population_at(trajectory, generation - 1)
            children = trace["dagger_expressions"][generation]
            origins = trace["dagger_origins"][generation]
            parents = trace["dagger_parents"][generation].tolist()
            assert len(children) == len(origins) == len(parents) == POPULATION
            # Slot 0: the learner's recorded best (not slot 0 of the state, not the best on X, y).
            best = best_slot(generation - 1)
            assert (children[0], origins[0], parents[0]) == (state[best], "elite", [best, -1])
            allowed_constants = search_constants | {marker(generation - 1)} | {s + 0.5 for s in range(POPULATION)}
            for child, origin, (first, second) in zip(children[1:], origins[1:], parents[1:]):
                assert 0 <= first < POPULATION
                if origin == "crossover":  # parent 1 with one subtree replaced by a subtree of parent 2
                    assert 0 <= second < POPULATION and replaces_one_subtree(child, state[first], state[second])
                elif origin == "copy":
                    assert second == -1 and child == state[first]
                else:  # a mutation may replace the whole tree: its constants are checked below
                    assert origin.startswith("mutation_") and second == -1
                constants = {token for token in child if isinstance(token, float)}
                assert constants <= allowed_constants, (generation, child)  # no other generation's marker
                with_marker += marker(generation - 1) in constants
                children_seen += 1
    assert with_marker > children_seen / 3  # many children carry their state's marker (crossover at the root drops it)


def test_selection_reads_the_learners_recorded_fitnesses(data, tmp_path):
    """A tournament of the whole population always picks the recorded best: every parent is that slot."""
    source = save_handmade(tmp_path / "learner.pkl.gz", data, {"tournament_size": POPULATION})
    for trace in relabel(source, tmp_path / "out.pkl.gz"):
        for generation in range(1, len(trace["dagger_parents"])):
            parents = trace["dagger_parents"][generation]
            assert set(parents[parents >= 0].tolist()) == {best_slot(generation - 1)}


def test_no_stagnation_restart_on_a_learner_that_never_improves(handmade):
    _, relabelled = handmade
    long_trace = relabelled[0]
    assert len(long_trace["dagger_origins"]) == LONG_STATES > STAGNATION_LIMIT + 1
    assert not any("restart" in (entry or []) for trace in relabelled for entry in trace["dagger_origins"])
    late = long_trace["dagger_origins"][-1]
    assert late[0] == "elite" and {"crossover"} <= set(late[1:])


def test_labels_on_basic_sr_traces_are_new_children_not_the_learners(data, tmp_path):
    """On a BasicSR learner the expert draws its own children (its own seeds), not the learner's next generation."""
    learner = file_io.load(data[1]).records
    relabelled = relabel(data[1], tmp_path / "out.pkl.gz")
    same = total = 0
    for before, trace in zip(learner, relabelled):
        assert set(trace) == set(before) | set(dr.LABEL_FIELDS)
        for generation in range(1, len(trace["dagger_expressions"])):
            actual = population_at(before["trajectory"], generation)
            same += sum(a == b for a, b in zip(actual[1:], trace["dagger_expressions"][generation][1:]))
            total += POPULATION - 1
    assert total and same < total / 4


# --------------------------------------------------------------------------
# Determinism, outputs, metadata


def test_same_bytes_twice_and_for_any_number_of_workers(data, tmp_path):
    first, second, parallel = (tmp_path / f"{name}.pkl.gz" for name in ("first", "second", "parallel"))
    relabel(data[1], first, "--seed", "3")
    relabel(data[1], second, "--seed", "3")
    relabel(data[1], parallel, "--seed", "3", "--workers", "2")
    assert first.read_bytes() == second.read_bytes() == parallel.read_bytes()
    relabel(data[1], tmp_path / "other_seed.pkl.gz", "--seed", "4")
    other = file_io.load(tmp_path / "other_seed.pkl.gz").records
    assert [t["dagger_expressions"] for t in other] != [t["dagger_expressions"] for t in file_io.load(first).records]


def test_in_place_twice_gives_the_same_bytes_and_keeps_the_source(data, tmp_path):
    copy = tmp_path / "learner.pkl.gz"
    copy.write_bytes(data[1].read_bytes())
    original_sha = gt.file_sha256(copy)
    assert run("--input", copy, "--in_place", "--quiet") == 0
    once = copy.read_bytes()
    assert run("--input", copy, "--in_place", "--quiet") == 0
    assert copy.read_bytes() == once
    metadata = file_io.load(copy).metadata
    assert metadata["dagger_relabel"]["source"]["sha256"] == original_sha


def test_the_run_log_beside_the_file_keeps_the_traces_own_log(data, tmp_path):
    """Time and host go to <output>.relabel.log.json (the data file stays byte-identical run to run)."""
    copy = tmp_path / "learner.pkl.gz"
    copy.write_bytes(data[1].read_bytes())
    traces_log = gt.sibling_path(copy, ".log.json")
    traces_log.write_text('{"made by": "generate_traces"}')
    assert run("--input", copy, "--in_place", "--quiet", "--seed", "5") == 0
    assert traces_log.read_text() == '{"made by": "generate_traces"}'
    log = json.loads(gt.sibling_path(copy, dr.RELABEL_LOG).read_text())
    assert log["command"].endswith(f"dagger_relabel.py --input {copy} --in_place --quiet --seed 5")
    assert {"timestamp", "hostname", "wall_seconds"} <= log.keys() and sum(log["label_origins"].values()) > 0


def test_output_refuses_to_overwrite_and_in_place_needs_the_flag(data, tmp_path, capsys):
    output = tmp_path / "out.pkl.gz"
    output.write_bytes(b"keep me")
    assert run("--input", data[1], "--output", output, "--quiet") == 2
    assert str(output) in one_error_line(capsys) and output.read_bytes() == b"keep me"
    relabel(data[1], output, "--overwrite")
    assert file_io.load(output).metadata["dagger"] is True
    before = data[1].read_bytes()
    assert run("--input", data[1], "--output", data[1], "--overwrite", "--quiet") == 2
    assert "--in_place" in one_error_line(capsys) and data[1].read_bytes() == before
    with pytest.raises(SystemExit) as exit:  # one of --output and --in_place is required
        run("--input", data[1])
    assert exit.value.code == 2


def test_metadata_records_the_relabelling_and_keeps_the_learners(data, tmp_path):
    output = tmp_path / "out.pkl.gz"
    relabel(data[1], output, "--seed", "7")
    learner = file_io.load(data[1]).metadata
    metadata = file_io.load(output).metadata
    assert {k: v for k, v in metadata.items() if k not in dr.METADATA_FIELDS} == learner
    assert metadata["dagger"] is True
    record = metadata["dagger_relabel"]
    assert record["parameters"] == {"input": str(data[1]), "expressions_file": None, "seed": 7}
    assert record["command"].endswith(f"dagger_relabel.py --input {data[1]} --seed 7")
    assert record["source"]["sha256"] == gt.file_sha256(data[1]) and record["source"]["method"] == "basic"
    assert record["expressions"]["sha256"] == gt.file_sha256(data[0])
    assert record["expert_params"]["tournament_size"] == learner["basic_sr_params"]["tournament_size"]
    assert record["n_labels"] == sum(record["label_origins"].values()) > 0
    assert "timestamp" not in record and "hostname" not in record


def test_help_explains_every_flag():
    for action in dr.build_parser()._actions:
        assert action.help, action.option_strings


# --------------------------------------------------------------------------
# The relabelled file converts with one_step_conversion --dagger


def test_relabelled_traces_convert_to_learner_state_expert_child_rows(data, tmp_path):
    relabelled_path = tmp_path / "relabelled.pkl.gz"
    traces = {t["expression_id"]: t for t in relabel(data[1], relabelled_path)}
    output = tmp_path / "dagger.jsonl"
    assert one_step_conversion.main(["--input", str(relabelled_path), "--output", str(output), "--dagger",
                                     "--quiet"]) == 0
    rows = list(file_io.read_jsonl(output))
    n_states = sum(len(t["dagger_expressions"]) - 1 for t in traces.values())
    assert len(rows) == n_states * (POPULATION - 1)
    assert json.loads(sidecar_path(output).read_text())["counts"]["skipped"] == {"dropped_elite_copies": n_states}
    for row in rows:
        trace = traces[row["expression_id"]]
        generation, slot = row["metadata"]["generation"], row["metadata"]["target_index"]
        trajectory = trace["trajectory"]
        assert row["population"] == fu.format_population(population_at(trajectory, generation - 1),
                                                         trajectory["fitnesses"][generation - 1])
        assert row["target"] == fu.format_target(trace["dagger_expressions"][generation][slot])
        assert row["metadata"]["origin"] == trace["dagger_origins"][generation][slot] != "elite"


# --------------------------------------------------------------------------
# Bad input


def test_bad_input_is_one_line_naming_the_file_and_exit_2(data, tmp_path, capsys):
    loaded = file_io.load(data[1])
    no_params = file_io.save(tmp_path / "no_params.pkl.gz", "traces", loaded.records,
                             {k: v for k, v in loaded.metadata.items() if k != "basic_sr_params"})
    no_trajectory = file_io.save(tmp_path / "no_trajectory.pkl.gz", "traces",
                                 [{k: v for k, v in loaded.records[0].items() if k != "trajectory"}], loaded.metadata)
    lost_expressions = file_io.save(tmp_path / "lost.pkl.gz", "traces", loaded.records,
                                    {**loaded.metadata, "expressions_file": str(tmp_path / "gone.pkl.gz")})
    not_gzip = tmp_path / "plain.pkl.gz"
    not_gzip.write_text("not a data file")
    cases = [(tmp_path / "missing.pkl.gz", "not found"), (data[0], "'traces'"), (not_gzip, "gzip"),
             (no_params, "basic_sr_params"), (no_trajectory, "trajectory"), (lost_expressions, "gone.pkl.gz")]
    for path, reason in cases:
        assert run("--input", path, "--output", tmp_path / "out.pkl.gz", "--quiet") == 2
        line = one_error_line(capsys)
        assert str(path) in line and reason in line, line
    assert not (tmp_path / "out.pkl.gz").exists()


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_an_unwritable_output_fails_before_relabelling_in_one_line(where, data, tmp_path, capsys, monkeypatch):
    import dagger_relabel

    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "a_folder").mkdir()
    output = tmp_path / ("a_folder" if where == "folder" else "a_file/out.pkl.gz")
    monkeypatch.setattr(dagger_relabel, "relabel_traces", lambda *a, **k: pytest.fail("relabelled first"))
    assert run("--input", data[1], "--output", output, "--overwrite", "--quiet") == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {output}") and "\n" not in line, line
    assert (tmp_path / "a_file").read_text() == "mine" and (tmp_path / "a_folder").is_dir()
