"""train.py and training_data.py on the CPU: config validation, batching, SDPA, training, checkpoints, resume.

Tiny models (hidden 32-64, 2 layers) on small generated datasets; the whole
file runs in well under a minute on two cores.
"""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import format_utils as fu
import tokenizer as tk
import train
import training_data as td

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"model_type": "gpt_neo", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
              "attention_types": [[["global"], 2]], "intermediate_size": 64,
              "activation_function": "gelu_pytorch_tanh"}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small one-step dataset as the conversions write it: train/val JSONL and tokenizer/ beside them."""
    folder = tmp_path_factory.mktemp("data")
    rows = td.synthetic_rows(120, seed=0, population_size=4, max_vars=2, max_depth=3)
    td.write_rows(folder / "onestep.train.jsonl", rows[:100])
    td.write_rows(folder / "onestep.val.jsonl", rows[100:])
    tk.save_tokenizer(tk.build_tokenizer(), folder / "tokenizer")
    (folder / "tiny-model.json").write_text(json.dumps(TINY_MODEL))
    return folder


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """Data made by the real pipeline: expressions -> BasicSR traces -> one-step and direct conversions."""
    import direct_conversion
    import generate_expressions
    import generate_traces
    import one_step_conversion

    folder = tmp_path_factory.mktemp("pipeline")
    expressions, traces = folder / "expressions.pkl.gz", folder / "traces.pkl.gz"
    assert generate_expressions.main(["--n_expressions", "12", "--seed", "0", "--max_vars", "2",
                                      "--output", str(expressions)]) == 0
    assert generate_traces.main(["--expressions_file", str(expressions), "--num_generations", "5",
                                 "--population_size", "10", "--output", str(traces), "--workers", "1"]) == 0
    training = folder / "training"
    assert one_step_conversion.main(["--input", str(traces), "--output", str(training / "onestep.jsonl"),
                                     "--split", "--val_fraction", "0.25", "--quiet"]) == 0
    assert direct_conversion.main(["--input", str(expressions), "--output", str(training / "direct.jsonl"),
                                   "--quiet"]) == 0
    assert direct_conversion.main(["--input", str(expressions), "--output", str(training / "inline.jsonl"),
                                   "--inline_data", "--quiet"]) == 0
    (folder / "tiny-model.json").write_text(json.dumps(TINY_MODEL))
    return folder


def tiny_config(folder, output_dir, train_file="onestep.train.jsonl", **changes) -> train.RunConfig:
    """A fast run config: the tiny test model on `folder`'s data."""
    values = dict(mode="onestep", train_file=str(folder / train_file),
                  model_config=str(folder / "tiny-model.json"), output_dir=str(output_dir), run_name="run",
                  per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=3e-3,
                  warmup_steps=0, lr_scheduler_type="constant", logging_steps=5, eval_steps=100, save_steps=15,
                  dataloader_num_workers=0, sample_prompts=2, disable_tqdm=True, use_datasets=False)
    values.update(changes)
    return train.config_from_dict(values)


def exit_code(main, argv) -> int:
    """A script's exit status: what main returns, or the SystemExit it raises (file_io.exit_on_data_error)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def losses(history):
    return [entry["loss"] for entry in history if "loss" in entry]


# ------------------------------------------------------------------ config


def test_unknown_key_is_rejected_with_the_closest_valid_key():
    with pytest.raises(train.ConfigError, match="did you mean 'learning_rate'"):
        train.config_from_dict({"train_file": "x.jsonl", "learnig_rate": 1e-3})
    with pytest.raises(train.ConfigError, match="did you mean 'max_steps'"):
        train.parse_override("max_step=3")


@pytest.mark.parametrize("key, value", [("max_steps", "ten"), ("max_steps", True), ("learning_rate", "fast"),
                                        ("report_to", 3), ("mode", "twostep"), ("gradient_checkpointing", 1)])
def test_wrong_types_name_the_key(key, value):
    with pytest.raises(train.ConfigError, match=repr(key)):
        train.config_from_dict({"train_file": "x.jsonl", key: value})


def test_overrides_take_the_type_of_their_key(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"train_file": "x.jsonl", "val_file": "v.jsonl"}))
    config = train.load_config(path, ["max_steps=30", "learning_rate=1e-3", "report_to=wandb,tensorboard",
                                      "val_file=null", "run_name=007", "gradient_checkpointing=true",
                                      "num_train_epochs=2"])
    assert (config.max_steps, config.learning_rate, config.report_to) == (30, 1e-3, ["wandb", "tensorboard"])
    assert config.val_file is None and config.run_name == "007" and config.gradient_checkpointing is True
    assert config.num_train_epochs == 2.0 and isinstance(config.num_train_epochs, float)
    assert config.max_length == train.DEFAULT_MAX_LENGTH["onestep"]
    assert train.load_config(path).run_name == "run"  # default: the config file's name


def test_shipped_configs_validate_and_model_shapes_match_the_spec():
    run_configs = sorted(p for p in (REPO / "training").glob("*.json") if not p.name.startswith("gpt-neo"))
    assert {p.stem for p in run_configs} >= {"onestep-tiny", "onestep-s", "autoreg-s", "direct-tiny", "dagger-tiny"}
    tokenizer = tk.build_tokenizer()
    for path in run_configs:
        config = train.load_config(path)
        shape = train.gpt_neo_config(config, tokenizer)
        assert shape.vocab_size == len(tokenizer) and shape.max_position_embeddings >= config.max_length
    sizes = {name: train.gpt_neo_config(train.load_config(REPO / f"training/onestep-{name}.json"), tokenizer)
             for name in ("tiny", "s")}
    assert (sizes["tiny"].hidden_size, sizes["tiny"].num_layers) == (256, 4)
    assert (sizes["s"].hidden_size, sizes["s"].num_layers) == (1024, 16)
    assert train.load_config(REPO / "training/autoreg-s.json").max_length == 2048
    yaml = pytest.importorskip("yaml")
    multi = yaml.safe_load((REPO / "training/accelerate.yaml").read_text())
    single = yaml.safe_load((REPO / "training/accelerate1.yaml").read_text())
    assert multi["distributed_type"] == "MULTI_GPU" and single["num_processes"] == 1


@pytest.mark.parametrize("key, value", [
    ("learning_rate", -1), ("learning_rate", 0), ("learning_rate", float("nan")), ("learning_rate", float("inf")),
    ("per_device_train_batch_size", 0), ("per_device_eval_batch_size", -4), ("max_steps", 0), ("max_steps", -2),
    ("warmup_steps", -1), ("num_train_epochs", -1.0), ("num_train_epochs", float("nan")), ("max_length", 0),
    ("weight_decay", -0.1), ("adam_beta2", 1.0), ("max_grad_norm", -1.0), ("eval_steps", -1), ("seed", -1),
    ("max_train_seconds", -1.0), ("max_train_examples", 0), ("dataloader_num_workers", -1), ("sample_prompts", -1),
    ("save_total_limit", 0), ("pad_to_multiple_of", -8), ("gradient_accumulation_steps", 0)])
def test_numbers_out_of_range_name_the_key(key, value):
    with pytest.raises(train.ConfigError, match=repr(key)):
        train.config_from_dict({"train_file": "x.jsonl", key: value})


def test_numbers_in_range_are_kept():
    config = train.config_from_dict({"train_file": "x.jsonl", "max_steps": 5, "num_train_epochs": 0,
                                     "warmup_steps": 0, "eval_steps": 0, "pad_to_multiple_of": None,
                                     "save_total_limit": None, "max_grad_norm": 0, "weight_decay": 0})
    assert (config.max_steps, config.num_train_epochs, config.pad_to_multiple_of) == (5, 0.0, None)
    with pytest.raises(train.ConfigError, match="'num_train_epochs' must be > 0 when max_steps is -1"):
        train.config_from_dict({"train_file": "x.jsonl", "num_train_epochs": 0})


def test_cli_bad_config_files_and_values_are_one_line_errors(tmp_path, capsys):
    good = tmp_path / "run.json"
    good.write_text(json.dumps({"train_file": str(tmp_path / "x.jsonl")}))
    (tmp_path / "binary.json").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary")
    (tmp_path / "nan.json").write_text('{"train_file": "x.jsonl", "learning_rate": NaN}')
    cases = [(["--config", str(tmp_path)], "is a directory"), (["--config", str(tmp_path / "binary.json")], "UTF-8"),
             (["--config", str(good), "-o", "learning_rate=-1", "--check"], "'learning_rate' must be > 0"),
             (["--config", str(tmp_path / "nan.json"), "--check"], "'learning_rate' must be a finite number")]
    for argv, message in cases:
        assert train.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)


def test_cli_bad_model_config_is_one_line_error_before_tokenizing(data_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "bad-model.json").write_text('{"hidden_size": 32,')
    (tmp_path / "list-model.json").write_text("[1, 2]")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"train_file": str(data_dir / "onestep.train.jsonl"), "use_datasets": False,
                                  "output_dir": str(tmp_path / "out"), "disable_tqdm": True}))
    monkeypatch.setattr(train, "load_datasets", lambda *a, **k: pytest.fail("tokenized before the check"))
    for name, message in (("bad-model.json", "not valid JSON"), ("list-model.json", "is a JSON object"),
                          ("nothing.json", "not found")):
        assert train.main(["--config", str(config), "-o", f"model_config={tmp_path / name}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / name}: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("use_datasets", [False, True])
def test_cli_bad_train_file_is_one_line_error_and_leaves_no_run_folder(data_dir, tmp_path, capsys, use_datasets):
    if use_datasets:
        pytest.importorskip("datasets")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"train_file": "x", "model_config": str(data_dir / "tiny-model.json"),
                                  "tokenizer": str(data_dir / "tokenizer"), "output_dir": str(tmp_path / "out"),
                                  "use_datasets": use_datasets, "disable_tqdm": True}))
    for name, (path, pattern) in _bad_train_files(tmp_path, data_dir / "onestep.val.jsonl").items():
        assert exit_code(train.main, ["--config", str(config), "-o", f"train_file={path}"]) == 2, name
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]  # disable_tqdm: no `datasets` bars either
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and "Traceback" not in err, (name, err)
    assert not (tmp_path / "out").exists()
    if use_datasets:  # silenced for the run only
        assert __import__("datasets").is_progress_bar_enabled()


def test_a_run_failing_after_the_trainer_made_its_folder_leaves_none(data_dir, tmp_path):
    """The Trainer creates the run folder; a failure before anything is written there removes it (and a
    new output_dir), while an output_dir that was there stays."""
    from transformers import TrainerCallback

    class Fail(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            raise RuntimeError("failed at the start")

    for output_dir, kept in ((tmp_path / "new" / "deeper", tmp_path), (tmp_path / "old", tmp_path / "old")):
        (tmp_path / "old").mkdir(exist_ok=True)
        (tmp_path / "old" / "keep.txt").write_text("mine")
        config = tiny_config(data_dir, output_dir, max_steps=2)
        with pytest.raises(RuntimeError, match="failed at the start"):
            train.train(config, callbacks=[Fail()])
        assert not (Path(output_dir) / "run").exists() and kept.is_dir()
    assert not (tmp_path / "new").exists() and (tmp_path / "old" / "keep.txt").read_text() == "mine"


def test_wandb_is_optional_and_offline_by_default(monkeypatch):
    import importlib.util

    config = train.config_from_dict({"train_file": "x.jsonl", "report_to": ["wandb"]})
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(train.ConfigError, match="wandb is not installed"):
        train.check_report_to(config)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.delenv("WANDB_MODE", raising=False)
    train.check_report_to(config)
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's choice stands
    train.check_report_to(config)
    assert os.environ["WANDB_MODE"] == "online"
    train.check_report_to(train.config_from_dict({"train_file": "x.jsonl"}))  # report_to none: nothing needed


# ------------------------------------------------------------------ data and batching


def test_examples_loss_mask_and_padding(data_dir):
    tokenizer = tk.load_tokenizer(data_dir / "tokenizer")
    examples = td.load_examples(data_dir / "onestep.val.jsonl", tokenizer, "onestep", 1024, use_datasets=False)
    rows = list(td.file_io.read_jsonl(data_dir / "onestep.val.jsonl"))
    item = examples[0]
    prompt = fu.build_prompt(rows[0]["context"], rows[0]["population"])
    assert tokenizer.decode(item["input_ids"].tolist()) == prompt + rows[0]["target"]
    assert tokenizer.decode(item["input_ids"][: item["n_prompt"]].tolist()) == prompt
    batch = td.Collator(tokenizer.pad_token_id)([examples[i] for i in range(4)])
    lengths = [len(examples[i]["input_ids"]) for i in range(4)]
    assert batch["input_ids"].shape == (4, max(lengths))  # the longest in the batch, not the context length
    for row in range(4):
        labelled = (batch["labels"][row] != td.IGNORE_INDEX).nonzero().flatten().tolist()
        assert labelled == list(range(examples[row]["n_prompt"], lengths[row]))  # the target tokens only
        assert tokenizer.decode(batch["labels"][row][labelled].tolist()).endswith(fu.EOS)
    assert batch["n_real_tokens"] == sum(lengths) and batch["n_batch_tokens"] == 4 * max(lengths)
    assert td.Collator(0, pad_to_multiple_of=8)([examples[0]])["input_ids"].shape[1] % 8 == 0


def test_every_example_is_its_own_prompt_and_target_when_prompts_repeat(data_dir):
    """encode_pairs tokenizes a repeated prompt once: each example is still exactly its own text."""
    tokenizer = tk.load_tokenizer(data_dir / "tokenizer")
    rows = list(td.file_io.read_jsonl(data_dir / "onestep.val.jsonl"))[:6]
    prompts = [fu.build_prompt(row["context"], row["population"]) for row in rows]
    pairs = [(prompts[i % 3], rows[i]["target"]) for i in (0, 1, 2, 0, 0, 1, 2, 2)] + [(prompts[3], "")]
    ids, n_prompt = td.encode_pairs(tokenizer, pairs)
    whole = tokenizer([p + t for p, t in pairs], add_special_tokens=False)["input_ids"]
    assert ids == whole and n_prompt == [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p, _ in pairs]


def test_overlong_examples_are_skipped_and_counted(data_dir):
    tokenizer = tk.load_tokenizer(data_dir / "tokenizer")
    examples = td.load_examples(data_dir / "onestep.train.jsonl", tokenizer, "onestep", 1024, use_datasets=False)
    limit = int(np.median(examples.lengths))
    short = td.load_examples(data_dir / "onestep.train.jsonl", tokenizer, "onestep", limit, use_datasets=False)
    assert short.report.too_long == int((examples.lengths > limit).sum()) > 0
    assert len(short) + short.report.too_long == 100 and short.lengths.max() <= limit
    with pytest.raises(td.DataFileError, match="no example fits"):
        td.load_examples(data_dir / "onestep.train.jsonl", tokenizer, "onestep", 5, use_datasets=False)


def test_datasets_reader_gives_the_same_examples(data_dir, tmp_path):
    pytest.importorskip("datasets")
    tokenizer = tk.load_tokenizer(data_dir / "tokenizer")
    options = dict(tokenizer=tokenizer, mode="onestep", max_length=150)
    plain = td.load_examples(data_dir / "onestep.train.jsonl", use_datasets=False, **options)
    arrow = td.load_examples(data_dir / "onestep.train.jsonl", use_datasets=True, cache_dir=str(tmp_path), **options)
    assert len(plain) == len(arrow) and plain.report.too_long == arrow.report.too_long
    assert np.array_equal(plain.lengths, arrow.lengths)
    for index in range(len(plain)):
        assert np.array_equal(plain[index]["input_ids"], arrow[index]["input_ids"])
        assert plain[index]["n_prompt"] == arrow[index]["n_prompt"]


def _bad_train_files(folder: Path, good: Path) -> dict:
    """Broken train files: truncated, empty, without `target`, binary (a .pkl.gz), one row without `target`."""
    import gzip

    text = good.read_text()
    rows = list(td.file_io.read_jsonl(good))
    files = {"truncated": (text[: len(text) - 40], r":\d+: not valid JSON"), "empty": ("", "file has no rows"),
             "no_target": ("".join(json.dumps({k: v for k, v in r.items() if k != "target"}) + "\n"
                                   for r in rows), r"lack.*'target'"),
             "one_without_target": ("".join(json.dumps({k: v for k, v in r.items() if k != "target" or i != 3})
                                            + "\n" for i, r in enumerate(rows)), r"(:4|row 4): row lacks \['target'\]"),
             "binary": (None, "not UTF-8 text")}
    paths = {}
    for name, (content, pattern) in files.items():
        path = folder / (f"{name}.pkl.gz" if content is None else f"{name}.jsonl")
        if content is None:
            path.write_bytes(gzip.compress(b"\x80\x04\x95binary pickle" * 50))
        else:
            path.write_text(content)
        paths[name] = (path, pattern)
    return paths


@pytest.mark.parametrize("use_datasets", [False, True])
@pytest.mark.parametrize("name", ["truncated", "empty", "no_target", "one_without_target", "binary"])
def test_a_bad_train_file_is_one_data_error_naming_it(data_dir, tmp_path, use_datasets, name):
    if use_datasets:
        pytest.importorskip("datasets")
    tokenizer = tk.load_tokenizer(data_dir / "tokenizer")
    path, pattern = _bad_train_files(tmp_path, data_dir / "onestep.val.jsonl")[name]
    with pytest.raises(td.DataFileError, match=pattern) as error:
        td.load_examples(path, tokenizer, "onestep", 1024, use_datasets=use_datasets, cache_dir=str(tmp_path / "c"))
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_an_empty_val_file_is_allowed_by_both_readers(data_dir, tmp_path):
    tokenizer = tk.load_tokenizer(data_dir / "tokenizer")
    (tmp_path / "empty.val.jsonl").write_text("")
    for use_datasets in (False, True) if td.datasets_available() else (False,):
        examples = td.load_examples(tmp_path / "empty.val.jsonl", tokenizer, "onestep", 1024, allow_empty=True,
                                    use_datasets=use_datasets, cache_dir=str(tmp_path / "c"))
        assert len(examples) == 0 and examples.report.rows == 0


def test_length_grouped_sampler_keeps_padding_under_ten_percent():
    lengths = np.random.default_rng(0).integers(400, 800, size=6400)
    sampler = td.LengthGroupedSampler(lengths, batch_size=64, seed=1)
    sampler.set_epoch(0)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths))) and order == list(sampler)  # a permutation, repeatable
    sampler.set_epoch(1)
    assert list(sampler) != order
    batches = np.array(order).reshape(-1, 64)
    padded = sum(64 * lengths[b].max() for b in batches)
    assert lengths.sum() / padded >= 0.95
    assert lengths[batches[0]].max() == lengths.max()  # the longest batch first


def test_sdpa_attention_matches_eager():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    import point_embedder as pe

    tokenizer = tk.build_tokenizer()
    shape = GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, window_size=5,
                         attention_types=[[["global", "local"], 1]], max_position_embeddings=64,
                         intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    eager = GPTNeoForCausalLM(shape).eval()
    sdpa = copy.deepcopy(eager)
    assert train.use_sdpa_attention(sdpa) == 2
    ids = torch.randint(5, len(tokenizer), (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:], mask[2, 8:] = 0, 0
    real = mask.bool()
    with torch.no_grad():
        reference = eager(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(sdpa(input_ids=ids, attention_mask=mask).logits[real], reference[real], atol=1e-5)
        # Right padding needs no mask: no real token attends to a later pad.
        assert torch.allclose(sdpa(input_ids=ids).logits[real], reference[real], atol=1e-5)
    prompts = ["<BOS><CONTEXT>gen:1vars:1<POPULATION>x0<FITNESS>-1;(x0+1.0)<FITNESS>-2<TARGET>", "<BOS>"]
    assert pe.greedy_decode(sdpa, tokenizer, prompts, max_new_tokens=12) == \
        pe.greedy_decode(eager, tokenizer, prompts, max_new_tokens=12)


# ------------------------------------------------------------------ training runs


def test_train_checkpoint_reload_resume_and_no_clobbering(pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    training = pipeline_dir / "training"
    result = train.train(tiny_config(training, tmp_path, model_config=str(pipeline_dir / "tiny-model.json"),
                                     max_steps=30, eval_steps=30))
    run_dir = tmp_path / "run"
    assert result["run_dir"] == run_dir and result["global_step"] == 30
    history = losses(result["log_history"])
    assert history[-1] < 0.7 * history[0], history
    assert {"eval_loss", "eval_well_formed_rate", "eval_exact_match"} <= set(result["metrics"])
    checkpoint = run_dir / "checkpoint-30"
    for name in ("model.safetensors", "tokenizer.json", train.RESOLVED_CONFIG, train.CHECKPOINT_META):
        assert (checkpoint / name).exists(), name
    meta = json.loads((checkpoint / train.CHECKPOINT_META).read_text())
    assert meta["step"] == 30 and "code_version" in meta and meta["mode"] == "onestep"
    assert meta["tokenizer_source"] == str(training / "tokenizer")  # the conversion's, found beside the data
    assert meta["val_file"] == str(training / "onestep.val.jsonl")  # found beside the train file
    assert json.loads((checkpoint / train.RESOLVED_CONFIG).read_text())["max_steps"] == 30

    # The checkpoint reloads (from_pretrained) with its tokenizer and computes what the trained model did.
    model, tokenizer, resolved = train.load_trained(checkpoint)
    batch = td.Collator(tokenizer.pad_token_id)([result["trainer"].train_dataset[i] for i in range(3)])
    with torch.no_grad():
        expected = result["trainer"].model.float().cpu().eval()(input_ids=batch["input_ids"]).logits
        assert torch.allclose(model.eval()(input_ids=batch["input_ids"]).logits, expected, atol=1e-4)
    assert tokenizer.get_vocab() == tk.load_tokenizer(training / "tokenizer").get_vocab()
    assert resolved["mode"] == "onestep" and model.config.use_cache  # decodes with the KV cache

    # Resume continues from step 30 in the same folder.
    resumed = train.train(tiny_config(training, tmp_path, model_config=str(pipeline_dir / "tiny-model.json"),
                                      max_steps=40, eval_steps=0, resume_from_checkpoint="latest"))
    assert resumed["run_dir"] == run_dir and resumed["global_step"] == 40
    steps = [entry["step"] for entry in resumed["log_history"] if "loss" in entry]
    assert steps[0] <= 30 < steps[-1] == 40
    assert (run_dir / "checkpoint-40" / train.CHECKPOINT_META).exists()

    # A new run with the same name never writes into the existing folder.
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    fresh = train.train(tiny_config(training, tmp_path, model_config=str(pipeline_dir / "tiny-model.json"),
                                    max_steps=2, eval_steps=0, save_steps=2))
    assert fresh["run_dir"] == tmp_path / "run-4242"
    assert (run_dir / "checkpoint-30" / "model.safetensors").exists()

    # resume "auto" (what a Slurm job runs): a requeued job continues its own run, a new job starts fresh.
    requeued = train.train(tiny_config(training, tmp_path, model_config=str(pipeline_dir / "tiny-model.json"),
                                       max_steps=3, eval_steps=0, save_steps=3, resume_from_checkpoint="auto"))
    assert requeued["run_dir"] == tmp_path / "run-4242" and requeued["global_step"] == 3
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    new_job = train.train(tiny_config(training, tmp_path, model_config=str(pipeline_dir / "tiny-model.json"),
                                      max_steps=1, eval_steps=0, save_steps=1, resume_from_checkpoint="auto"))
    assert new_job["run_dir"] == tmp_path / "run-4243" and new_job["global_step"] == 1


def test_direct_mode_trains_a_prefix_lm_and_reloads_it_with_its_embedder(pipeline_dir, tmp_path):
    import point_embedder as pe

    training = pipeline_dir / "training"
    tokenizer = tk.load_tokenizer(training / "tokenizer")
    by_reference = td.load_examples(training / "direct.jsonl", tokenizer, "direct", 64, with_points=True,
                                    use_datasets=False)
    inline = td.load_examples(training / "inline.jsonl", tokenizer, "direct", 64, with_points=True,
                              use_datasets=False)
    assert tokenizer.decode(by_reference[0]["input_ids"][:1].tolist()) == pe.DIRECT_PROMPT
    points = [pe.encode_points([e[0]["X"]], [e[0]["y"]]) for e in (by_reference, inline)]
    assert torch.equal(points[0][0], points[1][0])  # data_ref and inline rows give the same points

    # One-step rows with the problem's points in front (point_prefix): X, y by expression id.
    prefixed = tiny_config(training, tmp_path, model_config=str(pipeline_dir / "tiny-model.json"), point_prefix=True,
                           expressions_file=str(pipeline_dir / "expressions.pkl.gz"),
                           point_embedder={"max_points": 16, "n_prefix": 16})
    examples, _ = train.load_datasets(prefixed, tokenizer, None, say=lambda line: None)
    batch = train.make_collator(prefixed, tokenizer)([examples[0], examples[1]])
    assert batch["points"].shape == (2, 16, 11) and batch["point_mask"].any(dim=1).all()
    assert "attention_mask" in batch and tokenizer.decode(batch["input_ids"][0][:2].tolist()) == fu.BOS + fu.CONTEXT

    config = tiny_config(training, tmp_path, train_file="direct.jsonl", mode="direct", val_file=str(training / "direct.jsonl"),
                         model_config=str(pipeline_dir / "tiny-model.json"), max_steps=12, eval_steps=12,
                         save_steps=12, max_length=64, point_embedder={"mlp_hidden": 32, "max_points": 16,
                                                                       "n_prefix": 16})
    result = train.train(config)
    history = losses(result["log_history"])
    assert history[-1] < history[0] and "eval_exact_match" in result["metrics"]
    trained = result["trainer"].model
    reloaded = pe.load_model(result["run_dir"] / "checkpoint-12")
    assert isinstance(reloaded, pe.PrefixLM) and reloaded.embedder.config.max_points == 16
    for name, parameter in trained.state_dict().items():
        assert torch.equal(parameter.cpu(), reloaded.state_dict()[name]), name
    assert (result["run_dir"] / "checkpoint-12" / "tokenizer.json").exists()


def test_cli_trains_and_resumes(pipeline_dir, tmp_path, capsys, monkeypatch, transformers_bars_on):
    """The acceptance command: onestep-tiny.json with overrides trains, checkpoints, and resumes."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    training = pipeline_dir / "training"
    common = ["--config", str(REPO / "training/onestep-tiny.json"),
              "-o", f"train_file={training / 'onestep.train.jsonl'}",
              "-o", f"model_config={pipeline_dir / 'tiny-model.json'}", "-o", f"output_dir={tmp_path}",
              "-o", "per_device_train_batch_size=4", "-o", "warmup_steps=0", "-o", "logging_steps=2",
              "-o", "save_steps=3", "-o", "dataloader_num_workers=0", "-o", "eval_steps=0",
              "-o", "disable_tqdm=true", "-o", "use_datasets=false"]
    assert train.main(common + ["-o", "max_steps=3"]) == 0
    assert "it/s]" not in capsys.readouterr().err  # disable_tqdm: no transformers bars either (writing weights)
    assert transformers_bars_on.is_progress_bar_enabled()  # silenced for the run only
    assert (tmp_path / "onestep-tiny" / "checkpoint-3" / train.CHECKPOINT_META).exists()
    assert train.main(common + ["-o", "max_steps=5", "--resume", "latest"]) == 0
    assert json.loads((tmp_path / "onestep-tiny" / "trainer_state.json").read_text())["global_step"] == 5
    assert "trained 5 steps" in capsys.readouterr().out
    assert train.main(common + ["-o", "max_step=5"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err


def test_tiny_model_overfits_20_examples(tmp_path):
    """The pipeline can learn: greedy decoding reproduces >= 90% of 20 training targets."""
    rows = td.synthetic_rows(20, seed=3, population_size=3, max_vars=2, max_depth=2)
    td.write_rows(tmp_path / "few.train.jsonl", rows)
    (tmp_path / "model.json").write_text(json.dumps({**TINY_MODEL, "hidden_size": 64, "num_heads": 4,
                                                     "intermediate_size": 128}))
    config = train.config_from_dict(dict(
        train_file=str(tmp_path / "few.train.jsonl"), val_file=str(tmp_path / "few.train.jsonl"),
        model_config=str(tmp_path / "model.json"), output_dir=str(tmp_path), run_name="overfit",
        per_device_train_batch_size=20, learning_rate=1e-2, warmup_steps=10, lr_scheduler_type="cosine",
        max_steps=80, logging_steps=40, eval_steps=0, save_steps=1000, weight_decay=0.0,
        dataloader_num_workers=0, sample_prompts=20, disable_tqdm=True, use_datasets=False))
    result = train.train(config)
    assert result["metrics"]["eval_exact_match"] >= 0.9, result["metrics"]
    assert result["metrics"]["eval_well_formed_rate"] >= 0.9


def test_bench_smoke_runs(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "train.py / plain loop" in out and "not padding" in out


def test_a_fine_tune_on_data_without_a_sidecar_keeps_its_parents_prompt_settings(tmp_path):
    # dagger.py trains on a mix of rows with no conversion sidecar: the
    # checkpoint must still say which prompts it reads (NeuralSR needs it).
    parent = tmp_path / "parent"
    parent.mkdir()
    settings = {"conversion": "one_step", "context_type": "rich", "max_target_tokens": 31}
    (parent / train.CHECKPOINT_META).write_text(json.dumps({"prompt": settings}))
    mixed = tmp_path / "mixed.train.jsonl"
    mixed.write_text("")
    assert train.run_prompt_settings(train.RunConfig(train_file=str(mixed))) is None
    assert train.run_prompt_settings(train.RunConfig(train_file=str(mixed), init_from=str(parent))) == settings


def test_max_train_seconds_ends_a_run_as_a_finished_one(pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    training = pipeline_dir / "training"
    result = train.train(tiny_config(training, tmp_path, model_config=str(pipeline_dir / "tiny-model.json"),
                                     max_steps=30, eval_steps=0, max_train_seconds=0.0))
    assert result["global_step"] == 1  # the limit is checked after each step
    assert (result["final_dir"] / train.CHECKPOINT_META).exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(train.ConfigError, match="single-process"):
        train._time_limit_callbacks(train.RunConfig(max_train_seconds=5.0))
