"""eval_direct: scoring rules, the CLI on a tiny random checkpoint, and bad inputs."""

import json
import shutil
import math

import numpy as np
import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

import eval_direct
import expressions as ex
import file_io
import format_utils as fu
import point_embedder as pe
from expression_parser import parse
from tokenizer import build_tokenizer, save_tokenizer

FORMULAS = ["x0", "((x0*x0)+1.0)", "(x0*x1)", "(x0-x1)"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_decoder(tokenizer) -> GPTNeoConfig:
    return GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
                        attention_types=[[["global"], 2]], max_position_embeddings=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    settings = pe.PointEmbedderConfig(hidden_size=32, mlp_hidden=32, max_points=16, n_prefix=16)
    pe.PrefixLM(pe.PrefixLMConfig.from_configs(tiny_decoder(tokenizer), settings)).save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return folder


def example_rows(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for index, formula in enumerate(FORMULAS):
        X = rng.uniform(-2, 2, size=(20 + 10 * index, 2)).astype(np.float32)
        y = ex.evaluate(parse(formula), X).astype(np.float32)
        rows.append({"expression_id": index, "target": fu.format_target(parse(formula)), "n_vars": 2,
                     "X": X.tolist(), "y": y.tolist()})
    return rows


@pytest.fixture
def data_file(tmp_path):
    """Three inline examples and one referring to an expressions file next to the JSONL file."""
    rows = example_rows()
    referenced = rows.pop()
    records = [{"id": 7, "expression": referenced["target"][: -len(fu.EOS)], "n_vars": 2,
                "X": np.asarray(referenced["X"], dtype=np.float32), "y": np.asarray(referenced["y"], dtype=np.float32)}]
    file_io.save(tmp_path / "expressions.pkl.gz", "expressions", records, {})
    rows.append({"expression_id": 7, "target": referenced["target"], "n_vars": 2,
                 "data_ref": {"file": "expressions.pkl.gz", "id": 7}})
    path = tmp_path / "val.jsonl"
    file_io.write_jsonl(path, rows)
    return path


# --------------------------------------------------------------------------
# Scoring


def one_example(formula="((x0*x0)+1.0)", constant=False):
    X = np.linspace(-2, 2, 30)[:, None]
    y = np.full(30, 3.0) if constant else ex.evaluate(parse(formula), X)
    return {"expression_id": 1, "target": fu.format_target(parse(formula)), "X": X, "y": y}


def test_score_of_the_right_answer():
    example = one_example()
    result = eval_direct.score(example["target"], example)
    assert result["well_formed"] and result["accurate"] and result["exact_match"]
    assert result["nmse"] == 0.0 and result["r2"] == 1.0


def test_score_of_an_equivalent_but_different_text():
    example = one_example()
    result = eval_direct.score("(1.0+(x0*x0))" + fu.EOS, example)
    assert result["accurate"] and not result["exact_match"] and result["r2"] == 1.0


def test_score_of_wrong_ill_formed_and_unfinished_answers():
    example = one_example()
    wrong = eval_direct.score("x0" + fu.EOS, example)
    assert wrong["well_formed"] and not wrong["accurate"] and 0.0 <= wrong["r2"] < 1.0 and wrong["nmse"] > 0
    for text in ["((x0*" + fu.EOS, "((x0*x0)+1.0)", ""]:  # unbalanced; cut off before <EOS>; nothing
        result = eval_direct.score(text, example)
        assert not result["well_formed"] and not result["accurate"]
        assert result["nmse"] is None and result["r2"] == 0.0
    far_off = eval_direct.score("(x0*1000.0)" + fu.EOS, example)
    assert far_off["r2"] == 0.0 and far_off["nmse"] > 1  # worse than y's mean: clipped to 0


def test_nmse_is_mse_for_constant_targets_and_inf_for_non_finite_predictions():
    example = one_example(constant=True)
    assert eval_direct.score("(1.0+1.0)" + fu.EOS, example)["nmse"] == pytest.approx(1.0)
    assert eval_direct.nmse(np.array([1.0, np.inf]), np.array([1.0, 2.0])) == math.inf


def test_summary_rates():
    example = one_example()
    texts = [example["target"], "x0" + fu.EOS, "((", "(x0*x0)" + fu.EOS]
    results = [eval_direct.score(text, example) for text in texts]
    summary = eval_direct.summarize(results)
    assert summary["n_examples"] == 4 and summary["accuracy"] == 0.25
    assert summary["well_formed_rate"] == 0.75 and summary["exact_match_rate"] == 0.25
    assert summary["mean_r2"] == pytest.approx(sum(r["r2"] for r in results) / 4)
    assert summary["mean_r2_well_formed"] == pytest.approx(sum(r["r2"] for r in results if r["well_formed"]) / 3)


# --------------------------------------------------------------------------
# CLI


def test_main_writes_results_and_exits_zero(checkpoint, data_file, tmp_path, capsys):
    output = tmp_path / "results.json"
    status = eval_direct.main(["--checkpoint", str(checkpoint), "--data", str(data_file), "--batch_size", "3",
                               "--max_new_tokens", "8", "--device", "cpu", "--output", str(output), "--quiet"])
    assert status == 0
    report = json.loads(output.read_text())
    for key in ("accuracy", "mean_r2", "well_formed_rate", "exact_match_rate", "mean_r2_well_formed", "r2_above_0.99"):
        assert key in report
    assert report["n_examples"] == 4 and len(report["examples"]) == 4
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["mean_r2"] <= 1.0
    assert report["max_new_tokens"] == 8
    assert [e["expression_id"] for e in report["examples"]] == [0, 1, 2, 7]
    assert "eval_direct: 4 examples" in capsys.readouterr().out


def test_main_max_examples_and_no_output_file(checkpoint, data_file, capsys, transformers_bars_on):
    assert eval_direct.main(["--checkpoint", str(checkpoint), "--data", str(data_file), "--max_examples", "2",
                             "--max_new_tokens", "4", "--quiet"]) == 0
    assert transformers_bars_on.is_progress_bar_enabled()  # silenced during the run, not for the caller after it
    assert "eval_direct: 2 examples" in capsys.readouterr().out


def test_load_examples_reads_inline_and_referenced_data(data_file):
    examples = eval_direct.load_examples(data_file)
    rows = example_rows()
    assert len(examples) == 4
    assert np.array_equal(examples[3]["X"], np.asarray(rows[3]["X"], dtype=np.float32))
    assert examples[3]["target"] == rows[3]["target"]


@pytest.mark.parametrize("content", [
    "not json\n",
    '{"expression_id": 1, "target": "x0<EOS>"}\n',  # no X/y, no data_ref
    '{"expression_id": 1, "target": "x0<EOS>", "X": [[1.0], [2.0]], "y": [1.0]}\n',  # lengths differ
    '{"expression_id": 1, "target": "x0<EOS>", "data_ref": {"file": "missing.pkl.gz", "id": 3}}\n',
    "",
])
def test_bad_data_file_exits_2_with_one_line(checkpoint, tmp_path, capsys, content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        eval_direct.main(["--checkpoint", str(checkpoint), "--data", str(path), "--quiet"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error


def test_missing_data_file_and_non_checkpoint_exit_2(checkpoint, data_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_direct.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "nope.jsonl"), "--quiet"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        eval_direct.main(["--checkpoint", str(tmp_path), "--data", str(data_file), "--quiet"])
    assert exit_info.value.code == 2
    plain = tmp_path / "plain"
    GPTNeoForCausalLM(tiny_decoder(build_tokenizer())).save_pretrained(plain)
    save_tokenizer(build_tokenizer(), plain)
    with pytest.raises(SystemExit) as exit_info:
        eval_direct.main(["--checkpoint", str(plain), "--data", str(data_file), "--quiet"])
    assert exit_info.value.code == 2
    assert "PrefixLM" in capsys.readouterr().err


def test_a_damaged_checkpoint_exits_2_with_one_line(checkpoint, data_file, tmp_path, capsys):
    """A truncated model.safetensors is a one-line error naming the folder (it was a SafetensorError traceback)."""
    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10_000])
    with pytest.raises(SystemExit) as exit_info:
        eval_direct.main(["--checkpoint", str(damaged), "--data", str(data_file), "--quiet"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {damaged}: cannot load the checkpoint") and "\n" not in error


@pytest.mark.parametrize("flags", [["--max_examples", "0"], ["--max_examples", "-1"], ["--batch_size", "0"],
                                   ["--batch_size", "-1"], ["--max_new_tokens", "0"], ["--max_new_tokens", "-1"]])
def test_unusable_counts_exit_2_naming_the_flag(flags, checkpoint, data_file, capsys, monkeypatch):
    monkeypatch.setattr(eval_direct, "load_examples", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(SystemExit) as exit_info:
        eval_direct.main(["--checkpoint", str(checkpoint), "--data", str(data_file), *flags, "--quiet"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error == f"error: {flags[0]} must be at least 1, got {flags[1]}\n"


def test_output_that_is_the_data_file_is_refused(checkpoint, data_file, tmp_path, capsys):
    before = data_file.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(data_file)
    for output in (data_file, data_file.parent / "." / data_file.name, tmp_path / "link.jsonl"):
        with pytest.raises(SystemExit) as exit_info:
            eval_direct.main(["--checkpoint", str(checkpoint), "--data", str(data_file), "--output", str(output),
                              "--overwrite", "--max_new_tokens", "2", "--quiet"])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "is the input file" in error
    assert data_file.read_bytes() == before


def test_existing_output_needs_overwrite(checkpoint, data_file, tmp_path, capsys):
    output = tmp_path / "results.json"
    output.write_text("precious")
    args = ["--checkpoint", str(checkpoint), "--data", str(data_file), "--output", str(output),
            "--max_examples", "1", "--max_new_tokens", "2", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        eval_direct.main(args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {output}: already exists (use --overwrite to replace it)\n"
    assert output.read_text() == "precious"
    assert eval_direct.main([*args, "--overwrite"]) == 0
    assert json.loads(output.read_text())["n_examples"] == 1


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_unwritable_output_fails_before_loading_in_one_line(where, checkpoint, data_file, tmp_path, capsys,
                                                            monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep")
    output = tmp_path / ("folder" if where == "folder" else "file/out.json")
    monkeypatch.setattr(eval_direct, "load_examples", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(SystemExit) as exit_info:
        eval_direct.main(["--checkpoint", str(checkpoint), "--data", str(data_file), "--output", str(output),
                          "--overwrite", "--quiet"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {output}: ") and error.count("\n") == 1 and ".tmp." not in error
    assert (tmp_path / "file").read_text() == "keep"
