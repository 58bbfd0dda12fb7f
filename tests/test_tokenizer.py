"""Tests for tokenizer: vocabulary, exact round trip, one token per symbol, save/load."""

import math

import numpy as np
import pytest

import expressions as ex
import format_utils as fu
import tokenizer as tk
from basic_sr import BasicSR
from operators import OPERATORS
from problems import get_problem
from random_stream import RandomStream, make_generator
from trajectory import population_at

ARITH = ("+", "-", "*", "/")


@pytest.fixture(scope="module")
def tok():
    return tk.build_tokenizer(max_vars=16)


def encode(tokenizer, text):
    return tokenizer(text)["input_ids"]


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def assert_round_trip(tokenizer, text):
    ids = encode(tokenizer, text)
    assert tokenizer.unk_token_id not in ids, (text, tokenizer.convert_ids_to_tokens(ids))
    assert decode(tokenizer, ids) == text


def trace_examples(problem_name, seed=0, generations=10):
    """Every one-step and autoregressive example text of a short BasicSR trace, all context types."""
    problem = get_problem(problem_name)
    X, y = problem.sample(seed=0)
    model = BasicSR(population_size=20, num_generations=generations, max_size=25, max_depth=10, seed=seed,
                    collect_trajectory=True).fit(X, y)
    trajectory = model.trajectory_
    examples = []
    for generation in range(len(trajectory["population"]) - 1):
        following = population_at(trajectory, generation + 1)
        for context_type in fu.CONTEXT_TYPES:
            state = fu.PromptState(
                generation, population_at(trajectory, generation), trajectory["fitnesses"][generation],
                problem.n_vars, ARITH, (), (1.0,), X, y, context_type,
            )
            prompt = fu.prompt_for_state(state)
            examples += [(prompt, fu.format_target(tree)) for tree in following]
            examples.append((prompt, fu.format_population_target(following)))
    return examples


# --------------------------------------------------------------------------
# Vocabulary


def test_vocabulary_is_small_and_derived_from_the_registry():
    vocabulary = tk.vocabulary(max_vars=16)
    assert len(vocabulary) == len(set(vocabulary)) < 200
    for token in [*fu.SPECIAL_TOKENS, *OPERATORS, *fu.CONTEXT_WORDS, *fu.NUMBER_CHARACTERS, *fu.LAYOUT_CHARACTERS]:
        assert token in vocabulary
    assert [f"x{i}" for i in range(16)] == [t for t in vocabulary if t.startswith("x")]
    assert len(tk.build_tokenizer()) == len(tk.vocabulary()) < 100


def test_special_token_ids(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (fu.PAD, fu.BOS, fu.EOS, fu.UNK)
    assert tok.pad_token_id == 0 and len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3


def test_one_token_per_operator_variable_parenthesis_and_marker(tok):
    singles = [*OPERATORS, "(", ")", *(f"x{i}" for i in range(16)), *fu.SPECIAL_TOKENS, *fu.CONTEXT_WORDS, "1.0"]
    for symbol in singles:
        assert tok.tokenize(symbol) == [symbol]
    assert tok.tokenize("x12") == ["x12"]
    assert tok.tokenize("exp(x1)") == ["exp", "(", "x1", ")"]
    assert tok.tokenize("-1.2e-5") == ["-", "1", ".", "2", "e", "-", "5"]
    assert tok.tokenize("<FITNESS><INVALID>;") == ["<FITNESS>", "<INVALID>", ";"]


def test_constants_are_one_token_only_as_whole_numbers():
    tokenizer = tk.build_tokenizer(constants=(1.0, -2.5))
    assert tokenizer.tokenize("((x0*1.0)-2.5)") == ["(", "(", "x0", "*", "1.0", ")", "-", "2.5", ")"]
    assert tokenizer.tokenize("(x0*-1.0)") == ["(", "x0", "*", "-", "1.0", ")"]
    assert tokenizer.tokenize("11.05") == ["1", "1", ".", "0", "5"]
    assert tokenizer.tokenize("-12.5") == ["-", "1", "2", ".", "5"]
    assert tokenizer.tokenize("consts:1.0,-2.5") == ["consts:", "1.0", ",", "-", "2.5"]


def test_unknown_characters_map_to_unk(tok):
    assert tok.tokenize("x0 ^ 2")[1] == fu.UNK
    assert encode(tok, "x99") == [tok.convert_tokens_to_ids("x9"), tok.convert_tokens_to_ids("9")]


# --------------------------------------------------------------------------
# Exact round trip


@pytest.mark.parametrize("problem_name", ["cubic", "pythagorean_3d"])
def test_round_trip_on_every_example_of_a_generated_dataset(tok, problem_name):
    examples = trace_examples(problem_name)
    assert len(examples) > 500
    prompts = list(dict.fromkeys(prompt for prompt, _ in examples))
    prompt_ids = dict(zip(prompts, tok(prompts)["input_ids"]))
    full_ids = tok([prompt + target for prompt, target in examples])["input_ids"]
    target_ids = tok([target for _, target in examples])["input_ids"]
    texts = tok.batch_decode(full_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for (prompt, target), ids, text, target_part in zip(examples, full_ids, texts, target_ids):
        assert text == prompt + target
        assert tok.unk_token_id not in ids
        # Tokens never cross the prompt/target boundary, so the loss mask can start at len(prompt ids).
        start = len(prompt_ids[prompt])
        assert ids[:start] == prompt_ids[prompt] and ids[start:] == target_part
        assert ids[-1] == tok.eos_token_id


def test_round_trip_on_random_prompts(tok):
    rng = np.random.default_rng(0)
    stream = RandomStream(make_generator(0))
    constants = (1.0, -2.5, 1e-05, 0.5, -1.5e20, 123.456)
    for index in range(150):
        n_vars = int(rng.integers(1, 17))
        variables = [f"x{i}" for i in range(n_vars)]
        population = [ex.random_tree(stream, variables, constants, tuple(OPERATORS), 5) for _ in range(20)]
        fitnesses = -(10.0 ** rng.uniform(-8, 25, 20))
        fitnesses[rng.random(20) < 0.15] = -math.inf
        fitnesses[0] = math.nan if index % 2 else 0.0
        X = rng.normal(size=(int(rng.integers(5, 60)), n_vars))
        y = np.sin(X[:, 0]) * 10.0 ** rng.uniform(-5, 5)
        context_type = fu.CONTEXT_TYPES[index % 3]
        state = fu.PromptState(index, population, fitnesses, n_vars, ARITH, ("sin", "exp", "sqrt"), constants,
                               X, y, context_type)
        prompt = fu.prompt_for_state(state)
        assert_round_trip(tok, prompt + fu.format_target(population[0]))
        assert_round_trip(tok, prompt + fu.format_population_target(population))


# --------------------------------------------------------------------------
# Save and load


def test_save_and_load_give_identical_ids(tok, tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    tk.save_tokenizer(tok, folder)
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert not [p for p in folder.iterdir() if p.name.startswith(".tokenizer-")]
    loaded = tk.load_tokenizer(folder)
    texts = [prompt + target for prompt, target in trace_examples("pythagorean_3d", generations=2)[::7]]
    assert [encode(loaded, t) for t in texts] == [encode(tok, t) for t in texts]
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    assert decode(loaded, encode(loaded, texts[0])) == texts[0]


def test_cli_builds_and_saves(tmp_path, capsys):
    assert tk.main(["--output", str(tmp_path / "tok"), "--max_vars", "16", "--constants", "1.0,2.0"]) == 0
    assert "saved tokenizer" in capsys.readouterr().out
    loaded = tk.load_tokenizer(tmp_path / "tok")
    assert loaded.tokenize("(x15*2.0)") == ["(", "x15", "*", "2.0", ")"]
