"""NeuralSR, its Proposer and token codec, BatchedNeuralSR, and neural trace generation (CPU, tiny models).

The checkpoints are random-weight tiny GPT-Neos saved the way train.py saves
them (conftest.tiny_checkpoint): an untrained model writes garbage, which is
what the fallback tests need. The proposals a search keeps are tested with a
scripted Proposer that returns chosen texts.
"""

import json

import numpy as np
import pytest
import torch

import batched_neural_sr as bns
import conversion_common as cc
import expressions as ex
import file_io
import format_utils as fu
import generate_traces as gt
import one_step_conversion
import problems
import tokenizer as tk
import trajectory as tj
from basic_sr import BasicSR
from expression_parser import parse
from neural_sr import CheckpointError, NeuralSR, Proposer, _subtrees, checkpoint_settings
from test_generate_traces import make_records, save_expressions
from token_codec import OutputParser, PromptEncoder

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(population_size=8, num_generations=6, max_size=25, max_depth=10)
ORIGINS = {"init", "elite", "neural", "fallback", "restart"}


@pytest.fixture(scope="module")
def proposer(tiny_checkpoint):
    return Proposer.load(tiny_checkpoint)


def quadratic():
    return problems.get_problem("quadratic").sample(seed=0)


class ScriptedProposer(Proposer):
    """The tiny checkpoint's Proposer, answering every request with chosen texts (cycled over the samples)."""

    def __init__(self, base: Proposer, texts, mode=None):
        self.__dict__.update(base.__dict__)
        self.texts, self.mode, self.requests = list(texts), mode, []

    def propose_ids(self, requests):
        self.requests.extend(requests)
        encode = self.tokenizer.backend_tokenizer.encode
        ids = [tuple(encode(text, add_special_tokens=False).ids) for text in self.texts]
        return [[ids[i % len(ids)] for i in range(request.n_samples)] for request in requests]


def check_neural_trajectory(model) -> dict:
    """Trajectory invariants (trajectory.py) of a NeuralSR run: shapes, origins, parents, counts, ancestry."""
    t = model.trajectory_
    P, G = model.population_size, model.n_generations_
    population, parents, best_index = t["population"], t["parents"], t["best_index"]
    assert population.shape == (G + 1, P) and parents.shape == (G + 1, P, 2) and best_index.shape == (G + 1,)
    assert t["fitnesses"].dtype == np.float32 and tj.n_generations(t) == G
    origins = np.array(t["origin_names"], dtype=object)[t["origins"]]
    assert set(t["origin_names"]) <= ORIGINS, t["origin_names"]
    for tree in t["expressions"]:
        assert ex.is_well_formed(tree) and len(tree) <= model.max_size and ex.depth(tree) <= model.max_depth
        assert parse(ex.to_string(tree)) == tree
    for name in ("n_neural", "n_fallback", "n_well_formed"):
        assert t[name].shape == (G + 1,) and t[name].dtype == np.int32 and t[name][0] == 0
    assert set(origins[0]) == {"init"} and np.all(parents[0] == -1)
    restarted = False
    for g in range(1, G + 1):
        assert origins[g, 0] == "elite" and parents[g, 0].tolist() == [best_index[g - 1], -1]
        assert population[g, 0] == population[g - 1, best_index[g - 1]]
        assert np.all((parents[g] >= -1) & (parents[g] < P))
        if "restart" in origins[g]:
            restarted = True
            assert set(origins[g, 1:]) == {"restart"} and t["n_neural"][g] == t["n_fallback"][g] == 0
            continue
        assert set(origins[g, 1:]) <= {"neural", "fallback"}
        for slot in range(1, P):
            assert parents[g, slot, 0] >= 0
            if origins[g, slot] == "neural":
                assert parents[g, slot, 1] == -1
        assert t["n_neural"][g] == (origins[g] == "neural").sum() == t["n_well_formed"][g]
        assert t["n_fallback"][g] == (origins[g] == "fallback").sum()
    assert np.all(np.diff(t["best_fitness"]) >= 0)
    assert t["best_mse"][-1] == model.best_mse_
    ancestors = t["ancestors_of_best"]
    assert ancestors == tj.ancestors_of(parents, int(best_index[-1])) and ancestors[-1] == [int(best_index[-1])]
    if not restarted:
        assert all(ancestors), "every generation holds an ancestor of the final best"
    assert model.n_neural_ == int(t["n_neural"].sum()) and model.n_fallback_ == int(t["n_fallback"].sum())
    assert model.n_proposals_ == model.n_neural_ + model.n_fallback_
    assert model.well_formed_rate_ == pytest.approx(model.n_neural_ / model.n_proposals_)
    return t


def assert_same_fit(first, second):
    a, b = first.trajectory_, second.trajectory_
    assert a["expressions"] == b["expressions"] and a["origin_names"] == b["origin_names"]
    for key in ("population", "fitnesses", "parents", "origins", "best_index", "n_neural", "n_fallback"):
        assert np.array_equal(a[key], b[key]), key
    assert a["ancestors_of_best"] == b["ancestors_of_best"]
    assert (first.best_expression_, first.n_generations_, first.n_evaluations_, first.n_neural_) == \
        (second.best_expression_, second.n_generations_, second.n_evaluations_, second.n_neural_)


# --------------------------------------------------------------------------
# Token codec: prompt ids from pieces, outputs from ids


def random_states(count, seed=0):
    """PromptStates with unary operators, odd constants, invalid and extreme fitnesses, every context type and
    parentheses style."""
    rng = np.random.default_rng(seed)
    from random_stream import RandomStream

    stream = RandomStream(rng)
    states = []
    for index in range(count):
        n_vars = int(rng.integers(1, 4))
        variables = [f"x{i}" for i in range(n_vars)]
        constants = (1.0, 2.5, -0.5, 1e-05, 10.0)
        population = [ex.random_tree(stream, variables, constants, ("+", "-", "*", "/", "sin", "exp"), 4)
                      for _ in range(int(rng.integers(1, 12)))]
        fitnesses = -np.abs(rng.lognormal(0.0, 6.0, len(population)))
        fitnesses[rng.random(len(population)) < 0.2] = -np.inf
        fitnesses[rng.random(len(population)) < 0.1] = -1e300  # beyond float32: -inf in text
        X = rng.uniform(-3, 3, size=(30, n_vars))
        y = np.sin(X[:, 0]) * 3 + X[:, -1]
        states.append(fu.PromptState(int(rng.integers(0, 2000)), population, fitnesses, n_vars,
                                     ("+", "-", "*", "/"), ("sin", "exp"), constants, X, y,
                                     fu.CONTEXT_TYPES[index % 3], fu.PARENTHESES[index // 3 % 2]))
    return states


def test_prompt_ids_from_pieces_equal_encoding_the_prompt_text():
    tokenizer = tk.build_tokenizer(constants=(1.0, 2.5, -0.5))
    encoder = PromptEncoder(tokenizer)
    contexts = fu.ContextCache()
    encode = tokenizer.backend_tokenizer.encode
    states = random_states(60)
    assert {state.parentheses for state in states} == set(fu.PARENTHESES)
    for state in states * 2:  # the second pass is served from the caches
        text = fu.prompt_for_state(state, contexts)
        assert encoder.ids(state, contexts) == encode(text, add_special_tokens=False).ids
        assert encoder.ids(state, contexts) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encoder.exact


def test_prompt_encoder_falls_back_to_whole_text_when_pieces_do_not_add_up(tokenizer):
    encoder = PromptEncoder(tokenizer)
    encoder._separator = [tokenizer.unk_token_id]  # as if `;` were encoded differently on its own
    state = fu.PromptState(3, [("x0",), ("+", "x0", 1.0)], [-1.5, -np.inf], 1, ("+", "*"), (), (1.0,))
    expected = tokenizer(fu.prompt_for_state(state), add_special_tokens=False)["input_ids"]
    with pytest.warns(UserWarning, match="piece by piece"):
        assert encoder.ids(state) == expected
    assert not encoder.exact and encoder.ids(state) == expected


def test_output_parser_reads_ids_and_remembers(tokenizer):
    parser = OutputParser(tokenizer, vocab_size=len(tokenizer) + 3)
    ids = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert parser.child(ids("((x0*x0)+1.0)<EOS>")) == ("+", "*", "x0", "x0", 1.0)
    assert parser.child(ids("(x0*-2.5)<EOS><PAD><PAD>")) == ("*", "x0", -2.5)
    assert parser.child(ids("((x0*x0)+1.0)")) is None  # never finished
    assert parser.child(ids("(x0+<FITNESS>)<EOS>")) is None
    assert parser.child((len(tokenizer) + 1, tokenizer.eos_token_id)) is None  # an id past the vocabulary
    assert parser.population(ids("x0;(x0+1.0);(x0+<EOS>")) == [("x0",), ("+", "x0", 1.0), None]
    assert parser.population(ids("x0;(x1*x1);12")) == [("x0",), ("*", "x1", "x1")]  # the cut last piece is dropped
    assert parser.child(ids("x0<EOS>")) is parser.child(ids("x0<EOS>"))


def test_output_parser_rejects_what_the_parser_rejects_and_nothing_more(tokenizer):
    """The parenthesis count that skips the parse of unbalanced outputs agrees with parsing, on random token soup."""
    parser = OutputParser(tokenizer)
    vocab = tokenizer.get_vocab()
    pieces = [vocab[t] for t in ("(", ")", "x0", "+", "*", "sin", "1.0", "-", "2", ".")]
    rng = np.random.default_rng(0)
    eos, outcomes = tokenizer.eos_token_id, set()
    for _ in range(3000):
        ids = tuple(int(i) for i in rng.choice(pieces, size=int(rng.integers(1, 12)))) + (eos,)
        if rng.random() < 0.2:
            ids += (vocab[")"], eos)  # tokens after the first <EOS> do not count
        expected = fu.parse_generated(parser.text(ids))
        assert parser.child(ids) == expected
        outcomes.add(expected is None)
    assert outcomes == {True, False}  # both kinds met


def test_a_neural_child_descends_from_the_fittest_holder_of_its_largest_shared_subtree():
    model = NeuralSR(collect_trajectory=True)
    model._owners, model._owners_of = {}, None
    a, b = ("*", "x0", "x1"), ("+", "x0", 1.0)
    population = [("x0",), ("-", a, "x2"), ("sin", a), ("+", a, b), ("exp", b)]
    population = [tuple(t for part in tree for t in (part if isinstance(part, tuple) else (part,)))
                  for tree in population]
    fitnesses = np.array([-1.0, -5.0, -3.0, -9.0, -2.0])
    source = lambda tree: model._source_slot(tree, population, fitnesses, elite=0)
    assert source(population[3]) == 3  # a copy comes from its source
    assert source(("/", *a, "x2")) == 2  # `a` is held by slots 1, 2, 3: the fittest is 2
    assert source(("/", *a, *b)) == 4  # `a` and `b` have the same size: the rightmost, `b` (slots 3, 4), counts
    assert source(("/", *b, *a)) == 2  # and here the rightmost is `a`
    assert source(("/", *("+", *a, *b), "x2")) == 3  # the largest shared subtree wins over fitter holders of parts
    assert source(("/", "x5", "x6")) == 0  # nothing shared: the elite


def test_without_a_trajectory_no_parent_is_traced(proposer, monkeypatch):
    monkeypatch.setattr(NeuralSR, "_source_slot", lambda *args: pytest.fail("parents computed for no trajectory"))
    X, y = quadratic()
    scripted = ScriptedProposer(proposer, ["((x0*x0)+1.0)<EOS>"])
    model = NeuralSR(checkpoint=scripted, seed=1, early_stop_threshold=None, **SMALL).fit(X, y)
    assert model.n_neural_ > 0


# --------------------------------------------------------------------------
# Proposer and checkpoints


def test_proposer_reads_the_checkpoint_settings(proposer, tiny_checkpoint):
    assert (proposer.mode, proposer.context_type, proposer.max_new_tokens) == ("one_step", "basic", 16 + 8)
    assert proposer.device.type == ("cuda" if torch.cuda.is_available() else "cpu") and proposer.n_prefix == 0
    assert checkpoint_settings(tiny_checkpoint) == {"mode": "onestep", "context_type": "basic",
                                                    "parentheses": "full", "max_target_tokens": 16}
    assert proposer.parentheses == "full"
    state = random_states(1)[0]
    texts = proposer.propose([(state, 3), (state, 2)], seed=5)
    assert [len(t) for t in texts] == [3, 2]
    assert all(t is None or t.endswith(fu.EOS) for row in texts for t in row)
    assert texts == proposer.propose([(state, 3), (state, 2)], seed=5)  # seeded
    # Each request draws from its own seed: alone or beside another, it gets the same texts.
    assert proposer.propose([(state, 2)], seed=[77]) == proposer.propose([(state, 3), (state, 2)], seed=[1, 77])[1:]


def test_checkpoint_settings_fall_back_to_the_training_sidecar(tiny_checkpoint_factory, tmp_path):
    folder = tiny_checkpoint_factory(mode="onestep", context_type="superrich", max_target_tokens=30)
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    meta = json.loads((copy / "ttsr_train_meta.json").read_text())
    del meta["prompt"]
    (copy / "ttsr_train_meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="context type is unknown"):
        Proposer.load(copy)
    train_file = tmp_path / "data.train.jsonl"
    resolved = json.loads((copy / "resolved_config.json").read_text())
    (copy / "resolved_config.json").write_text(json.dumps({**resolved, "train_file": str(train_file)}))
    cc.sidecar_path(train_file).write_text(json.dumps({
        "conversion": "one_step", "metadata": {"parameters": {"context_type": "rich"}},
        "token_statistics": {"target_tokens": {"mean": 9.0, "max": 21}}}))
    # A sidecar written before --parentheses existed: the data, so the model, used full parentheses.
    assert checkpoint_settings(copy) == {"mode": "onestep", "context_type": "rich", "parentheses": "full",
                                         "max_target_tokens": 21}
    assert Proposer.load(copy, context_type="basic").context_type == "basic"  # an explicit choice wins
    (copy / "ttsr_train_meta.json").write_text(json.dumps({**meta, "prompt": {"context_type": "basic",
                                                                              "parentheses": "some"}}))
    with pytest.raises(CheckpointError, match=r"ckpt: its prompt settings name parentheses 'some'; known: full, "):
        Proposer.load(copy)


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default checkpoint is a relative path
    with pytest.raises(CheckpointError, match=r"^checkpoint models/neuralsr-tiny: not found") as error:
        NeuralSR(population_size=5, num_generations=1).fit(*quadratic())
    assert "\n" not in str(error.value)
    missing = tmp_path / "nowhere"
    assert bns.main(["--checkpoint", str(missing), "--problems", "quadratic", "--seeds", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: checkpoint {missing}: not found (expected a folder written by train.py, holding "
                   f"config.json, the weights and the tokenizer)"]


def test_an_unknown_device_is_a_one_line_error(tiny_checkpoint, tmp_path, capsys):
    import simple_evaluation

    common = ["--checkpoint", str(tiny_checkpoint), "--problems", "quadratic", "--seeds", "1", "--num_generations",
              "1", "--quiet", "--device", "gpu0"]
    for main, extra in ((bns.main, []), (simple_evaluation.main, ["--methods", "neural", "--output_dir",
                                                                  str(tmp_path / "eval")])):
        assert main(common + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "device 'gpu0' is not a torch device" in err[0], err
    assert not (tmp_path / "eval").exists()


def damaged_checkpoint(source, folder, damage: str):
    """A copy of checkpoint `source` in `folder`, damaged: "truncated" cuts model.safetensors to 10,000 bytes,
    "config_type" gives config.json's hidden_size a string."""
    folder.mkdir(parents=True)
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    if damage == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:10_000])
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "hidden_size": "abc"}))
    return folder


@pytest.mark.parametrize("damage, what", [("truncated", "model.safetensors"), ("config_type", "hidden_size")])
def test_a_damaged_checkpoint_is_a_one_line_error(tiny_checkpoint, tmp_path, capsys, damage, what):
    folder = damaged_checkpoint(tiny_checkpoint, tmp_path / "damaged", damage)
    with pytest.raises(CheckpointError) as error:
        Proposer.load(folder, device="cpu")
    message = str(error.value)
    assert message.startswith(f"checkpoint {folder}: cannot load (") and what in message and "\n" not in message
    assert bns.main(["--checkpoint", str(folder), "--problems", "quadratic", "--seeds", "1", "--num_generations",
                     "1", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--n_points", "1"], "--n_points must be at least 2"),
    (["--n_points", "-1"], "--n_points must be at least 2"),
])
def test_batched_cli_bad_numbers_are_one_line_errors(tiny_checkpoint, capsys, argv, message):
    code = bns.main(["--checkpoint", str(tiny_checkpoint), "--problems", "quadratic", "--seeds", "1",
                     "--num_generations", "1", "--device", "cpu", "--quiet", *argv])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and captured.out == "" and len(err) == 1 and err[0].startswith(f"error: {message}"), captured


def test_batched_cli_checks_the_json_path_before_the_runs(tiny_checkpoint, tmp_path, capsys):
    common = ["--checkpoint", str(tiny_checkpoint), "--problems", "quadratic", "--seeds", "1", "--num_generations",
              "1", "--device", "cpu", "--quiet"]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for target, message in ((tmp_path, "is a folder"), (a_file / "runs.json", "cannot be written (a file is in the way")):
        assert bns.main([*common, "--json", str(target)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert captured.out == "" and len(err) == 1, captured  # nothing ran
        assert err[0].startswith(f"error: --json {target}: {message}")


# --------------------------------------------------------------------------
# NeuralSR


def test_parameters_follow_basic_sr_and_validate(proposer):
    names = NeuralSR._param_names()
    assert names == BasicSR._param_names() + ["checkpoint", "mode", "temperature", "top_k", "top_p", "device",
                                             "constrained"]
    model = NeuralSR(checkpoint=proposer, population_size=7, temperature=0.0)
    assert repr(model) == f"NeuralSR(population_size=7, checkpoint={proposer!r}, temperature=0.0)"
    assert model.get_params()["max_size"] == BasicSR().max_size
    for bad, name in [({"mode": "onestep"}, "mode"), ({"temperature": -1.0}, "temperature"),
                      ({"top_k": 1.5}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"checkpoint": 3}, "checkpoint"),
                      ({"population_size": 1}, "population_size")]:
        with pytest.raises(ValueError, match=name):
            NeuralSR(**bad)
    with pytest.raises(ValueError, match="top_p"):
        model.set_params(top_p=2.0)
    assert model.top_p == 1.0
    clone = pytest.importorskip("sklearn.base").clone(model)
    assert clone.get_params() == model.get_params() and clone.checkpoint is proposer  # the model is not copied


def test_untrained_model_falls_back_and_leaves_a_valid_trace(proposer):
    X, y = quadratic()
    model = NeuralSR(checkpoint=proposer, seed=3, collect_trajectory=True, early_stop_threshold=None,
                     **SMALL).fit(X, y)
    trajectory = check_neural_trajectory(model)
    assert model.n_generations_ == 6 and model.n_proposals_ == 6 * 7
    assert model.n_fallback_ > 0 and "fallback" in trajectory["origin_names"]
    assert model.model_seconds_ > 0 and model.n_evaluations_ >= 8 * 7
    summary = json.loads(json.dumps(model.summary()))
    assert summary["n_fallback"] == model.n_fallback_ and summary["params"]["checkpoint"] == str(proposer.checkpoint)
    # Deterministic for a seed.
    again = NeuralSR(checkpoint=proposer, seed=3, collect_trajectory=True, early_stop_threshold=None,
                     **SMALL).fit(X, y)
    assert_same_fit(model, again)


def test_constrained_decoding_makes_an_untrained_model_well_formed(proposer):
    """The same random model: free sampling falls back almost always, grammar-constrained sampling rarely."""
    X, y = quadratic()
    free = NeuralSR(checkpoint=proposer, seed=3, early_stop_threshold=None, **SMALL).fit(X, y)
    constrained = NeuralSR(checkpoint=proposer, seed=3, early_stop_threshold=None, constrained=True,
                           collect_trajectory=True, **SMALL).fit(X, y)
    check_neural_trajectory(constrained)
    assert free.well_formed_rate_ < 0.5 < 0.8 <= constrained.well_formed_rate_
    assert constrained.n_proposals_ == free.n_proposals_ == 6 * 7
    assert NeuralSR(checkpoint=proposer, seed=3, constrained=True, **SMALL).get_params()["constrained"] is True
    with pytest.raises(ValueError, match="constrained must be False in autoreg mode"):
        NeuralSR(checkpoint=proposer, mode="autoreg", constrained=True)
    state = fu.PromptState(0, [("x0",)], [0.0], 2, ("+", "*"), (), (1.0, 2.5), context_type="basic")
    texts = set(proposer.tokenizer.convert_ids_to_tokens(list(proposer.allowed_tokens(state))))
    assert texts == {"(", ")", "<EOS>", "+", "*", "x0", "x1", "1.0"}  # 2.5 is no single token: not spelled
    negative = fu.PromptState(0, [("x0",)], [0.0], 1, ("-",), (), (-1.0,), context_type="basic")
    texts = set(proposer.tokenizer.convert_ids_to_tokens(list(proposer.allowed_tokens(negative))))
    assert texts == {"(", ")", "<EOS>", "-", "x0", "1.0"}  # -1.0 is spelled "-" then its magnitude "1.0"


def test_a_prompt_too_long_for_the_model_gets_empty_outputs_not_a_crash(proposer):
    from neural_sr import ProposalRequest

    big = parse("((x0 * (x1 + x0)) - ((x1 / (x0 + 1.0)) * ((x0 - x1) + (x1 * x0))))")
    small = fu.PromptState(0, [big] * 3, [-1.0] * 3, 2, ("+", "-", "*", "/"), (), (1.0,), context_type="basic")
    huge = fu.PromptState(0, [big] * 40, [-1.0] * 40, 2, ("+", "-", "*", "/"), (), (1.0,), context_type="basic")
    assert len(proposer.prompt_ids(huge)) > proposer.sampler.max_positions
    before = proposer.overlong
    outputs = proposer.propose_ids([ProposalRequest(small, 4, 0, max_new_tokens=8),
                                    ProposalRequest(huge, 5, 1, max_new_tokens=8)])
    assert len(outputs[0]) == 4 and all(len(ids) >= 1 for ids in outputs[0])
    assert outputs[1] == [()] * 5 and proposer.overlong == before + 1
    assert proposer.parse_child(()) is None  # the search falls back for these


def test_usable_proposals_are_kept_and_the_rest_replaced(proposer):
    X, y = quadratic()
    texts = ["((x0*x0)+1.0)<EOS>",  # kept
             "((x0*x0)+(x0+1.0))<EOS>",  # kept
             "(x0+<EOS>",  # does not parse
             "((1.0/(x0-x0))*(1.0/(x0-x0)))<EOS>",  # parses, but its predictions are huge: invalid
             "(x3+1.0)<EOS>",  # a variable this problem does not have
             "sin(x0)<EOS>",  # an operator this search does not use
             "(" * 13 + "x0" + "+x0)" * 13 + "<EOS>",  # over max_size
             "((x0*x0)+1.0)"]  # never finished
    scripted = ScriptedProposer(proposer, texts)
    model = NeuralSR(checkpoint=scripted, seed=1, collect_trajectory=True, early_stop_threshold=None,
                     **{**SMALL, "num_generations": 3}).fit(X, y)
    trajectory = check_neural_trajectory(model)
    assert model.n_proposals_ == 3 * 7 and model.n_neural_ == 3 * 2 and model.n_fallback_ == 3 * 5
    assert model.well_formed_rate_ == pytest.approx(2 / 7)
    # Kept proposals are in slots 1 and 2, their parent the best holder of their largest shared subtree.
    population = tj.population_at(trajectory, 1)
    assert population[1] == ("+", "*", "x0", "x0", 1.0) and population[2] == ("+", "*", "x0", "x0", "+", "x0", 1.0)
    assert tj.origins_at(trajectory, 1)[1:3] == ["neural", "neural"] and "fallback" in tj.origins_at(trajectory, 1)
    parent = tj.population_at(trajectory, 0)[trajectory["parents"][1, 1, 0]]
    assert {s for s in _subtrees(population[1]) if len(s) >= 3} & set(_subtrees(parent))
    # Evaluations: every individual, plus the distinct invalid proposal scored each generation.
    assert model.n_evaluations_ == 8 * 4 + 3
    # The requests: the population each generation is made from, P - 1 samples, one seed per generation.
    assert [r.state.generation for r in scripted.requests] == [0, 1, 2]
    assert {r.n_samples for r in scripted.requests} == {7} and len({r.seed for r in scripted.requests}) == 3


def test_autoreg_mode_uses_the_first_entries_of_one_sample(proposer):
    scripted = ScriptedProposer(proposer, ["x0;((x0*x0)+1.0);(x0+;x0<EOS>"], mode="autoreg")
    model = NeuralSR(checkpoint=scripted, mode="autoreg", seed=0, collect_trajectory=True,
                     early_stop_threshold=None, **{**SMALL, "num_generations": 2}).fit(*quadratic())
    check_neural_trajectory(model)
    assert {r.n_samples for r in scripted.requests} == {1}
    assert tj.origins_at(model.trajectory_, 1) == ["elite", "neural", "neural", "fallback", "neural"] + ["fallback"] * 3
    assert model.n_neural_ == 2 * 3 and model.n_proposals_ == 2 * 7


def test_autoreg_checkpoint_and_mode_mismatch(tiny_checkpoint_factory, proposer):
    autoreg = Proposer.load(tiny_checkpoint_factory(mode="autoreg", max_target_tokens=40))
    assert autoreg.mode == "autoreg" and autoreg.max_new_tokens == 48
    model = NeuralSR(checkpoint=autoreg, mode="autoreg", seed=0, collect_trajectory=True,
                     **{**SMALL, "num_generations": 3}).fit(*quadratic())
    check_neural_trajectory(model)
    with pytest.raises(ValueError, match="mode is 'one_step' but checkpoint .* 'autoreg'"):
        NeuralSR(checkpoint=autoreg, **SMALL).fit(*quadratic())
    with pytest.raises(ValueError, match="pass mode='one_step'"):
        NeuralSR(checkpoint=proposer, mode="autoreg", **SMALL).fit(*quadratic())


def test_prefix_lm_checkpoint_reads_the_points(tiny_checkpoint_factory, monkeypatch):
    prefix = Proposer.load(tiny_checkpoint_factory(point_prefix=True))
    assert prefix.n_prefix == 64
    seen = []
    original = prefix.sampler.launch

    def spy(*args, **kwargs):
        seen.append((kwargs["points"].shape, kwargs["point_mask"].sum(dim=1).tolist()))
        return original(*args, **kwargs)

    monkeypatch.setattr(prefix.sampler, "launch", spy)
    datasets = [problems.get_problem(name).sample(seed=0, n_points=n) for name, n in
                (("quadratic", 30), ("bivariate_sum", 80))]
    fitted = bns.BatchedNeuralSR(prefix, batch_size=4, collect_trajectory=True, **{**SMALL, "num_generations": 2}
                                 ).fit_many(datasets, seeds=[0, 1])
    for model in fitted:
        check_neural_trajectory(model)
    assert seen and seen[0] == ((2, 64, 11), [30, 64])


# --------------------------------------------------------------------------
# Batched


@pytest.mark.parametrize("temperature, overlap", [(0.0, 1), (1.0, 1), (0.0, 2), (1.0, 3)])
def test_batched_runs_equal_sequential_runs(proposer, temperature, overlap):
    """Batched (in one group, or in `overlap` groups whose calls are in flight together) equals alone."""
    names = ("quadratic", "bivariate_sum", "cubic", "pythagorean_3d")
    datasets = [problems.get_problem(name).sample(seed=0) for name in names]
    params = dict(SMALL, temperature=temperature, collect_trajectory=True)
    calls = proposer.sampler.prefill_calls
    batched = bns.BatchedNeuralSR(proposer, batch_size=3, overlap=overlap, **params).fit_many(datasets,
                                                                                             seeds=[4, 5, 6, 7])
    generations = max(model.n_generations_ for model in batched)
    # One call per batch of 3 (per group), per generation.
    assert proposer.sampler.prefill_calls - calls <= max(2, overlap) * generations
    for model, (X, y), seed in zip(batched, datasets, [4, 5, 6, 7]):
        alone = NeuralSR(checkpoint=proposer, seed=seed, **params).fit(X, y)
        check_neural_trajectory(model)
        assert_same_fit(model, alone)


def test_batched_arguments_are_checked(proposer):
    with pytest.raises(TypeError, match="seed"):
        bns.BatchedNeuralSR(proposer, seed=1)
    with pytest.raises(ValueError, match="batch_size"):
        bns.BatchedNeuralSR(proposer, batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        bns.BatchedNeuralSR(proposer, temperature=-2)
    for overlap in (0, 1.5, True):
        with pytest.raises(ValueError, match="overlap"):
            bns.BatchedNeuralSR(proposer, overlap=overlap)
    assert bns.BatchedNeuralSR(proposer).overlap_groups == (2 if proposer.device.type == "cuda" else 1)
    assert [len(g) for g in bns._split(list(range(7)), 3)] == [3, 2, 2] and bns._split([1], 4) == [[1]]
    assert bns._split([], 2) == []
    batched = bns.BatchedNeuralSR(proposer, **SMALL)
    with pytest.raises(ValueError, match="2 datasets but 1 seeds"):
        batched.fit_many([quadratic(), quadratic()], seeds=[0])
    with pytest.raises(ValueError, match="dataset 1: X has shape"):
        batched.fit_many([quadratic(), (np.zeros((3, 1)), np.zeros(4))], seeds=[0, 1])


def test_batched_cli_on_benchmark_problems(tiny_checkpoint, tmp_path, capsys):
    output = tmp_path / "runs.json"
    assert bns.main(["--checkpoint", str(tiny_checkpoint), "--problems", "quadratic,bivariate_sum", "--seeds", "2",
                     "--num_generations", "3", "--population_size", "6", "--batch_size", "3", "--quiet",
                     "--json", str(output)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("quadratic") and lines[-1].startswith("4 runs: solved ")
    assert "well-formed" in lines[-1] and "model" in lines[-1]
    runs = json.loads(output.read_text())["runs"]
    assert [(r["problem"], r["data_seed"]) for r in runs] == [("quadratic", 0), ("quadratic", 1),
                                                              ("bivariate_sum", 0), ("bivariate_sum", 1)]
    assert all(r["generations"] <= 3 and "well_formed_rate" in r for r in runs)


@pytest.mark.parametrize("module", [bns, gt])
def test_every_cli_flag_has_help(module):
    parser = module.build_parser()
    assert all(action.help for action in parser._actions)


# --------------------------------------------------------------------------
# Traces: generate_traces --checkpoint, and the prompts the conversions rebuild from them


@pytest.fixture(scope="module")
def expressions_file(tmp_path_factory):
    return save_expressions(tmp_path_factory.mktemp("neural") / "small_5.pkl.gz", make_records(5))


def run_gt(argv) -> int:
    return gt.main([str(arg) for arg in argv])


def neural_cli(expressions_file, checkpoint, *extra):
    return ["--expressions_file", str(expressions_file), "--checkpoint", str(checkpoint), "--num_generations", "4",
            "--population_size", "6", "--quiet", *map(str, extra)]


def test_generate_traces_with_a_checkpoint_is_deterministic(expressions_file, tiny_checkpoint, tmp_path, capsys):
    args = neural_cli(expressions_file, tiny_checkpoint, "--batch_size", 2)
    assert run_gt([*args, "--output_dir", tmp_path]) == 0
    first = tmp_path / "gen4_neural_small_5.pkl.gz"
    captured = capsys.readouterr()
    assert "well-formed" in captured.out and captured.err == ""  # --quiet: no bar, no loading noise
    assert run_gt([*args, "--output", tmp_path / "again.pkl.gz"]) == 0
    assert (tmp_path / "again.pkl.gz").read_bytes() == first.read_bytes()
    for index in range(2):  # shards take whole batches: chunk k goes to shard k % 2
        assert run_gt([*args, "--output", tmp_path / "m.pkl.gz", "--shard", f"{index}/2"]) == 0
    shard0 = file_io.load(tmp_path / "m.shard0of2.pkl.gz")
    assert [t["expression_id"] for t in shard0.records] == [100, 103, 112]
    assert run_gt([*args, "--output", tmp_path / "m.pkl.gz", "--merge_shards", 2]) == 0
    assert (tmp_path / "m.pkl.gz").read_bytes() == first.read_bytes()

    traces, metadata = file_io.load(first, kind="traces")
    basic = gt.trace_one(make_records(5)[0], {**SMALL, "constants": [1.0], "tournament_size": 3,
                                              "binary_operators": ["+", "-", "*", "/"], "unary_operators": []}, 42)
    assert all(set(trace) == set(basic) for trace in traces)
    for trace, record in zip(traces, sorted(make_records(5), key=lambda r: r["id"])):
        assert trace["expression_id"] == record["id"] and trace["seed"] == gt.derive_seed(42, record["id"])
        assert trace["trajectory"]["population"].shape[1] == 6
        assert trace["n_generations"] <= 4
    assert sum(trace["trajectory"]["n_fallback"].sum() for trace in traces) > 0
    assert metadata["method"] == "neural" and metadata["solver"] == "NeuralSR"
    assert metadata["checkpoint"] == str(tiny_checkpoint) and len(metadata["checkpoint_sha256"]) == 64
    assert metadata["sampling"] == {"mode": "one_step", "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                                    "batch_size": 2, "context_type": "basic", "parentheses": "full",
                                    "constrained": False}
    assert "--checkpoint" in metadata["command"] and "--batch_size 2" in metadata["command"]
    assert 0.0 <= metadata["well_formed_rate"] < 1.0
    # Constrained decoding: recorded, repeated by the recorded command, and mostly usable proposals.
    assert run_gt([*args, "--constrained", "--output", tmp_path / "constrained.pkl.gz"]) == 0
    _, constrained = file_io.load(tmp_path / "constrained.pkl.gz", kind="traces")
    assert constrained["sampling"]["constrained"] is True and "--constrained" in constrained["command"]
    assert constrained["well_formed_rate"] > max(0.5, metadata["well_formed_rate"])


def test_resume_continues_between_batches(expressions_file, tiny_checkpoint, tmp_path):
    args = neural_cli(expressions_file, tiny_checkpoint, "--batch_size", 2)
    assert run_gt([*args, "--output", tmp_path / "straight.pkl.gz"]) == 0
    straight = file_io.load(tmp_path / "straight.pkl.gz")
    output = tmp_path / "out.pkl.gz"
    metadata = {**straight.metadata, "complete": False}
    file_io.save(gt.partial_path(output), "traces", straight.records[:2], metadata)  # the first batch was done
    assert run_gt([*args, "--output", output, "--resume"]) == 0
    assert output.read_bytes() == (tmp_path / "straight.pkl.gz").read_bytes()
    assert '"traces_resumed": 2' in gt.log_path(output).read_text()


@pytest.mark.parametrize("flags, message", [
    (["--checkpoint", "{missing}"], "checkpoint {missing}: not found"),
    (["--checkpoint", "{checkpoint}", "--workers", "2"], "--workers applies to BasicSR runs"),
    (["--temperature", "0.5", "--top_k", "3"], "--temperature, --top_k need --checkpoint"),
    (["--checkpoint", "{checkpoint}", "--batch_size", "0"], "--batch_size must be at least 1"),
    (["--checkpoint", "{checkpoint}", "--mode", "autoreg"], "mode is 'autoreg' but checkpoint"),
])
def test_unusable_neural_options_exit_2_with_one_line(flags, message, expressions_file, tiny_checkpoint, tmp_path,
                                                      capsys):
    names = {"missing": tmp_path / "no_such_checkpoint", "checkpoint": tiny_checkpoint}
    flags = [flag.format(**names) for flag in flags]
    argv = ["--expressions_file", str(expressions_file), "--quiet", "--output", str(tmp_path / "o.pkl.gz"), *flags]
    assert gt.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message.format(**names) in err[0], err
    assert not (tmp_path / "o.pkl.gz").exists()


@pytest.mark.parametrize("context_type, parentheses", [("basic", "full"), ("rich", "full"), ("basic", "minimal")])
def test_run_prompts_equal_the_one_step_conversion_prompts(context_type, parentheses, expressions_file,
                                                           tiny_checkpoint_factory, tmp_path, monkeypatch):
    asked = []
    original = Proposer.launch

    def recording(self, requests, **kwargs):
        asked.extend((request.state, self.prompt_ids(request.state), self) for request in requests)
        return original(self, requests, **kwargs)

    monkeypatch.setattr(Proposer, "launch", recording)
    checkpoint = tiny_checkpoint_factory(context_type=context_type, parentheses=parentheses)
    traces_path = tmp_path / "traces.pkl.gz"
    assert gt.main(neural_cli(expressions_file, checkpoint, "--batch_size", 3, "--max_expressions", 2,
                              "--output", traces_path)) == 0
    output = tmp_path / "onestep.jsonl"
    assert one_step_conversion.main(["--input", str(traces_path), "--output", str(output), "--context_type",
                                     context_type, "--parentheses", parentheses, "--quiet"]) == 0
    assert file_io.load(traces_path).metadata["sampling"]["parentheses"] == parentheses
    rows = list(file_io.read_jsonl(output))
    records = {int(r["id"]): r for r in make_records(5)}
    prompts = {}
    for row in rows:
        prompts[(row["expression_id"], row["metadata"]["generation"])] = fu.build_prompt(row["context"],
                                                                                          row["population"])
    assert asked and len(prompts) >= len(asked)
    for state, ids, proposer in asked:
        expression_id = next(i for i, r in records.items() if np.array_equal(r["y"].astype(np.float64), state.y))
        training = prompts[(expression_id, state.generation + 1)]
        assert proposer.prompt_text(state).encode() == training.encode()
        assert ids == proposer.tokenizer(training, add_special_tokens=False)["input_ids"]
