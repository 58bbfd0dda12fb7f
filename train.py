"""Train a GPT-Neo model on ttsr training JSONL (one-step, autoregressive or direct).

    python train.py --config training/onestep-tiny.json
    python train.py --config training/onestep-tiny.json -o max_steps=30 -o train_file=my.train.jsonl
    python train.py --config training/onestep-tiny.json --resume latest
    accelerate launch --config_file training/accelerate.yaml --num_processes 4 train.py --config ...

The run config (training/*.json) is one flat JSON object whose keys are the
fields of `RunConfig` below; an unknown key is an error that names the closest
valid one, a value of the wrong type or out of range (RANGES: learning_rate
> 0, batch sizes >= 1, ...; NaN is never valid) an error that names its key. `-o
key=value` overrides a key (the value is read as the key's type; `null`
clears an optional key). `--check` prints the resolved config and exits.

What happens (`main`): the config is resolved; the tokenizer is loaded from
`tokenizer` (default: `tokenizer/` beside the train file, as the conversions
save it); the JSONL files are tokenized (training_data.py); the model is
built from `model_config` (training/gpt-neo-*.json) with the tokenizer's
vocabulary, or loaded from `init_from`; the Hugging Face Trainer trains it
(loss on target tokens only, length-grouped batches padded to the longest
example, bf16 on a GPU and fp32 on the CPU, SDPA attention, evaluation loss
and greedy samples on validation prompts every `eval_steps`); every
checkpoint folder holds the weights (safetensors), the tokenizer, the
resolved config and the code version, and loads with `from_pretrained` (or
`point_embedder.load_model` for any of them). The run folder is
`{output_dir}/{run_name}`; if it exists and the run is not a resume, a
suffix (the Slurm job id, else a timestamp) is added: nothing is clobbered.

SDPA: GPT-Neo in transformers 5 offers only eager and flash-attention-2
attention. `use_sdpa_attention` swaps each attention module for a subclass
whose `_attn` calls torch's scaled_dot_product_attention with GPT-Neo's
arithmetic (no 1/sqrt(d) scaling, local layers keep their window). The
parameters are unchanged, so a checkpoint reloads as a stock GPTNeoForCausalLM.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import difflib
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import file_io
from progress import library_bars_off

REPO = Path(__file__).resolve().parent
CHECKPOINT_META = "ttsr_train_meta.json"  # written last into every checkpoint: its presence means complete
RESOLVED_CONFIG = "resolved_config.json"
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "ttsr-checkpoint", 1
DEFAULT_MAX_LENGTH = {"onestep": 1024, "autoreg": 2048, "direct": 256}


class ConfigError(ValueError):
    """A bad run config: one line naming the key."""


# --------------------------------------------------------------------------
# Run config


@dataclass
class RunConfig:
    """Every key a run config (training/*.json) may hold; see the docstring of each group."""

    # --- what to train on
    mode: str = "onestep"  # onestep | autoreg | direct
    train_file: str = ""  # training JSONL (a conversion's *.train.jsonl)
    val_file: str | None = None  # default: the *.val.jsonl beside a *.train.jsonl, if there is one
    tokenizer: str | None = None  # tokenizer folder; default: tokenizer/ beside the train file
    expressions_file: str | None = None  # X, y by expression id (point prefix); default: the sidecar's source
    point_prefix: bool = False  # onestep/autoreg: put the problem's points in front of the prompt
    max_length: int | None = None  # longest example in tokens; longer ones are skipped. Default by mode
    max_train_examples: int | None = None  # a seeded subset of the train file (quick runs)
    max_eval_examples: int | None = 2000  # a seeded subset of the val file for the evaluation loss
    use_datasets: bool | None = None  # read JSONL through `datasets` (Arrow); None = when installed
    # --- model
    model_config: str = "training/gpt-neo-tiny.json"  # GPT-Neo shape (relative to the repo or the config)
    point_embedder: dict = field(default_factory=dict)  # PointEmbedderConfig overrides (direct / point_prefix)
    init_from: str | None = None  # checkpoint folder to start from (fine-tuning, DAgger) instead of scratch
    attention: str = "sdpa"  # sdpa | eager
    # --- output
    output_dir: str = "checkpoints"
    run_name: str | None = None  # default: the config file's name
    resume_from_checkpoint: str | None = None  # checkpoint folder, "latest" or "auto" (see resolve_resume)
    # --- optimisation
    seed: int = 42
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    adam_beta2: float = 0.99
    warmup_steps: int = 500
    lr_scheduler_type: str = "cosine"
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    max_train_seconds: float | None = None  # stop (and save) once training has run this long (a wall-clock budget)
    max_grad_norm: float = 1.0
    optim: str = "auto"  # auto: fused AdamW on a GPU, AdamW on the CPU; or any Trainer optim name
    # --- speed
    precision: str = "auto"  # auto (bf16 on a GPU, fp32 on the CPU) | bf16 | fp32
    device: str = "auto"  # auto | cpu
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    group_by_length: bool = True  # length-grouped batches (little padding)
    pad_to_multiple_of: int | None = 8
    dataloader_num_workers: int = 2
    ddp_backend: str | None = None  # default: nccl on GPUs, gloo on the CPU
    # --- logging, evaluation, checkpoints
    logging_steps: int = 50
    eval_steps: int = 1000  # 0 = no evaluation during training
    save_steps: int = 1000
    save_total_limit: int | None = 3
    sample_prompts: int = 8  # validation prompts greedily decoded at each evaluation
    sample_max_new_tokens: int | None = None  # default: longest sampled target + 8
    report_to: list[str] = field(default_factory=lambda: ["none"])  # none | wandb | tensorboard ...
    wandb_project: str = "ttsr"
    disable_tqdm: bool = False
    debug_dump_param_hash: bool = False  # write each rank's parameter hash to the run folder (DDP test)
    _comment: str | None = None  # free text, ignored

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MODES = ("onestep", "autoreg", "direct")
CHOICES = {"mode": MODES, "attention": ("sdpa", "eager"), "precision": ("auto", "bf16", "fp32"),
           "device": ("auto", "cpu")}
_TYPES = typing.get_type_hints(RunConfig)
FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def _type_name(annotation) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_value(key: str, value, annotation=None):
    """`value` checked (and int widened to float) against the key's type; ConfigError naming the key."""
    annotation = _TYPES[key] if annotation is None else annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_value(key, value, inner[0]) if len(inner) == 1 else value
    if origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {key!r} must be a list of strings, got {value!r}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is dict and isinstance(value, dict):
        return value
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} must be {_type_name(annotation)}, got {type(value).__name__} {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"config key {key!r} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def unknown_key_error(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(FIELDS)}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` with the value read as the key's type (JSON first, then plain text)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    if key not in _TYPES:
        raise unknown_key_error(key)
    annotation = _TYPES[key]
    if raw.lower() in ("null", "none") and type(None) in typing.get_args(annotation):
        return key, None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if annotation is str or (typing.get_args(annotation) and str in typing.get_args(annotation)):
        value = raw  # a string key takes the text as written (`run_name=007` stays "007")
    if isinstance(value, str) and bool in (annotation, *typing.get_args(annotation)):
        lowered = value.lower()
        if lowered in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            value = lowered in ("true", "yes", "on", "1")
    return key, value


def load_config(path, overrides=()) -> RunConfig:
    """The run config in `path` with `key=value` overrides applied, validated (ConfigError)."""
    path = Path(path)
    values = read_json_file(path, "config file")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a run config is a JSON object")
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    config = config_from_dict(values)
    if config.run_name is None:
        config.run_name = path.name.removesuffix(".json")
    config.model_config = str(resolve_beside(config.model_config, path))
    return config


def read_json_file(path: Path, what: str):
    """file_io.read_json, its one-line error as a ConfigError."""
    try:
        return file_io.read_json(path, what)
    except file_io.DataFileError as error:
        raise ConfigError(str(error)) from None


# Allowed ranges of the numeric keys: (lowest value, whether the lowest value itself is allowed); None
# stays allowed where the key is optional. Every number must also be finite (JSON NaN / Infinity are not).
RANGES = {
    "max_length": (1, True), "max_train_examples": (1, True), "max_eval_examples": (1, True),
    "seed": (0, True), "per_device_train_batch_size": (1, True), "per_device_eval_batch_size": (1, True),
    "gradient_accumulation_steps": (1, True), "learning_rate": (0, False), "weight_decay": (0, True),
    "adam_beta2": (0, True), "warmup_steps": (0, True), "num_train_epochs": (0, True),
    "max_train_seconds": (0, True), "max_grad_norm": (0, True), "pad_to_multiple_of": (0, True),
    "dataloader_num_workers": (0, True), "logging_steps": (1, True), "eval_steps": (0, True),
    "save_steps": (1, True), "save_total_limit": (1, True), "sample_prompts": (0, True),
    "sample_max_new_tokens": (1, True),
}


def check_ranges(config: RunConfig) -> None:
    """Each numeric key finite and within its range (RANGES); ConfigError naming the key."""
    for key, (low, inclusive) in RANGES.items():
        value = getattr(config, key)
        if value is None:
            continue
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value}")
        if value < low or (value == low and not inclusive):
            raise ConfigError(f"config key {key!r} must be {'>=' if inclusive else '>'} {low}, got {value}")
    if not config.adam_beta2 < 1:
        raise ConfigError(f"config key 'adam_beta2' must be < 1, got {config.adam_beta2}")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ConfigError(f"config key 'max_steps' must be -1 (train num_train_epochs) or >= 1, "
                          f"got {config.max_steps}")
    if config.max_steps == -1 and config.num_train_epochs == 0:
        raise ConfigError("config key 'num_train_epochs' must be > 0 when max_steps is -1, got 0.0")


def config_from_dict(values: dict) -> RunConfig:
    """A RunConfig from a dict; unknown keys and wrong types raise ConfigError."""
    for key in values:
        if key not in _TYPES:
            raise unknown_key_error(key)
    checked = {key: check_value(key, value) for key, value in values.items()}
    config = RunConfig(**checked)
    if config.max_length is None:
        config.max_length = DEFAULT_MAX_LENGTH[config.mode]
    check_ranges(config)
    if not config.train_file:
        raise ConfigError("config key 'train_file' is required")
    return config


def resolve_beside(name: str, config_path: Path) -> Path:
    """A relative path as given when it exists from here, else relative to the repo, else to the config file."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    for base in (REPO, config_path.parent):
        if (base / path).exists():
            return base / path
    return path


# --------------------------------------------------------------------------
# Model


def gpt_neo_config(config: RunConfig, tokenizer, n_prefix: int = 0):
    """GPTNeoConfig from the model-config JSON, with the tokenizer's vocabulary and enough positions."""
    from transformers import GPTNeoConfig

    path = Path(config.model_config)
    values = read_model_config(path)
    known = set(GPTNeoConfig().to_dict()) | {"attention_types"}
    for key in values:
        if key not in known and not key.startswith("_"):
            close = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"{path}: unknown GPT-Neo key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    values = {k: v for k, v in values.items() if not k.startswith("_") and k != "model_type"}
    values.update(vocab_size=len(tokenizer), max_position_embeddings=config.max_length + n_prefix,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    return GPTNeoConfig(**values)


def read_model_config(path) -> dict:
    """The model-config JSON object (GPT-Neo keys); ConfigError naming the file."""
    path = Path(path)
    values = read_json_file(path, "model_config file")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a model_config is a JSON object, got {type(values).__name__}")
    return values


def uses_points(config: RunConfig) -> bool:
    return config.mode == "direct" or config.point_prefix


def build_model(config: RunConfig, tokenizer):
    """A fresh GPTNeoForCausalLM (or PrefixLM with points), or the `init_from` checkpoint's model."""
    import torch
    from transformers import GPTNeoForCausalLM

    if config.init_from:
        model = load_any_model(config.init_from)
        if model.get_input_embeddings().num_embeddings != len(tokenizer):
            raise ConfigError(f"init_from {config.init_from}: vocabulary of {model.get_input_embeddings().num_embeddings}"
                              f" tokens, the tokenizer has {len(tokenizer)}")
    else:
        torch.manual_seed(config.seed)
        if uses_points(config):
            import point_embedder as pe

            embedder = point_embedder_config(config, _hidden_size(config))
            decoder = gpt_neo_config(config, tokenizer, n_prefix=embedder.n_prefix)
            special = {key: getattr(decoder, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
            model = pe.PrefixLM(pe.PrefixLMConfig.from_configs(decoder, embedder, **special))
        else:
            model = GPTNeoForCausalLM(gpt_neo_config(config, tokenizer))
    if config.attention == "sdpa":
        use_sdpa_attention(model)
    return model


def point_embedder_config(config: RunConfig, hidden_size: int):
    """PointEmbedderConfig from the `point_embedder` key (ConfigError on a bad one)."""
    import point_embedder as pe

    try:
        return pe.PointEmbedderConfig.from_dict({"hidden_size": hidden_size, **config.point_embedder})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config key 'point_embedder': {error}") from None


def _hidden_size(config: RunConfig) -> int:
    return int(read_model_config(config.model_config).get("hidden_size", 768))


def load_any_model(folder):
    """A checkpoint's model: point_embedder.load_model when available, else GPTNeoForCausalLM."""
    try:
        import point_embedder as pe
    except ImportError:
        from transformers import GPTNeoForCausalLM

        return GPTNeoForCausalLM.from_pretrained(str(folder))
    return pe.load_model(folder)


def use_sdpa_attention(model) -> int:
    """Swap every eager GPT-Neo attention module in `model` for the SDPA one; returns how many.

    On a GPU this also turns off SDPA's cuDNN backend for the process (see below).
    """
    from transformers import GPTNeoConfig
    from transformers.models.gpt_neo import modeling_gpt_neo as neo

    import torch

    if torch.cuda.is_available():
        # SDPA's cuDNN backend builds an execution plan for every new shape (~12 ms of CPU each on an
        # H100, seen with bench/bench_train.py --profile), and every length-grouped batch has a new
        # length; the flash and memory-efficient kernels have no such cost.
        torch.backends.cuda.enable_cudnn_sdp(False)
    swapped = 0
    for module in model.modules():
        if type(module) is neo.GPTNeoSelfAttention:
            module.__class__ = _sdpa_class()
            swapped += 1
        if isinstance(getattr(module, "config", None), GPTNeoConfig):
            # Masks are then built the SDPA way: None (is_causal) when no padding, else boolean.
            module.config._attn_implementation = "sdpa"
    return swapped


_SDPA_CLASS = None


def _sdpa_class():
    """GPTNeoSelfAttention with `_attn` on torch's scaled_dot_product_attention (built on first use)."""
    global _SDPA_CLASS
    if _SDPA_CLASS is not None:
        return _SDPA_CLASS
    import torch
    from torch.nn import functional as F
    from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention

    class SdpaGPTNeoSelfAttention(GPTNeoSelfAttention):
        """GPT-Neo attention through SDPA: same parameters, same arithmetic (unscaled scores)."""

        def _attn(self, query, key, value, attention_mask=None):
            q_length, k_length = query.shape[-2], key.shape[-2]
            mask, causal = attention_mask, False
            if self.attention_type == "local" or (mask is None and q_length not in (1, k_length)):
                band = self.bias[:, :, k_length - q_length:k_length, :k_length]
                if mask is None:
                    mask = band
                elif mask.dtype == torch.bool:
                    mask = mask & band
                else:
                    mask = mask.masked_fill(~band, torch.finfo(mask.dtype).min)
            elif mask is None and q_length == k_length:
                causal = True
            if mask is not None and mask.dtype != torch.bool:
                mask = mask.to(query.dtype)
            dropout = float(self.config.attention_dropout) if self.training else 0.0
            output = F.scaled_dot_product_attention(query, key.to(query.dtype), value.to(query.dtype),
                                                    attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=1.0)
            return output, None

    _SDPA_CLASS = SdpaGPTNeoSelfAttention
    return _SDPA_CLASS


# --------------------------------------------------------------------------
# Data


def default_tokenizer_dir(config: RunConfig) -> Path:
    return Path(config.tokenizer) if config.tokenizer else Path(config.train_file).parent / "tokenizer"


def load_run_tokenizer(config: RunConfig, say=print):
    """The dataset's tokenizer (see `tokenizer`), or a freshly built default one (said so)."""
    import tokenizer as tk

    folder = default_tokenizer_dir(config)
    if (folder / "tokenizer.json").exists():
        return tk.load_tokenizer(folder), str(folder)
    if config.tokenizer:
        raise ConfigError(f"tokenizer {folder}: no tokenizer.json there")
    say(f"note: no tokenizer in {folder}; built the default one (tokenizer.build_tokenizer(): "
        f"x0..x{tk.DEFAULT_MAX_VARS - 1}, constants {', '.join(map(str, tk.DEFAULT_CONSTANTS))})")
    return tk.build_tokenizer(), "built: tokenizer.build_tokenizer()"


def default_val_file(config: RunConfig) -> str | None:
    """`x.val.jsonl` beside a `x.train.jsonl` when it exists."""
    if config.val_file is not None:
        return config.val_file
    train = Path(config.train_file)
    if train.name.endswith(".train.jsonl"):
        candidate = train.with_name(train.name[: -len(".train.jsonl")] + ".val.jsonl")
        if candidate.exists():
            return str(candidate)
    return None


def read_sidecar(train_file) -> dict | None:
    """A conversion's sidecar (`<name>.meta.json` beside `<name>.jsonl`), or None when there is none."""
    sidecar = Path(str(train_file).removesuffix(".jsonl") + ".meta.json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else None


def sidecar_expressions_file(train_file) -> str | None:
    """The expressions file a conversion's sidecar (`<name>.meta.json`) names among its sources."""
    sources = (read_sidecar(train_file) or {}).get("sources", [])
    paths = [s.get("path") for s in sources if isinstance(s, dict) and s.get("kind") == "expressions"]
    return paths[0] if paths else None


def training_prompt_settings(train_file) -> dict | None:
    """How the training prompts were written, from the conversion's sidecar (None without one).

    Saved in every checkpoint's meta file, so that NeuralSR writes the
    prompts the model was trained on (context type: prototype defect 1) and
    generates as many tokens as the longest target needs, wherever the
    training data is by then.
    """
    sidecar = read_sidecar(train_file)
    if sidecar is None:
        return None
    parameters = sidecar.get("metadata", {}).get("parameters", {})
    return {"conversion": sidecar.get("conversion"), "context_type": parameters.get("context_type"),
            "parentheses": parameters.get("parentheses", "full"),  # data written before the option: full
            "max_target_tokens": sidecar.get("token_statistics", {}).get("target_tokens", {}).get("max")}


def run_prompt_settings(config: RunConfig) -> dict | None:
    """The prompt settings to record in this run's checkpoints.

    From the training data's sidecar; a fine-tune on data without one (e.g.
    dagger.py's mix of imitation and DAgger rows) keeps its `init_from`
    checkpoint's settings: the prompts it continues to learn are the same.
    """
    settings = training_prompt_settings(config.train_file)
    if settings is None and config.init_from:
        meta_path = Path(config.init_from) / CHECKPOINT_META
        try:
            settings = json.loads(meta_path.read_text()).get("prompt")
        except (OSError, ValueError):
            settings = None
    return settings


def load_datasets(config: RunConfig, tokenizer, val_file: str | None, say=print):
    """(train examples, val examples or None) tokenized per the config; a line on each."""
    import training_data as td

    points = uses_points(config)
    expressions = config.expressions_file
    if points and config.mode != "direct" and expressions is None:
        expressions = sidecar_expressions_file(config.train_file)
        if expressions is None:
            raise ConfigError("point_prefix needs expressions_file: the expressions file (X, y by expression id) "
                              "the traces were made from; the train file's sidecar names none")
    options = dict(tokenizer=tokenizer, mode=config.mode, max_length=config.max_length, with_points=points,
                   expressions_file=expressions, use_datasets=config.use_datasets, progress=not config.disable_tqdm)
    train_set = td.load_examples(config.train_file, **options)
    say("train " + train_set.report.line())
    train_set = td.select_subset(train_set, config.max_train_examples, config.seed)
    if not val_file:
        return train_set, None
    val_set = td.load_examples(val_file, allow_empty=True, **options)
    say("val " + val_set.report.line())
    return train_set, (td.select_subset(val_set, config.max_eval_examples, config.seed) if len(val_set) else None)


def make_collator(config: RunConfig, tokenizer, model=None):
    """The batch collator for this run (attention mask and points only where the model needs them)."""
    import training_data as td

    points_fn, point_options = None, {}
    if uses_points(config):
        import point_embedder as pe

        embedder = model.embedder.config if model is not None else point_embedder_config(config, _hidden_size(config))
        points_fn = pe.encode_points
        point_options = {"max_input_dim": embedder.max_input_dim, "max_points": embedder.max_points}
    return td.Collator(tokenizer.pad_token_id, config.pad_to_multiple_of, attention_mask=uses_points(config),
                       points_fn=points_fn, point_options=point_options)


# --------------------------------------------------------------------------
# Trainer


def _trainer_class():
    """TTSRTrainer, built on first use so that importing train.py stays light."""
    from transformers import Trainer

    import training_data as td

    class TTSRTrainer(Trainer):
        """The HF Trainer with length-grouped batches, padding/throughput logs and sampled metrics."""

        def __init__(self, *args, run_config: RunConfig, **kwargs):
            super().__init__(*args, **kwargs)
            self.run_config = run_config
            self.token_counts = [0, 0]  # real, processed (since the last log)
            self.tokens_seen = [0, 0]  # real, processed (this process, whole run)
            self.window_start = time.perf_counter()

        def _get_train_sampler(self, *args, **kwargs):
            if self.run_config.group_by_length:
                return td.LengthGroupedSampler(self.train_dataset.lengths, self.args.per_device_train_batch_size
                                               * self.args.gradient_accumulation_steps, seed=self.args.seed)
            return super()._get_train_sampler(*args, **kwargs)

        def _get_eval_sampler(self, eval_dataset, *args, **kwargs):
            return td.LengthSortedSampler(eval_dataset.lengths)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            real, processed = td.pop_batch_stats(inputs)
            if model.training:
                for counts in (self.token_counts, self.tokens_seen):
                    counts[0] += real
                    counts[1] += processed
            inputs["use_cache"] = False
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def log(self, logs, *args, **kwargs):
            if "loss" in logs and self.token_counts[1]:
                seconds = time.perf_counter() - self.window_start
                real, processed = self.token_counts
                logs["nonpad_fraction"] = round(real / processed, 4)
                logs["tokens_per_second"] = round(processed * self.args.world_size / max(seconds, 1e-9), 1)
                self.token_counts = [0, 0]
                self.window_start = time.perf_counter()
            super().log(logs, *args, **kwargs)

        def evaluate(self, *args, **kwargs):
            metrics = super().evaluate(*args, **kwargs)
            if self.run_config.sample_prompts > 0 and self.eval_dataset is not None:
                sampled = {}
                if self.is_world_process_zero():
                    sampled = sampled_metrics(self.accelerator.unwrap_model(self.model), self.processing_class,
                                              self.eval_dataset, self.run_config, self.args)
                    example = sampled.pop("_example")
                    print(f"sample at step {self.state.global_step}: target {example['target']!r}, "
                          f"generated {example['generated']!r}", flush=True)
                    self.log(sampled)
                metrics.update(sampled)
            return metrics

    return TTSRTrainer


def sample_indices(n_examples: int, count: int, seed: int) -> list[int]:
    """`count` validation examples spread over the file (seeded), the same at every evaluation."""
    count = min(count, n_examples)
    return sorted(np.random.default_rng([seed, 7]).choice(n_examples, size=count, replace=False).tolist())


def sampled_metrics(model, tokenizer, dataset, config: RunConfig, args) -> dict:
    """Greedy continuations of a few validation prompts: eval_well_formed_rate, eval_exact_match."""
    import torch

    import format_utils as fu
    import point_embedder as pe

    items = [dataset[i] for i in sample_indices(len(dataset), config.sample_prompts, config.seed)]
    decode = lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)
    prompts = [decode(item["input_ids"][: item["n_prompt"]]) for item in items]
    targets = [decode(item["input_ids"][item["n_prompt"]:]) for item in items]
    longest = max(len(item["input_ids"]) - item["n_prompt"] for item in items)
    new_tokens = config.sample_max_new_tokens or longest + 8
    points = point_mask = None
    if "X" in items[0]:
        embedder = model.embedder.config
        points, point_mask = pe.encode_points([i["X"] for i in items], [i["y"] for i in items],
                                              embedder.max_input_dim, embedder.max_points)
    was_training = model.training
    model.eval()
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bool(args.bf16)):
        generated = pe.greedy_decode(model, tokenizer, prompts, points, point_mask, max_new_tokens=new_tokens)
    model.train(was_training)
    body = lambda text: text.split(fu.EOS, 1)[0]
    if config.mode == "autoreg":
        individuals = [p for text in generated for p in fu.parse_generated_population(text)]
        well_formed = sum(p is not None for p in individuals) / max(len(individuals), 1)
    else:
        well_formed = float(np.mean([fu.parse_generated(text) is not None for text in generated]))
    exact = float(np.mean([body(g) == body(t) for g, t in zip(generated, targets)]))
    return {"eval_well_formed_rate": round(well_formed, 4), "eval_exact_match": round(exact, 4),
            "_example": {"target": targets[0], "generated": generated[0]}}


def default_backend(cuda: bool) -> str | None:
    """gloo for several CPU processes; otherwise accelerate's choice (nccl on GPUs)."""
    return "gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def training_arguments(config: RunConfig, run_dir: Path, has_eval: bool, cuda: bool):
    """TrainingArguments for this run (keys this transformers version lacks are left out)."""
    from transformers import TrainingArguments

    bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)
    optim = config.optim if config.optim != "auto" else ("adamw_torch_fused" if cuda else "adamw_torch")
    evaluate = has_eval and config.eval_steps > 0
    values = dict(
        output_dir=str(run_dir), seed=config.seed, data_seed=config.seed,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, adam_beta2=config.adam_beta2,
        warmup_steps=config.warmup_steps, lr_scheduler_type=config.lr_scheduler_type,
        num_train_epochs=config.num_train_epochs, max_steps=config.max_steps, max_grad_norm=config.max_grad_norm,
        optim=optim, bf16=bf16, tf32=True if cuda else None, use_cpu=not cuda,
        torch_compile=config.torch_compile,
        logging_steps=config.logging_steps, logging_first_step=True,
        eval_strategy="steps" if evaluate else "no", eval_steps=config.eval_steps if evaluate else None,
        prediction_loss_only=True, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, report_to=config.report_to, run_name=config.run_name,
        dataloader_num_workers=config.dataloader_num_workers, dataloader_pin_memory=cuda,
        remove_unused_columns=False, ddp_backend=config.ddp_backend or default_backend(cuda),
        ddp_find_unused_parameters=False, disable_tqdm=config.disable_tqdm,
        # No per-step host-device synchronisation: the NaN filter reads the loss every step,
        # and blocking batch copies wait for the previous step; both starve a small model's GPU.
        logging_nan_inf_filter=False, accelerator_config={"non_blocking": True} if cuda else None,
    )
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    if config.gradient_checkpointing:  # renamed activation_checkpointing in transformers 5.2x
        values["activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"] = True
    return TrainingArguments(**{k: v for k, v in values.items() if k in known})


# --------------------------------------------------------------------------
# Run folder, checkpoints, resume


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs, flush=True)


def run_suffix() -> str:
    """-<Slurm job id>, else -<timestamp>."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"-{job}" if job else "-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def fresh_run_dir(base: Path) -> Path:
    """`base` if it does not exist, else base + suffix (+ -2, -3 ... if that exists too)."""
    if not base.exists():
        return base
    candidate = base.with_name(base.name + run_suffix())
    number = 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}{run_suffix()}-{number}")
        number += 1
    return candidate


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint-N folder with the highest N that is complete (holds the meta file), or None."""
    complete = [p for p in folder.glob("checkpoint-*") if (p / CHECKPOINT_META).exists()
                and p.name.split("-")[-1].isdigit()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resolve_resume(config: RunConfig) -> Path | None:
    """The checkpoint to resume from; None for a fresh run.

    A checkpoint folder; "latest": the newest complete checkpoint of this
    run's folder (`{run_name}-{SLURM_JOB_ID}` first, then `{run_name}`), an
    error when there is none; "auto": the same but only a checkpoint written
    by this Slurm job (a requeued job continues, a new job starts fresh), and
    a fresh run when there is none.
    """
    wanted = config.resume_from_checkpoint
    if not wanted:
        return None
    if wanted not in ("latest", "auto"):
        path = Path(wanted)
        if not (path / "trainer_state.json").exists():
            raise ConfigError(f"resume_from_checkpoint {path}: not a checkpoint folder (no trainer_state.json)")
        return path
    base = Path(config.output_dir) / config.run_name
    job = os.environ.get("SLURM_JOB_ID")
    for folder in ([base.with_name(f"{base.name}-{job}")] if job else []) + [base]:
        found = latest_checkpoint(folder)
        if found is None:
            continue
        if wanted == "latest" or job is None or checkpoint_job(found) == job:
            return found
    if wanted == "auto":
        return None
    raise ConfigError(f"resume_from_checkpoint latest: no complete checkpoint in {base}")


def checkpoint_job(folder: Path) -> str | None:
    """The Slurm job id that wrote a checkpoint (from its meta file)."""
    return json.loads((folder / CHECKPOINT_META).read_text()).get("slurm_job_id")


def choose_run_dir(config: RunConfig, resume: Path | None) -> Path:
    """The run folder (decided on rank 0 and shared with the other ranks)."""
    import torch.distributed as dist

    run_dir = resume.parent if resume else fresh_run_dir(Path(config.output_dir) / config.run_name)
    if dist.is_available() and dist.is_initialized():
        shared = [str(run_dir)]
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    return run_dir


def write_json(path: Path, content: dict) -> None:
    with file_io.atomic_open(path, "w") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_checkpoint_extras(folder: Path, config: RunConfig, tokenizer, info: dict, step: int) -> None:
    """Tokenizer, resolved config, code version; the meta file last (its presence = complete)."""
    import tokenizer as tk

    if not (folder / "tokenizer.json").exists():
        tk.save_tokenizer(tokenizer, folder)
    write_json(folder / RESOLVED_CONFIG, config.to_dict())
    write_json(folder / CHECKPOINT_META, {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
        "code_version": file_io.code_version(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(), **info,
    })


def save_random_checkpoint(folder, model_shape: dict, mode: str = "onestep", point_prefix: bool = False,
                           context_type: str = "basic", max_target_tokens: int = 32,
                           parentheses: str = "full") -> Path:
    """An untrained (random-weight) checkpoint written the way a training run writes one.

    For tests and benchmarks of what reads checkpoints (NeuralSR): the model
    is built by `build_model` from a run config whose model shape is
    `model_shape` (GPT-Neo config keys, as in training/gpt-neo-*.json),
    `save_pretrained` writes the weights and `write_checkpoint_extras` the
    tokenizer, resolved config and meta file (with the prompt settings a
    trained checkpoint records), so loading goes through the real path.
    """
    import tokenizer as tk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_config = folder.parent / f"{folder.name}-model.json"
    model_config.write_text(json.dumps(model_shape))
    config = RunConfig(mode=mode, train_file="synthetic.train.jsonl", point_prefix=point_prefix, max_length=1024,
                       model_config=str(model_config), seed=0,
                       point_embedder={"mlp_hidden": 32} if point_prefix else {})
    tokenizer = tk.build_tokenizer()
    build_model(config, tokenizer).save_pretrained(str(folder))
    prompt = {"conversion": {"onestep": "one_step"}.get(mode, mode), "context_type": context_type,
              "parentheses": parentheses, "max_target_tokens": max_target_tokens}
    write_checkpoint_extras(folder, config, tokenizer, {"mode": mode, "prompt": prompt}, step=0)
    return folder


def _time_limit_callbacks(config: RunConfig) -> list:
    """A callback that ends training after `max_train_seconds` of training steps (none when unset).

    Counted from the first step, so tokenizing is not included; the run then
    ends as a finished one (final evaluation, `final/` checkpoint). The
    learning-rate schedule still follows max_steps / epochs, so a run cut
    short ends above the schedule's final rate.
    """
    if config.max_train_seconds is None:
        return []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each rank would decide on its own clock, and hang the others
        raise ConfigError("max_train_seconds works in single-process runs only; use max_steps with several processes")
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        started = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.started is None:
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.started >= config.max_train_seconds:
                if not control.should_training_stop:
                    print0(f"max_train_seconds={config.max_train_seconds:g} reached at step {state.global_step}")
                control.should_training_stop = True

    return [TimeLimit()]


def _extras_callback(config: RunConfig, tokenizer, info: dict):
    from transformers import TrainerCallback

    class CheckpointExtras(TrainerCallback):
        """After each checkpoint is written: add the ttsr files to it (rank 0)."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.exists():
                    write_checkpoint_extras(folder, config, tokenizer, info, state.global_step)

    return CheckpointExtras()


def parameter_hash(model) -> str:
    """sha256 over every parameter's bytes, in name order."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def load_trained(folder):
    """(model, tokenizer, resolved config dict) of a checkpoint folder written by train.py."""
    import tokenizer as tk

    folder = Path(folder)
    config = json.loads((folder / RESOLVED_CONFIG).read_text()) if (folder / RESOLVED_CONFIG).exists() else {}
    return load_any_model(folder), tk.load_tokenizer(folder), config


# --------------------------------------------------------------------------
# Main


def check_report_to(config: RunConfig) -> None:
    """wandb needs the package; it runs offline unless the user chose WANDB_MODE."""
    import importlib.util

    if "wandb" in config.report_to:
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("report_to includes wandb but wandb is not installed "
                              "(pip install wandb, or set report_to to none)")
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_PROJECT", config.wandb_project)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config JSON (training/*.json)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. -o max_steps=30 -o report_to=wandb")
    parser.add_argument("--resume", default=None, metavar="PATH|latest|auto",
                        help="resume from a checkpoint folder; latest: this run's newest complete checkpoint; "
                             "auto: the same if this Slurm job wrote it (a requeued job), else start fresh")
    parser.add_argument("--check", action="store_true", help="print the resolved config and exit")
    return parser


def train(config: RunConfig, config_path: str = "", argv=None, callbacks=()) -> dict:
    """Run one training; returns {"run_dir", "final_dir", "global_step", "log_history", "metrics", "trainer"}.

    `callbacks`: extra TrainerCallbacks (the benchmark's timer). A run that
    fails before anything is written into its new run folder removes it."""
    new_folders = []
    try:
        with library_bars_off(config.disable_tqdm):  # theirs too: loading and writing weights
            return _train(config, config_path, argv, callbacks, new_folders)
    except BaseException:
        if is_main_process():
            for folder in new_folders:
                remove_if_empty(folder)
        raise


def remove_if_empty(folder: Path) -> bool:
    """Remove `folder` when it holds no file (only empty folders, at any depth); whether it did."""
    if not folder.is_dir() or any(not p.is_dir() for p in folder.rglob("*")):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def _train(config: RunConfig, config_path, argv, callbacks, new_folders: list) -> dict:
    """`train`; the run folder goes into `new_folders` when this run creates it."""
    import torch

    started = time.perf_counter()
    if not Path(config.train_file).is_file():
        raise ConfigError(f"train_file {config.train_file}: file not found")
    if not config.init_from:
        read_model_config(config.model_config)  # a bad model_config is reported before the data is tokenized
    check_report_to(config)
    cuda = torch.cuda.is_available() and config.device != "cpu"
    resume = resolve_resume(config)
    tokenizer, tokenizer_source = load_run_tokenizer(config, print0)
    val_file = default_val_file(config)
    args = training_arguments(config, Path(config.output_dir) / config.run_name, val_file is not None, cuda)
    _ = args.device  # sets up torch.distributed when launched with several processes
    run_dir = choose_run_dir(config, resume)
    args.output_dir = str(run_dir)
    created = run_dir  # the outermost folder this run will create (the output_dir too when it is new)
    while not created.parent.exists():
        created = created.parent
    if not run_dir.exists():
        new_folders.append(created)
    with args.main_process_first(desc="tokenizing"):  # rank 0 fills the `datasets` cache, the others read it
        train_set, val_set = load_datasets(config, tokenizer, val_file, print0)
    if val_set is None:
        args.eval_strategy = type(args.eval_strategy)("no")
    model = build_model(config, tokenizer)
    info = {"mode": config.mode, "config_file": str(config_path),
            "command": shlex.join([os.path.basename(sys.executable), *(sys.argv if argv is None else argv)]),
            "train_file": config.train_file, "val_file": val_file, "tokenizer_source": tokenizer_source,
            "train_examples": len(train_set), "val_examples": len(val_set) if val_set is not None else 0,
            "world_size": args.world_size, "bf16": bool(args.bf16), "model_class": type(model).__name__,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "prompt": run_prompt_settings(config)}
    print0(f"run folder {run_dir}{f' (resuming {resume})' if resume else ''}; {type(model).__name__} "
           f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; {config.mode}; "
           f"{'bf16' if args.bf16 else 'fp32'} on {'cuda' if cuda else 'cpu'} x{args.world_size}")
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
        data_collator=make_collator(config, tokenizer, model), processing_class=tokenizer,
        callbacks=[_extras_callback(config, tokenizer, info), *_time_limit_callbacks(config), *callbacks],
        run_config=config,
    )
    # The Trainer turns the KV cache off in the config; saved checkpoints should decode with it
    # (training itself never builds one: compute_loss passes use_cache=False).
    model.config.use_cache = True
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final_metrics = trainer.evaluate() if val_set is not None else {}
    final_dir = save_final(trainer, run_dir, config, tokenizer, info)
    print0(summary_line(trainer, final_metrics, time.perf_counter() - started, final_dir))
    return {"run_dir": run_dir, "final_dir": final_dir, "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history, "metrics": final_metrics, "trainer": trainer}


def save_final(trainer, run_dir: Path, config: RunConfig, tokenizer, info: dict) -> Path:
    """`run_dir/final` (weights, tokenizer, config, meta), trainer_state.json, and the debug parameter hashes."""
    final_dir = run_dir / "final"
    trainer.save_model(str(final_dir))
    if trainer.is_world_process_zero():
        trainer.save_state()
        write_checkpoint_extras(final_dir, config, tokenizer, info, trainer.state.global_step)
    if config.debug_dump_param_hash:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / f"param_hash.rank{trainer.args.process_index}.txt"
        path.write_text(parameter_hash(trainer.model) + "\n")
    return final_dir


def summary_line(trainer, final_metrics: dict, seconds: float, final_dir: Path) -> str:
    """The one line a user wants at the end: steps, time, losses, sampled metrics, speed, where."""
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    speeds = [entry["tokens_per_second"] for entry in history if "tokens_per_second" in entry]
    nonpad = [entry["nonpad_fraction"] for entry in history if "nonpad_fraction" in entry]
    text = f"trained {trainer.state.global_step} steps in {seconds:.0f} s"
    if losses:
        text += f"; train loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    for key, label in (("eval_loss", "eval loss"), ("eval_well_formed_rate", "well-formed"),
                       ("eval_exact_match", "exact match")):
        if key in final_metrics:
            text += f"; {label} {final_metrics[key]:.3f}"
    if speeds:
        text += f"; {np.median(speeds):,.0f} tokens/s, {100 * np.mean(nonpad):.1f}% not padding"
    return text + f" -> {final_dir}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.override)
        if args.resume:
            config.resume_from_checkpoint = args.resume
        if args.check:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        with file_io.exit_on_data_error():
            train(config, args.config, argv=None if argv is None else ["train.py", *argv])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
