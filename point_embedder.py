"""The point embedder: data points (X, y) as prefix vectors for a GPT-Neo decoder.

Direct mode (SPEC "Direct example": (X, y) -> expression) needs it; one-step
mode can use it too (a training-config flag), the points of the problem then
going in front of the usual prompt. The prototype trained such a model but
saved only the decoder, losing the embedder weights; here `PrefixLM` is one
`PreTrainedModel`, so `save_pretrained` / `from_pretrained` (safetensors)
carry both, and `load_model(folder)` returns whichever model a checkpoint holds.

Points (`encode_points`): each sample's X is padded with zero columns to
`max_input_dim` (10) inputs and y appended as the last column, so a point is
11 numbers. Samples with more than `max_points` (64) points keep the first 64
(data files store points in random order, so that is an unbiased sample) or,
with a seed, a seeded random subset in the original order (augmentation);
shorter samples are padded with zero rows that `mask` marks False. Real points
always come first, so every prefix has a real vector at position 0.

Embedder (`E2EPointEmbedder`), per point:

    features  with `normalize` (default): each column standardised over the
              sample's real points, plus that column's statistics,
              symlog(mean) and symlog(std), repeated on every point, so 33
              numbers; standardising alone would make y = x0, 2 x0 and x0 + 1
              look identical, and the constants are what a formula is made of.
              symlog(v) = sign(v) log(1 + |v|). A column whose spread is within
              1e-6 of its largest magnitude (padding, a constant y) is only
              centred: the generator treats y that flat as constant too.
              Statistics are computed in float64 (y may reach 1e10).
              Without `normalize` the 11 raw values go in unchanged.
    MLP       Linear(features, mlp_hidden) GELU Linear(mlp_hidden, mlp_hidden)
              GELU Linear(mlp_hidden, hidden_size); mlp_hidden = 256 gives a
              ~140k-parameter embedder for the tiny decoder (hidden 256).
    prefix    `n_prefix == max_points` (default, 64): one prefix vector per
              point, LayerNorm'd, zero at padded points, and prefix_mask = the
              point mask, so the decoder's attention never reads a padded
              point and its layers do the set reasoning across points (as an
              encoder would). Any other `n_prefix`: attention pooling, i.e.
              `n_prefix` learned queries attend (multi-head, `pool_heads`) over
              the real points' vectors, then LayerNorm; prefix_mask is all
              True. Pooling to e.g. 16 shortens long one-step prompts; the
              per-point default keeps every point visible to every layer.

Padded points never influence the output: their features are zeroed before
anything reads them and the statistics skip them.

Token layout (`PrefixLM`): [n_prefix prefix vectors][prompt tokens][target].
Direct mode's prompt is `DIRECT_PROMPT` (`<BOS>`), so a direct example is
`<BOS>{expr}<EOS>` after the prefix; one-step mode's prompt is
`format_utils.build_prompt(...)`. Prefix positions get position ids
0..n_prefix-1 whatever the mask; the real tokens of a row follow at
n_prefix, n_prefix + 1, ... (computed from the token attention mask, so left-
and right-padded batches agree). `forward` returns logits for the token
positions only (B, T, vocab) and a loss on `labels` aligned with `input_ids`
(-100 = ignored, shifted inside as Hugging Face does); prefix positions never
carry a loss. GPT-Neo's local-attention layers see only the last
`window_size` positions: with long one-step prompts the prefix is read by the
global layers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as hf_init
from transformers.modeling_outputs import CausalLMOutputWithPast

import format_utils as fu

MODEL_TYPE = "ttsr_prefix_lm"
DIRECT_PROMPT = fu.BOS  # what a direct-mode model continues after the prefix
FLAT_TOLERANCE = 1e-6  # a column spanning less than this of its magnitude is constant


# --------------------------------------------------------------------------
# Configuration


@dataclass
class PointEmbedderConfig:
    """Shape of the point embedder; see the module docstring for what each field does."""

    max_input_dim: int = 10  # input variables x0..x9; y is one more column
    max_points: int = 64  # points kept per sample
    hidden_size: int = 256  # = the decoder's hidden size
    mlp_hidden: int = 256  # width of the per-point MLP's hidden layers
    n_prefix: int = 64  # prefix vectors; == max_points: one per point, else attention pooling
    normalize: bool = True  # per-sample standardisation of each column (+ its statistics)
    pool_heads: int = 4  # heads of the attention pooling (only when n_prefix != max_points)

    def __post_init__(self):
        for name in ("max_input_dim", "max_points", "hidden_size", "mlp_hidden", "n_prefix", "pool_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PointEmbedderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.pooled and self.hidden_size % self.pool_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by pool_heads {self.pool_heads}")

    @property
    def pooled(self) -> bool:
        """True when the points are pooled into n_prefix vectors (n_prefix != max_points)."""
        return self.n_prefix != self.max_points

    @property
    def point_width(self) -> int:
        """Numbers per encoded point: the padded inputs and y."""
        return self.max_input_dim + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PointEmbedderConfig":
        """Inverse of `to_dict`; unknown keys are an error (a typo would otherwise be ignored)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown point embedder settings {unknown}; known: {sorted(known)}")
        return cls(**values)


class PrefixLMConfig(PreTrainedConfig):
    """A GPT-Neo decoder config and a point embedder config, both stored as plain dicts."""

    model_type = MODEL_TYPE

    # Not named `decoder`: get_text_config() would take such an attribute for a sub-config.
    decoder_config: dict | None = None  # GPTNeoConfig.to_dict()
    embedder_config: dict | None = None  # PointEmbedderConfig.to_dict()

    @classmethod
    def from_configs(cls, decoder: GPTNeoConfig | dict, embedder: PointEmbedderConfig | dict | None = None,
                     **kwargs) -> "PrefixLMConfig":
        """Combine a decoder config and an embedder config (default: the defaults at the decoder's hidden size)."""
        decoder = decoder if isinstance(decoder, GPTNeoConfig) else GPTNeoConfig.from_dict(dict(decoder))
        if embedder is None:
            embedder = PointEmbedderConfig(hidden_size=decoder.hidden_size)
        elif isinstance(embedder, dict):
            embedder = PointEmbedderConfig.from_dict(embedder)
        if embedder.hidden_size != decoder.hidden_size:
            raise ValueError(f"embedder hidden_size {embedder.hidden_size} != "
                             f"decoder hidden_size {decoder.hidden_size}")
        return cls(decoder_config=decoder.to_dict(), embedder_config=embedder.to_dict(), **kwargs)

    def gpt_neo_config(self) -> GPTNeoConfig:
        """The decoder's GPTNeoConfig."""
        if self.decoder_config is None:
            raise ValueError("PrefixLMConfig has no decoder_config")
        return GPTNeoConfig.from_dict(dict(self.decoder_config))

    def point_embedder_config(self) -> PointEmbedderConfig:
        """The point embedder's config."""
        if self.embedder_config is None:
            raise ValueError("PrefixLMConfig has no embedder_config")
        return PointEmbedderConfig.from_dict(dict(self.embedder_config))


# --------------------------------------------------------------------------
# Points


def _sample_seed(seed, index: int):
    """The seed for sample `index`: `seed` itself, or its `index`-th entry when it is a sequence."""
    if seed is None or isinstance(seed, (int, np.integer)):
        return seed
    return seed[index]


def encode_points(X_list: Sequence, y_list: Sequence, max_input_dim: int = 10, max_points: int = 64,
                  seed=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples (X (n, d) or (n,), y (n,)) as points (B, max_points, max_input_dim + 1) float32 and mask (B, max_points).

    Columns beyond d are zero, y is the last column, padded rows are zero and
    masked False. Samples longer than `max_points` keep their first rows, or
    with `seed` (an int, or one seed per sample) a seeded random subset kept in
    order. Raises ValueError naming the sample for d > max_input_dim, no
    points, mismatched lengths or non-finite values.
    """
    if len(X_list) != len(y_list):
        raise ValueError(f"{len(X_list)} X arrays but {len(y_list)} y arrays")
    points = np.zeros((len(X_list), max_points, max_input_dim + 1), dtype=np.float32)
    mask = np.zeros((len(X_list), max_points), dtype=bool)
    for index, (X, y) in enumerate(zip(X_list, y_list)):
        X = np.asarray(X, dtype=np.float64)
        X = X[:, None] if X.ndim == 1 else X
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        n_points, n_vars = X.shape
        if n_vars > max_input_dim:
            raise ValueError(f"sample {index}: {n_vars} input variables, more than max_input_dim={max_input_dim}")
        if n_points != len(y):
            raise ValueError(f"sample {index}: X has {n_points} rows but y has {len(y)} values")
        if n_points == 0:
            raise ValueError(f"sample {index}: no points")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError(f"sample {index}: non-finite values in X or y")
        rows = np.arange(n_points)
        if n_points > max_points:
            sample_seed = _sample_seed(seed, index)
            if sample_seed is None:
                rows = rows[:max_points]
            else:
                rows = np.sort(np.random.default_rng(sample_seed).choice(n_points, max_points, replace=False))
        kept = len(rows)
        points[index, :kept, :n_vars] = X[rows]
        points[index, :kept, -1] = y[rows]
        mask[index, :kept] = True
    return torch.from_numpy(points), torch.from_numpy(mask)


def symlog(values: torch.Tensor) -> torch.Tensor:
    """sign(v) log(1 + |v|): keeps sign and order, compresses magnitude."""
    return torch.sign(values) * torch.log1p(values.abs())


def normalized_features(points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample and column: standardised values, symlog(mean), symlog(std); (B, P, 3 C), zero at masked points."""
    values = points.double().masked_fill(~mask[..., None], 0.0)
    weights = mask[..., None].double()
    count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = values.sum(dim=1, keepdim=True) / count
    centred = (values - mean) * weights
    std = (centred.square().sum(dim=1, keepdim=True) / count).sqrt()
    largest = values.abs().amax(dim=1, keepdim=True)
    flat = std <= FLAT_TOLERANCE * largest  # padding columns and constant columns (all-zero included)
    scaled = centred / torch.where(flat, torch.ones_like(std), std)
    statistics = torch.cat([symlog(mean), symlog(torch.where(flat, torch.zeros_like(std), std))], dim=-1)
    features = torch.cat([scaled, statistics.expand(-1, points.shape[1], -1)], dim=-1) * weights
    return features.to(points.dtype)


# --------------------------------------------------------------------------
# Embedder


class E2EPointEmbedder(nn.Module):
    """Points (B, max_points, max_input_dim + 1) and mask -> prefix (B, n_prefix, hidden) and prefix_mask."""

    def __init__(self, config: PointEmbedderConfig):
        super().__init__()
        self.config = config
        width = config.point_width * (3 if config.normalize else 1)
        self.point_mlp = nn.Sequential(
            nn.Linear(width, config.mlp_hidden),
            nn.GELU(),
            nn.Linear(config.mlp_hidden, config.mlp_hidden),
            nn.GELU(),
            nn.Linear(config.mlp_hidden, config.hidden_size),
        )
        if config.pooled:
            self.pool_queries = nn.Parameter(torch.empty(config.n_prefix, config.hidden_size))
            self.pool_keys = nn.Linear(config.hidden_size, config.hidden_size)
            self.pool_values = nn.Linear(config.hidden_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size)
        self.reset_parameters()

    def reset_parameters(self, init=nn.init) -> None:
        """PyTorch's default Linear init, unit LayerNorm; `init` may be transformers' guarded init module."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                init.uniform_(module.weight, -bound, bound)
                init.uniform_(module.bias, -bound, bound)
            elif isinstance(module, nn.LayerNorm):
                init.ones_(module.weight)
                init.zeros_(module.bias)
        if self.config.pooled:
            init.normal_(self.pool_queries, 0.0, 1.0)

    def forward(self, points: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        if points.shape[1:] != (config.max_points, config.point_width):
            raise ValueError(f"points must be (batch, {config.max_points}, {config.point_width}), "
                             f"got {tuple(points.shape)}")
        if mask is None:
            mask = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
        mask = mask.bool()
        if config.normalize:
            features = normalized_features(points, mask)
        else:
            features = points.masked_fill(~mask[..., None], 0.0)
        features = features.to(self.point_mlp[0].weight.dtype)
        vectors = self.point_mlp(features)
        if not config.pooled:
            prefix = self.output_norm(vectors).masked_fill(~mask[..., None], 0.0)
            return prefix, mask
        prefix = self.output_norm(self._pool(vectors, mask))
        return prefix, torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)

    def _pool(self, vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """n_prefix learned queries attend over the real points (multi-head)."""
        batch, heads = vectors.shape[0], self.config.pool_heads

        def split(tensor):  # (B, L, H) -> (B, heads, L, H / heads)
            return tensor.reshape(batch, tensor.shape[1], heads, -1).transpose(1, 2)

        queries = split(self.pool_queries.to(vectors.dtype).expand(batch, -1, -1))
        pooled = nn.functional.scaled_dot_product_attention(
            queries, split(self.pool_keys(vectors)), split(self.pool_values(vectors)),
            attn_mask=mask[:, None, None, :],
        )
        return pooled.transpose(1, 2).reshape(batch, self.config.n_prefix, -1)


# --------------------------------------------------------------------------
# Decoder with a point prefix


class PrefixLM(PreTrainedModel):
    """A GPTNeoForCausalLM (`decoder`) reading the `embedder`'s prefix before its tokens."""

    config_class = PrefixLMConfig
    config: PrefixLMConfig
    base_model_prefix = "prefix_lm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPTNeoBlock"]

    def __init__(self, config: PrefixLMConfig):
        super().__init__(config)
        self.decoder = GPTNeoForCausalLM(config.gpt_neo_config())
        self.embedder = E2EPointEmbedder(config.point_embedder_config())
        if self.embedder.config.hidden_size != self.decoder.config.hidden_size:
            raise ValueError("embedder and decoder hidden sizes differ")
        self.post_init()

    def _init_weights(self, module):
        # The decoder initialises itself (it is a PreTrainedModel); everything else is the embedder,
        # which re-initialises its own submodules, so they are skipped here.
        if isinstance(module, E2EPointEmbedder):
            module.reset_parameters(hf_init)

    @property
    def n_prefix(self) -> int:
        return self.embedder.config.n_prefix

    def get_input_embeddings(self):
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.decoder.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.decoder.get_output_embeddings()

    def prefix_inputs(self, input_ids, attention_mask, points, point_mask):
        """Decoder inputs for [prefix][tokens]: (inputs_embeds, attention_mask, position_ids)."""
        if points is None:
            raise ValueError("PrefixLM needs points (and point_mask) from encode_points")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix, prefix_mask = self.embedder(points, point_mask)
        token_embeds = self.decoder.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([prefix.to(token_embeds.dtype), token_embeds], dim=1)
        full_mask = torch.cat([prefix_mask.to(attention_mask.dtype), attention_mask], dim=1)
        batch, n_prefix = prefix.shape[:2]
        limit = self.decoder.config.max_position_embeddings
        if n_prefix + input_ids.shape[1] > limit:
            raise ValueError(f"{n_prefix} prefix vectors + {input_ids.shape[1]} tokens exceed "
                             f"max_position_embeddings={limit}")
        prefix_positions = torch.arange(n_prefix, device=input_ids.device).expand(batch, -1)
        token_positions = n_prefix + (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return inputs_embeds, full_mask, torch.cat([prefix_positions, token_positions], dim=1)

    def forward(self, input_ids=None, attention_mask=None, labels=None, points=None, point_mask=None,
                use_cache=None, **kwargs) -> CausalLMOutputWithPast:
        """Logits (B, T, vocab) for the T token positions; loss on `labels` aligned with input_ids."""
        inputs_embeds, full_mask, positions = self.prefix_inputs(input_ids, attention_mask, points, point_mask)
        outputs = self.decoder(
            inputs_embeds=inputs_embeds, attention_mask=full_mask, position_ids=positions,
            use_cache=bool(use_cache), logits_to_keep=input_ids.shape[1],
        )
        loss = None
        if labels is not None:
            loss = self.decoder.loss_function(logits=outputs.logits, labels=labels,
                                              vocab_size=self.decoder.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=outputs.logits, past_key_values=outputs.past_key_values)


# --------------------------------------------------------------------------
# Loading and decoding


AutoConfig.register(MODEL_TYPE, PrefixLMConfig, exist_ok=True)
AutoModelForCausalLM.register(PrefixLMConfig, PrefixLM, exist_ok=True)


def load_model(folder, **kwargs):
    """The model saved in `folder`: a PrefixLM or a GPTNeoForCausalLM, per its config's model_type."""
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type == MODEL_TYPE:
        return PrefixLM.from_pretrained(str(folder), **kwargs)
    if config.model_type == "gpt_neo":
        return GPTNeoForCausalLM.from_pretrained(str(folder), **kwargs)
    return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)


def _left_padded(tokenizer, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids left-padded with <PAD> into one batch, and their attention mask."""
    encoded = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]
    if any(not ids for ids in encoded):
        raise ValueError("every prompt needs at least one token (direct mode uses DIRECT_PROMPT)")
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def greedy_decode(model, tokenizer, prompts=None, points=None, point_mask=None, max_new_tokens: int = 64) -> list[str]:
    """Greedy continuations, one per row, each up to and including its first <EOS> (absent if never produced).

    `prompts` None means direct mode: every row continues DIRECT_PROMPT. A
    PrefixLM needs `points`/`point_mask` (from `encode_points`); a plain
    GPTNeoForCausalLM ignores them. Uses the KV cache.
    """
    device = next(model.parameters()).device
    is_prefix_lm = isinstance(model, PrefixLM)
    if prompts is None:
        if points is None:
            raise ValueError("give prompts, or points for direct mode")
        prompts = [DIRECT_PROMPT] * points.shape[0]
    input_ids, token_mask = _left_padded(tokenizer, prompts, device)
    decoder = model.decoder if is_prefix_lm else model
    if is_prefix_lm:
        point_mask = None if point_mask is None else point_mask.to(device)
        inputs_embeds, mask, positions = model.prefix_inputs(input_ids, token_mask, points.to(device), point_mask)
        outputs = decoder(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
                          use_cache=True, logits_to_keep=1)
    else:
        mask, positions = token_mask, (token_mask.cumsum(dim=1) - 1).clamp(min=0)
        outputs = decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                          use_cache=True, logits_to_keep=1)
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    generated = []
    for step in range(max_new_tokens):
        next_token = outputs.logits[:, -1].argmax(dim=-1)
        next_token = torch.where(finished, torch.full_like(next_token, tokenizer.pad_token_id), next_token)
        generated.append(next_token)
        finished |= next_token == tokenizer.eos_token_id
        if finished.all() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        outputs = decoder(input_ids=next_token[:, None], attention_mask=mask, position_ids=next_position,
                          past_key_values=outputs.past_key_values, use_cache=True)
        next_position = next_position + 1
    return _decode_rows(tokenizer, torch.stack(generated, dim=1).tolist() if generated else [[]] * len(prompts))


def _decode_rows(tokenizer, rows: list[list[int]]) -> list[str]:
    """Token rows as text, each cut after its first <EOS>."""
    texts = []
    for ids in rows:
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return texts
