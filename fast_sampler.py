"""Fast sampling of many short children from one shared prompt per problem (GPT-Neo).

NeuralSR asks the model, for each of B problems, for S children (population
minus the elite, 19 by default) continuing one prompt per problem
(`<BOS><CONTEXT>..<POPULATION>..<TARGET>`, 400-750 tokens), each child a short
expression ending in `<EOS>`. Hugging Face's `generate(num_return_sequences=S)`
copies every prompt S times and prefills all copies; this module does not:

1. Prefill, once per batch: the B prompts, left-padded into one batch, go
   through the model once (batched, chunked over problems only to bound
   memory), keeping per layer the prompt's keys and values (B, heads, Lp, hd).
2. Decode: at each step the B x S sample queries attend to their problem's
   prompt keys/values *shared* across the S samples (the S queries are the
   rows of one matrix product against the problem's prompt keys: no copy of
   the prompt cache) and to a small preallocated per-sample cache of their own
   generated tokens (B, heads, S, T, hd). Two ways (`attention=`):
   "scores": both products are written into one (B, heads, S, Lp + T) score
   buffer (concatenated, not the values) and normalised in ONE softmax, as
   attention over [prompt, generated] would be; "fused": the prompt part runs
   in a fused attention kernel (flash attention on CUDA; the scores never
   reach memory), the own-token part is a small softmax, and the two are
   merged exactly by their log-sum-exps (see `_forward_step_fused`).
3. A sequence that produced EOS keeps being computed (static shapes) but its
   later tokens are replaced by padding and never returned; a waiting call
   (`sample`) stops as soon as every sequence is done (checked every
   `check_every` steps) and, when its steps run eagerly, drops finished
   sequences from the batch as they accumulate (`_decode`). `launch` queues
   a whole call on CUDA without waiting for the device (no early stop) and
   returns a PendingSample, so the host can work while the device samples
   (batched_neural_sr overlaps the two).

The decoder is plain PyTorch reading the checkpoint's GPT-Neo weights, and
reproduces Hugging Face's GPT-Neo exactly (tests compare the logits):

- attention scores are NOT scaled by 1/sqrt(head_dim);
- query and key are cast to float32 for the scores and the softmax, the
  probabilities cast back to the value dtype (HF's eager GPT-Neo attention);
  the prefill uses SDPA (scale=1) in the model dtype, whose half-precision
  kernels also accumulate q.k and the softmax in float32, and so does the
  fused kernel of attention "fused" (q and k come out of the model-dtype
  projection, so their products are exact in float32 either way);
- local layers see key j from query i iff i - window_size < j <= i, i and j
  being indices in the padded sequence (HF slices its `bias` buffer by cache
  index). With left padding, real tokens are contiguous, so this is the
  distance in real tokens; with a PrefixLM's point prefix, masked prefix slots
  and pads count, exactly as in HF;
- position ids count real tokens only: cumsum(mask) - 1 (what `generate`
  does with left padding), PrefixLM's prefix slots 0..P-1 then tokens from P;
- LayerNorm eps, activation (`config.activation_function`, gelu_new = tanh
  GELU), tied lm_head as in the checkpoint.

Sampling: temperature, then top-k, then top-p (HF's warpers, same order and
conventions), greedy when temperature == 0; draws by inverse CDF from
uniforms generated up front on the CPU from a seeded torch.Generator, so a
seed gives the same children eagerly, with CUDA graphs, and with bucketed
prompt lengths (up to floating-point differences between devices).

Compile modes (`compile=`), on CUDA only (no-ops on CPU):
- False / "eager": one Python-launched step per token (~100 kernels/step:
  launch-bound at small B).
- "cuda_graphs": the decode step (model + sampling + bookkeeping, on static
  buffers, step index a device tensor) is captured once per shape in a CUDA
  graph and replayed; prompt lengths are left-padded up to a multiple of
  `length_bucket` (default 32), and a cached runner up to 25% longer is
  reused, so a drifting prompt length rarely means a new capture (runners
  are keyed by B, S, max_new_tokens, padded length and sampling settings;
  the MAX_RUNNERS most recent are kept).
- "torch_compile": the step is compiled by torch.compile (inductor fuses the
  score/mask/softmax chain), then captured in a CUDA graph the same way. The
  first compilation takes tens of seconds; a second shape triggers one
  shape-generic recompilation. Falls back to "cuda_graphs" with a warning if
  compilation fails (`active_mode` says what runs).
In the graph modes a call's problems are also padded up to a bucket
(`batch_rows`: powers of two up to 32, then multiples of 32) with copies of
its first prompt, so a batch that shrinks as searches finish reuses its
captured graphs.

API:

    sampler = SharedPrefixSampler(model, device="cuda", dtype=torch.bfloat16, compile="cuda_graphs")
    children = sampler.sample(prompt_ids, n_samples=19, max_new_tokens=40, eos_id=tok.eos_token_id,
                              pad_id=tok.pad_token_id, seed=0)
    # children[b][s] = generated ids of sample s of problem b, up to and including <EOS>
    pending = sampler.launch(prompt_ids, n_samples=19, max_new_tokens=40, eos_id=..., seed=1)
    ...  # host work while the device samples
    tokens, lengths = pending.result()

`hf_generate_reference` runs HF `generate(num_return_sequences=...)` on the
same prompts and returns the same nested lists (benchmark baseline).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

COMPILE_MODES = ("eager", "cuda_graphs", "torch_compile")
DEFAULT_LENGTH_BUCKET = 32  # prompt lengths rounded up to this in graph modes
PREFILL_SCORE_BUDGET = 1 << 27  # rows * L * L of the prefill mask per chunk (bounds memory)
MAX_RUNNERS = 6  # cached static-shape runners (graphs) kept, least recently used dropped
REUSE_SLACK = 1.25  # a prompt runs in a cached runner up to 25% longer than it needs (graph modes)
ATTENTION_MODES = ("scores", "fused")
DEFAULT_ATTENTION = "scores"  # "fused" waits for its H100 measurement (docs/LOG.md)
HIDDEN_BIAS = -30000.0  # "fused": a hidden prompt key's score offset (exp underflows to 0; finite in bfloat16)
COMPACT_BELOW = 0.5  # eager early-stopping decode: gather the unfinished rows once they fit in this share
BATCH_BUCKET = 32  # graph modes: a call's problems padded to a power of two up to this, then to a multiple of it


# --------------------------------------------------------------------------
# Helpers


def _split_model(model):
    """(GPT-Neo causal LM, embedder or None) of a GPTNeoForCausalLM or a PrefixLM wrapper."""
    if hasattr(model, "decoder") and hasattr(model, "embedder"):
        return model.decoder, model.embedder
    if hasattr(model, "transformer") and hasattr(model, "lm_head"):
        return model, None
    raise TypeError(f"expected a GPTNeoForCausalLM or a PrefixLM (decoder + embedder), got {type(model).__name__}")


def _activation(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):  # all the tanh approximation of GELU
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def _normalize_mode(compile) -> str:
    if compile is None or compile is False or compile == "eager":
        return "eager"
    if compile is True:
        return "cuda_graphs"
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be False or one of {COMPILE_MODES}, got {compile!r}")
    return compile


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (lists of ids) left-padded into (B, L) ids and a bool mask (True = real token)."""
    if len(prompt_ids) == 0:
        raise ValueError("no prompts")
    lengths = [len(ids) for ids in prompt_ids]
    if min(lengths) == 0:
        raise ValueError("every prompt needs at least one token")
    width = max(lengths)
    ids = torch.full((len(prompt_ids), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.bool)
    for row, prompt in enumerate(prompt_ids):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = True
    return ids, mask


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """HF's sampling warpers in HF's order: temperature, top-k, top-p (removed tokens get -inf).

    Same conventions as transformers' TemperatureLogitsWarper, TopKLogitsWarper
    (ties with the k-th value are kept) and TopPLogitsWarper (the smallest set
    of most likely tokens whose probability reaches top_p, at least one).
    """
    if temperature not in (0, 1, 1.0):
        logits = logits / temperature
    vocab = logits.shape[-1]
    if top_k and top_k > 0 and top_k < vocab:
        threshold = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1.0 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_indices, remove_sorted)
        logits = logits.masked_fill(remove, -math.inf)
    return logits


def choose_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Tokens drawn from softmax(filtered logits) by inverse CDF at `uniforms` in [0, 1); argmax at temperature 0.

    `logits` (..., V) broadcast against `uniforms` (...): the first step's
    (B, 1, V) logits give S draws per problem from (B, S) uniforms.
    """
    if temperature == 0:
        return logits.argmax(dim=-1).expand(uniforms.shape)
    probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    # (1 - u) * total lies in (0, total]: token k is drawn iff cdf[k-1] < x <= cdf[k], so never a p=0 token.
    target = (1.0 - uniforms).unsqueeze(-1) * cdf[..., -1:]
    return (cdf < target).sum(dim=-1).clamp(max=logits.shape[-1] - 1)


def truncate_at_eos(rows: Sequence[Sequence[int]], eos_id: int | None) -> list[list[int]]:
    """Each row cut after its first `eos_id` (kept); rows without it unchanged."""
    out = []
    for row in rows:
        row = list(row)
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        out.append(row)
    return out


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T) v (no scaling, GPT-Neo) and the rows' log-sum-exp of q k^T, by a fused kernel.

    q (B, H, S, d), k and v (B, H, L, d). Flash attention for half precision
    on CUDA, memory-efficient attention for float32 on CUDA, the CPU's flash
    kernel on the CPU. Returns (out (B, H, S, d), lse (B, H, S') float32, S' >= S).
    """
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16):
            result = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=1.0)
        else:
            result = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                            scale=1.0)
        return result[0], result[1]
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=1.0)


# --------------------------------------------------------------------------
# Grammar-constrained decoding (infix expressions)

# Token kinds of the expression grammar; a Grammar gives each vocabulary id one.
OTHER, OPERAND, BINARY, UNARY, OPEN, CLOSE, END = range(7)
# What the next token must be after a token of each kind: 0 an operand (or "(" or a function),
# 1 an operator, ")" or the end, 2 "(" (after a function name).
_EXPECT_AFTER = (1, 1, 0, 2, 0, 1, 1)


@dataclass(frozen=True)
class Grammar:
    """Which tokens may follow which: infix expressions of operands, binary operators, functions and parentheses.

    `kinds[id]` is the kind of vocabulary id `id` (OTHER tokens are never
    sampled). Sampling under a grammar masks, at every step, the tokens that
    would make the text ill-formed: an operator where an operand is due, a
    `)` without its `(`, the end before the parentheses are closed. It also
    keeps every sequence able to finish: once the remaining tokens only just
    suffice to close the open parentheses, nothing opens or extends. So every
    sample ends with the end token within max_new_tokens (>= 2) and parses.
    The per-row `allowed` mask of a call narrows the operands and operators
    further (e.g. to a search's variables and constants), and the per-row
    `max_nodes` bounds the expression's size (operands and operators; a
    search's max_size): no operator is taken that would leave no room for
    the operand it needs.
    """

    kinds: tuple

    @property
    def vocab_size(self) -> int:
        return len(self.kinds)


def grammar_mask(kinds: torch.Tensor, allowed: torch.Tensor, expect: torch.Tensor, depth: torch.Tensor,
                 budget, nodes: torch.Tensor, max_nodes: torch.Tensor) -> torch.Tensor:
    """(B, S, V) bool: the tokens each sequence may take next.

    kinds (V,) long; allowed (B, V) bool; expect, depth, nodes (B, S) long
    (the grammar state); budget: tokens left including this one (int or
    tensor); max_nodes (B, 1) long.
    """
    zeros = torch.zeros_like(depth, dtype=torch.bool)
    operand_due, operator_due = expect == 0, expect == 1
    room = nodes + 2 <= max_nodes  # an operator and the operand it needs still fit
    ok = torch.stack([
        zeros,                                      # OTHER
        operand_due & (budget >= depth + 2),        # OPERAND, then the closes and the end
        operator_due & (budget >= depth + 3) & room,  # BINARY, an operand, the closes, the end
        operand_due & (budget >= depth + 5) & room,   # UNARY, "(", an operand, depth + 1 closes, the end
        ~operator_due & (budget >= depth + 4),      # OPEN (also after a function), an operand, depth + 1 closes, the end
        operator_due & (depth > 0),                 # CLOSE
        operator_due & (depth == 0),                # END
    ], dim=-1)
    return ok[..., kinds] & allowed[:, None, :]


def grammar_advance(kinds: torch.Tensor, expect_after: torch.Tensor, chosen: torch.Tensor, expect: torch.Tensor,
                    depth: torch.Tensor, nodes: torch.Tensor) -> None:
    """Update the grammar state (in place) with the chosen tokens (B, S)."""
    kind = kinds[chosen]
    depth.add_((kind == OPEN).long() - (kind == CLOSE).long())
    nodes.add_(((kind == OPERAND) | (kind == BINARY) | (kind == UNARY)).long())
    expect.copy_(expect_after[kind])


# --------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_id: int | None = None
    pad_id: int = 0
    grammar: tuple | None = None  # Grammar.kinds when decoding is constrained


@dataclass
class PrefillResult:
    """Per-layer prompt keys (float32) and values (model dtype), (B, heads, L, head_dim), and what decoding needs."""

    keys: list
    values: list
    key_valid: torch.Tensor  # (B, L) bool: real (non-pad, unmasked prefix) positions
    last_position: torch.Tensor  # (B,) long: position id of each row's last token
    logits: torch.Tensor  # (B, V) float32 at the last position, or (B, L_tokens, V) with all_logits


@dataclass
class DecodeState:
    """Static buffers of one decode run (all on the device); the CUDA graph reads and writes these."""

    keys: list  # per layer (B, H, L, hd) float32: prompt keys, shared by the S samples
    values: list  # per layer (B, H, L, hd) dtype
    gen_keys: list  # per layer (B, H, S, T, hd) float32: the samples' own tokens
    gen_values: list  # per layer (B, H, S, T, hd) dtype
    key_valid: torch.Tensor  # (B, L) bool
    last_position: torch.Tensor  # (B,) long
    tokens: torch.Tensor  # (B, S) long: the token fed at the current step
    finished: torch.Tensor  # (B, S) bool
    out: torch.Tensor  # (B, S, T) long: generated tokens
    uniforms: torch.Tensor  # (T, B, S) float32: one draw per step and sample
    step: torch.Tensor  # (1,) long: index of the token being fed (0 = first generated token)
    gen_index: torch.Tensor  # (T,) long: arange(T)
    seq_index: torch.Tensor  # (L + T,) long: sequence index of every key (prompt, then generated)
    # Grammar-constrained decoding only (None otherwise):
    kinds: torch.Tensor | None = None  # (V,) long: token kinds
    expect_after: torch.Tensor | None = None  # (7,) long
    allowed: torch.Tensor | None = None  # (B, V) bool: the rows' permitted tokens
    expect: torch.Tensor | None = None  # (B, S) long: what the next token must be
    depth: torch.Tensor | None = None  # (B, S) long: open parentheses
    nodes: torch.Tensor | None = None  # (B, S) long: operands and operators so far
    max_nodes: torch.Tensor | None = None  # (B, 1) long: the rows' size limits


def _gathered(st: DecodeState, kept: torch.Tensor, index: tuple) -> DecodeState:
    """A smaller DecodeState: problems `kept` (B',), and row (b', s') = old row index[0][b', s'], index[1][b', s']."""
    def rows(tensor):  # (B, S, ...) -> (B', S', ...)
        return None if tensor is None else tensor[index]

    def problems(tensor):  # (B, ...) -> (B', ...)
        return None if tensor is None else tensor.index_select(0, kept)

    return DecodeState(
        keys=[problems(k) for k in st.keys], values=[problems(v) for v in st.values],
        # (B, H, S, T, hd)[b, :, s] -> (B', S', H, T, hd) -> (B', H, S', T, hd)
        gen_keys=[g[index[0], :, index[1]].transpose(1, 2).contiguous() for g in st.gen_keys],
        gen_values=[g[index[0], :, index[1]].transpose(1, 2).contiguous() for g in st.gen_values],
        key_valid=problems(st.key_valid), last_position=problems(st.last_position), tokens=rows(st.tokens),
        finished=rows(st.finished), out=rows(st.out), uniforms=st.uniforms[:, index[0], index[1]],
        step=st.step.clone(), gen_index=st.gen_index, seq_index=st.seq_index, kinds=st.kinds,
        expect_after=st.expect_after, allowed=problems(st.allowed), expect=rows(st.expect), depth=rows(st.depth),
        nodes=rows(st.nodes), max_nodes=problems(st.max_nodes),
    )


class _Runner:
    """Static-shape decode buffers for (B, S, T, L, sampling config), with a captured CUDA graph in graph modes."""

    def __init__(self, sampler: "SharedPrefixSampler", B: int, S: int, T: int, L: int, config: SamplingConfig,
                 capture: bool = True):
        s = sampler
        device, H, hd = s.device, s.n_heads, s.head_dim
        f32 = torch.float32
        self.config = config
        self.state = DecodeState(
            keys=[torch.zeros(B, H, L, s.key_dim, device=device, dtype=s.key_dtype) for _ in s.layers],
            values=[torch.zeros(B, H, L, s.key_dim, device=device, dtype=s.dtype) for _ in s.layers],
            gen_keys=[torch.zeros(B, H, S, T, hd, device=device, dtype=f32) for _ in s.layers],
            gen_values=[torch.zeros(B, H, S, T, hd, device=device, dtype=s.dtype) for _ in s.layers],
            key_valid=torch.zeros(B, L, device=device, dtype=torch.bool),
            last_position=torch.zeros(B, device=device, dtype=torch.long),
            tokens=torch.zeros(B, S, device=device, dtype=torch.long),
            finished=torch.zeros(B, S, device=device, dtype=torch.bool),
            out=torch.zeros(B, S, T, device=device, dtype=torch.long),
            uniforms=torch.zeros(T, B, S, device=device, dtype=f32),
            step=torch.zeros(1, device=device, dtype=torch.long),
            gen_index=torch.arange(T, device=device),
            seq_index=torch.arange(L + T, device=device),
        )
        if config.grammar is not None:
            st = self.state
            st.kinds = torch.tensor(config.grammar, device=device, dtype=torch.long)
            st.expect_after = torch.tensor(_EXPECT_AFTER, device=device, dtype=torch.long)
            st.allowed = torch.ones(B, len(config.grammar), device=device, dtype=torch.bool)
            st.expect = torch.zeros(B, S, device=device, dtype=torch.long)
            st.depth = torch.zeros(B, S, device=device, dtype=torch.long)
            st.nodes = torch.zeros(B, S, device=device, dtype=torch.long)
            st.max_nodes = torch.zeros(B, 1, device=device, dtype=torch.long)
        self.graph = None
        if s.use_graphs and capture and T >= 2:  # T == 1: no decode step at all
            self._capture(s)

    def _capture(self, s: "SharedPrefixSampler") -> None:
        state, config = self.state, self.config
        stream = torch.cuda.Stream(device=s.device)
        stream.wait_stream(torch.cuda.current_stream(s.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up (and torch.compile's compilation) outside the capture
                state.step.zero_()  # every step index stays in range whatever T
                s._step_fn(state, config)
            state.step.zero_()
        torch.cuda.current_stream(s.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=s._graph_pool):
            s._step_fn(state, config)
        torch.cuda.synchronize(s.device)
        self.graph = graph

    def step(self, sampler: "SharedPrefixSampler") -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            sampler._step_fn(self.state, self.config)


class PendingSample:
    """A sampler call in flight (SharedPrefixSampler.launch): `result()` gives its tokens and lengths on the CPU."""

    def __init__(self, tokens: torch.Tensor, eos_id: int | None, event=None):
        self._tokens = tokens  # (B, S, T') on the host; on CUDA filled once `event` has fired
        self._eos_id = eos_id
        self._event = event

    def ready(self) -> bool:
        """True when `result()` will not wait."""
        return self._event is None or self._event.query()

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, S, T') and lengths (B, S): tokens[b, s, :lengths[b, s]] are sample s of problem b."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        tokens = self._tokens
        B, S, done = tokens.shape
        if self._eos_id is None:
            return tokens, torch.full((B, S), done, dtype=torch.long)
        is_eos = tokens == self._eos_id
        return tokens, torch.where(is_eos.any(dim=-1), is_eos.long().argmax(dim=-1) + 1, done)


# --------------------------------------------------------------------------
# The sampler


class SharedPrefixSampler:
    """GPT-Neo sampler sharing each prompt's KV cache across its samples; see the module docstring."""

    def __init__(self, model, device=None, dtype=None, compile=False, length_bucket: int | None = None,
                 check_every: int = 4, pad_batches: bool | None = None, attention: str = DEFAULT_ATTENTION,
                 compact: bool = True):
        decoder, embedder = _split_model(model)
        config = decoder.config
        if getattr(config, "model_type", "gpt_neo") != "gpt_neo":
            raise TypeError(f"SharedPrefixSampler implements GPT-Neo, got model_type {config.model_type!r}")
        first = next(decoder.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype if dtype is not None else first.dtype
        self.config = config
        self.embedder = embedder
        self.hidden = config.hidden_size
        self.n_heads = config.num_heads
        self.head_dim = self.hidden // self.n_heads
        self.window = int(config.window_size)
        self.eps = float(config.layer_norm_epsilon)
        self.max_positions = int(config.max_position_embeddings)
        self.act = _activation(config.activation_function)
        self.vocab_size = decoder.lm_head.weight.shape[0]
        self.check_every = max(1, int(check_every))
        self.compact = bool(compact)  # eager early-stopping decode drops finished rows (_decode)
        self.compactions = 0  # times it did
        self.prefill_calls = 0  # prefills run (one per sample() call: the prompt is never re-encoded per sample)

        def take(tensor):
            return tensor.detach().to(self.device, self.dtype)

        body = decoder.transformer
        self.wte = take(body.wte.weight)
        self.wpe = take(body.wpe.weight)
        self.lm_head = take(decoder.lm_head.weight)
        self.ln_f = (take(body.ln_f.weight), take(body.ln_f.bias))
        self.layers = []
        for index, block in enumerate(body.h):
            attn = block.attn.attention
            self.layers.append(dict(
                local=config.attention_layers[index] == "local",
                ln1=(take(block.ln_1.weight), take(block.ln_1.bias)),
                qkv=torch.cat([take(attn.q_proj.weight), take(attn.k_proj.weight),
                               take(attn.v_proj.weight)], dim=0),
                out=(take(attn.out_proj.weight), take(attn.out_proj.bias)),
                ln2=(take(block.ln_2.weight), take(block.ln_2.bias)),
                fc=(take(block.mlp.c_fc.weight), take(block.mlp.c_fc.bias)),
                proj=(take(block.mlp.c_proj.weight), take(block.mlp.c_proj.bias)),
            ))
        for name in ("q_proj", "k_proj", "v_proj"):
            if getattr(body.h[0].attn.attention, name).bias is not None:
                raise ValueError(f"GPT-Neo's {name} has no bias; this checkpoint has one")
        self.any_local = any(layer["local"] for layer in self.layers)
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        self.attention = attention
        self.fused = attention == "fused"
        # Prompt keys: float32 (HF's upcast of q and k) for "scores"; for "fused", in the model dtype with one
        # bias slot appended and zero padding to a multiple of 8 (what the fused kernels want).
        self.key_dim = -(-(self.head_dim + 1) // 8) * 8 if self.fused else self.head_dim
        self.key_dtype = self.dtype if self.fused else torch.float32

        self.requested_mode = _normalize_mode(compile)
        self.use_graphs = self.requested_mode != "eager" and self.device.type == "cuda"
        self.active_mode = self.requested_mode if self.use_graphs else "eager"
        self.length_bucket = int(length_bucket) if length_bucket else (DEFAULT_LENGTH_BUCKET if self.use_graphs else 1)
        self.pad_batches = self.use_graphs if pad_batches is None else bool(pad_batches)  # see batch_rows
        self._graph_pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._runners: OrderedDict = OrderedDict()
        self._step_fn = self._advance
        self._scores_in_place = self.active_mode != "torch_compile"
        if self.active_mode == "torch_compile":
            # dynamic=None: after a second prompt length dynamo compiles length-generic kernels, not one per length
            self._step_fn = torch.compile(self._advance, fullgraph=False)

    # ------------------------------------------------------------------
    # Model pieces

    def _layer_norm(self, x, weights):
        return F.layer_norm(x, (self.hidden,), weights[0], weights[1], self.eps)

    def _mlp(self, layer, x):
        h = self._layer_norm(x, layer["ln2"])
        return F.linear(self.act(F.linear(h, *layer["fc"])), *layer["proj"])

    def _logits(self, x):
        return F.linear(self._layer_norm(x, self.ln_f), self.lm_head).float()

    # ------------------------------------------------------------------
    # Prefill

    def _padded_length(self, length: int) -> int:
        return -(-length // self.length_bucket) * self.length_bucket

    def _prefill_inputs(self, input_ids, attention_mask, prefix_embeds=None, prefix_mask=None, length=None):
        """(embeds, valid, positions) of [prefix][left-padded tokens], left-padded to `length` (default: bucketed)."""
        input_ids = self._host_to_device(input_ids)
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else self._host_to_device(attention_mask).bool())
        batch = input_ids.shape[0]
        embeds = F.embedding(input_ids, self.wte)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        valid = mask
        if prefix_embeds is not None:
            prefix = prefix_embeds.to(self.device, self.dtype)
            n_prefix = prefix.shape[1]
            prefix_valid = (torch.ones(prefix.shape[:2], dtype=torch.bool, device=self.device) if prefix_mask is None
                            else prefix_mask.to(self.device).bool())
            embeds = torch.cat([prefix, embeds], dim=1)
            valid = torch.cat([prefix_valid, mask], dim=1)
            positions = torch.cat([torch.arange(n_prefix, device=self.device).expand(batch, -1),
                                   n_prefix + positions], dim=1)
        padded = self._padded_length(embeds.shape[1]) if length is None else int(length)
        length = embeds.shape[1]
        if padded < length:
            raise ValueError(f"cannot pad {length} positions to {padded}")
        if padded > length:  # extra pads go first of all, so no distance between real positions changes
            extra = padded - length
            embeds = torch.cat([embeds.new_zeros(batch, extra, self.hidden), embeds], dim=1)
            valid = torch.cat([valid.new_zeros(batch, extra), valid], dim=1)
            positions = torch.cat([positions.new_zeros(batch, extra), positions], dim=1)
        return embeds, valid, positions

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, prefix_embeds=None,
                prefix_mask=None, all_logits: bool = False, out: DecodeState | None = None) -> PrefillResult:
        """Encode the left-padded prompts once: per-layer K/V and the logits of the last position.

        `all_logits` returns (B, L_tokens, V) logits at every token position
        (tests). `out` writes the K/V into a runner's static buffers (and pads
        the prompts on the left to the runner's length).
        """
        self.prefill_calls += 1
        length = None if out is None else out.key_valid.shape[1]
        embeds, valid, positions = self._prefill_inputs(input_ids, attention_mask, prefix_embeds, prefix_mask, length)
        batch, length = valid.shape
        H, hd = self.n_heads, self.head_dim
        if out is not None:
            keys, values = out.keys, out.values
        else:
            keys = [torch.zeros(batch, H, length, self.key_dim, device=self.device, dtype=self.key_dtype)
                    for _ in self.layers]
            values = [torch.zeros(batch, H, length, self.key_dim, device=self.device, dtype=self.dtype)
                      for _ in self.layers]
        index = torch.arange(length, device=self.device)
        causal = index[None, :] <= index[:, None]  # [query, key]
        local = causal & (index[None, :] > index[:, None] - self.window)
        diagonal = torch.eye(length, dtype=torch.bool, device=self.device)
        x_all = embeds + F.embedding(positions, self.wpe)
        key_bias = self._key_bias(valid) if self.fused else None
        token_count = input_ids.shape[1]
        if self.device.type == "cpu" and prefix_embeds is None and not all_logits:
            # On the CPU, compute is the cost: each prompt runs alone from its first real token (left padding
            # keeps tokens contiguous), instead of every prompt padded to the longest. Pads' keys are hidden.
            starts = (length - valid.sum(dim=1)).tolist()
            pieces = [(slice(row, row + 1), begin) for row, begin in enumerate(starts)]
        else:
            chunk = max(1, PREFILL_SCORE_BUDGET // (length * length))
            pieces = [(slice(start, min(batch, start + chunk)), 0) for start in range(0, batch, chunk)]
        logits = []
        for rows, begin in pieces:
            x = x_all[rows, begin:]
            width = length - begin
            key_ok = valid[rows][:, None, begin:]
            # A pad query attends to itself only, so no row is fully masked (no NaN anywhere).
            window = slice(begin, length)
            masks = {False: ((causal[window, window] & key_ok) | diagonal[window, window])[:, None],
                     True: ((local[window, window] & key_ok) | diagonal[window, window])[:, None]}
            n = x.shape[0]
            for layer, k_out, v_out in zip(self.layers, keys, values):
                h = self._layer_norm(x, layer["ln1"])
                q, k, v = F.linear(h, layer["qkv"]).view(n, width, 3, H, hd).permute(2, 0, 3, 1, 4)
                mask = masks[layer["local"]]
                if layer is self.layers[-1] and not all_logits:
                    # Only the last position's output is used from here on (its logits): the last layer's
                    # attention and MLP run for that one query, not for every position.
                    q, mask, x = q[:, :, -1:], mask[:, :, -1:], x[:, -1:]
                # No 1/sqrt(hd) scaling (GPT-Neo). Half-precision q/k/v go to SDPA as they are: its kernels
                # take q.k in float32 accumulators and softmax in float32, as HF's float32 upcast does.
                attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
                if self.fused:  # [k, bias, 0..]: the bias slot hides pads from the fused kernel (see _fused_attention)
                    k_out[rows, :, begin:, :hd] = k
                    k_out[rows, :, :, hd] = key_bias[rows][:, None, :]
                    v_out[rows, :, begin:, :hd] = v
                else:  # pads before `begin` keep stale (finite) values: the decode hides them by key_valid
                    k_out[rows, :, begin:] = k
                    v_out[rows, :, begin:] = v
                attended = attended.to(self.dtype).transpose(1, 2).reshape(n, q.shape[2], self.hidden)
                x = x + F.linear(attended, *layer["out"])
                x = x + self._mlp(layer, x)
            logits.append(self._logits(x[:, -token_count:] if all_logits else x[:, -1]))
        if out is not None:
            out.key_valid.copy_(valid)
            out.last_position.copy_(positions[:, -1])
        return PrefillResult(keys, values, valid, positions[:, -1], torch.cat(logits, dim=0))

    # ------------------------------------------------------------------
    # Decode

    def _forward_step(self, st: DecodeState) -> torch.Tensor:
        """Feed st.tokens (B, S) at step st.step: writes the samples' caches, returns logits (B, S, V) float32."""
        t = st.step
        B, S = st.tokens.shape
        L = st.key_valid.shape[1]
        T = st.gen_index.shape[0]
        H, hd, D = self.n_heads, self.head_dim, self.hidden
        positions = (st.last_position + 1 + t)[:, None]  # (B, 1): the same for the S samples
        x = F.embedding(st.tokens, self.wte) + F.embedding(positions, self.wpe)  # (B, S, D)
        # Hidden keys of [prompt (L) | generated (T)], per layer type; (B, 1, 1, L + T).
        visible = torch.cat([st.key_valid, (st.gen_index <= t).expand(B, T)], dim=1)
        hidden = {False: ~visible[:, None, None, :]}
        if self.any_local:
            in_window = st.seq_index > (L + t) - self.window  # the query's sequence index is L + t
            hidden[True] = ~(visible & in_window)[:, None, None, :]
        if self.fused:
            return self._forward_step_fused(st, x)
        lowest = torch.finfo(torch.float32).min
        for layer, k_p, v_p, k_g, v_g in zip(self.layers, st.keys, st.values, st.gen_keys, st.gen_values):
            h = self._layer_norm(x, layer["ln1"])
            q, k, v = F.linear(h, layer["qkv"]).view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)  # each (B, H, S, hd)
            k_g.index_copy_(3, t, k.float().unsqueeze(3))
            v_g.index_copy_(3, t, v.unsqueeze(3))
            q = q.float()
            # The S queries of a problem are the rows of one product with that problem's prompt keys
            # (no copy of the prompt cache); each sample's query also meets its own T cached keys.
            if self._scores_in_place:
                # Both products written straight into one (B, H, S, L + T) buffer: no concatenation pass.
                scores = torch.empty(B, H, S, L + T, device=x.device, dtype=torch.float32)
                torch.bmm(q.reshape(B * H, S, hd), k_p.view(B * H, L, hd).transpose(1, 2),
                          out=scores.view(B * H, S, L + T)[:, :, :L])
                torch.bmm(q.reshape(B * H * S, 1, hd), k_g.view(B * H * S, T, hd).transpose(1, 2),
                          out=scores.view(B * H * S, 1, L + T)[:, :, L:])
            else:  # torch.compile fuses the concatenation with the mask and the softmax
                scores = torch.cat([torch.matmul(q, k_p.transpose(-1, -2)),
                                    torch.matmul(q.unsqueeze(3), k_g.transpose(-1, -2)).squeeze(3)], dim=-1)
            scores = scores.masked_fill_(hidden[layer["local"]], lowest)
            probs = scores.softmax(dim=-1).to(self.dtype)  # ONE softmax over prompt and own tokens
            attended = torch.matmul(probs[..., :L], v_p) + torch.matmul(probs[..., L:].unsqueeze(3), v_g).squeeze(3)
            attended = attended.transpose(1, 2).reshape(B, S, D)
            x = x + F.linear(attended, *layer["out"])
            x = x + self._mlp(layer, x)
        return self._logits(x)

    def _key_bias(self, visible: torch.Tensor) -> torch.Tensor:
        """(B, L) bias-slot values in the key dtype: 0 where a prompt key is visible, HIDDEN_BIAS where not."""
        return torch.where(visible, 0.0, HIDDEN_BIAS).to(self.key_dtype)

    def _forward_step_fused(self, st: DecodeState, x: torch.Tensor) -> torch.Tensor:
        """`_forward_step` with attention "fused": the prompt part in one fused kernel, merged by log-sum-exp.

        The S queries of a problem attend to its prompt keys in a fused
        attention kernel (flash attention on CUDA in half precision): the
        (B, H, S, L) scores never reach memory. Pads and keys outside a local
        layer's window are hidden by the keys' bias slot (a query's slot
        holds 1, so q.k gains the key's bias: 0 or HIDDEN_BIAS), since the
        flash kernel takes no mask. The samples' own T keys are a small
        separate softmax; the two parts are merged exactly by their
        log-sum-exps, as one softmax over [prompt, generated] would weigh them.
        """
        t = st.step
        B, S = st.tokens.shape
        L = st.key_valid.shape[1]
        H, hd, D = self.n_heads, self.head_dim, self.hidden
        own = st.gen_index <= t  # (T,) own tokens fed so far, this one included
        own_hidden = {False: ~own}
        if self.any_local:
            window_start = (L + t) - self.window  # the query's sequence index is L + t
            local_bias = self._key_bias(st.key_valid & (st.seq_index[:L] > window_start))[:, None, :]  # (B, 1, L)
            own_hidden[True] = ~(own & (st.seq_index[L:] > window_start))
        slot = torch.zeros(B, H, S, self.key_dim - hd, device=x.device, dtype=self.dtype)
        slot[..., 0] = 1.0
        for layer, k_p, v_p, k_g, v_g in zip(self.layers, st.keys, st.values, st.gen_keys, st.gen_values):
            h = self._layer_norm(x, layer["ln1"])
            q, k, v = F.linear(h, layer["qkv"]).view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)  # each (B, H, S, hd)
            k_g.index_copy_(3, t, k.float().unsqueeze(3))
            v_g.index_copy_(3, t, v.unsqueeze(3))
            if layer["local"]:
                k_p[:, :, :, hd].copy_(local_bias.expand(B, H, L))
            prompt_out, prompt_lse = _fused_attention(torch.cat([q, slot], dim=-1), k_p, v_p)
            own_scores = torch.matmul(q.float().unsqueeze(3), k_g.transpose(-1, -2)).squeeze(3)  # (B, H, S, T)
            own_scores = own_scores.masked_fill(own_hidden[layer["local"]], -math.inf)
            own_lse = torch.logsumexp(own_scores, dim=-1)  # finite: a query always sees its own token
            own_probs = torch.exp(own_scores - own_lse.unsqueeze(-1)).to(self.dtype)
            own_out = torch.matmul(own_probs.unsqueeze(3), v_g).squeeze(3)  # (B, H, S, hd)
            prompt_share = torch.sigmoid(prompt_lse[..., :S] - own_lse).unsqueeze(-1)  # the prompt's softmax mass
            attended = prompt_out[..., :hd].float() * prompt_share + own_out.float() * (1.0 - prompt_share)
            attended = attended.to(self.dtype).transpose(1, 2).reshape(B, S, D)
            x = x + F.linear(attended, *layer["out"])
            x = x + self._mlp(layer, x)
        return self._logits(x)

    def _advance(self, st: DecodeState, config: SamplingConfig) -> None:
        """One decode step: logits of the fed tokens, draw the next ones, record them, step += 1."""
        logits = self._forward_step(st)
        following = st.step + 1
        uniforms = st.uniforms.index_select(0, following).squeeze(0)
        if config.grammar is not None:
            budget = st.out.shape[2] - following  # tokens left, this one included
            allowed = grammar_mask(st.kinds, st.allowed, st.expect, st.depth, budget, st.nodes, st.max_nodes)
            logits = logits.masked_fill(~allowed, -math.inf)
        chosen = choose_tokens(logits, uniforms, config.temperature, config.top_k, config.top_p)
        chosen = torch.where(st.finished, torch.full_like(chosen, config.pad_id), chosen)
        if config.grammar is not None:
            grammar_advance(st.kinds, st.expect_after, chosen, st.expect, st.depth, st.nodes)
        if config.eos_id is not None:
            st.finished |= chosen == config.eos_id
        st.out.index_copy_(2, following, chosen.unsqueeze(2))
        st.tokens.copy_(chosen)
        st.step.copy_(following)

    def _runner_length(self, B, S, T, config, length: int) -> int:
        """The padded prompt length to run at: a cached runner's if one is at most REUSE_SLACK longer, else bucketed.

        Padding more on the left changes no result (tested), and reusing a
        runner saves a graph capture (or a compilation) when the longest
        prompt of a batch drifts from one generation to the next.
        """
        padded = self._padded_length(length)
        if self.length_bucket > 1:
            fits = [key[3] for key in self._runners
                    if key[:3] == (B, S, T) and key[4] == config and padded <= key[3] <= padded * REUSE_SLACK]
            if fits:
                return min(fits)
        return padded

    def _runner(self, B, S, T, L, config) -> _Runner:
        key = (B, S, T, L, config)
        runner = self._runners.get(key)
        if runner is None:
            while len(self._runners) >= MAX_RUNNERS:
                self._runners.popitem(last=False)
            try:
                runner = _Runner(self, B, S, T, L, config)
            except Exception as error:  # noqa: BLE001 - torch.compile failures vary
                if self.active_mode != "torch_compile":
                    raise
                warnings.warn(f"torch_compile mode failed ({type(error).__name__}: {error}); using cuda_graphs")
                self.active_mode, self._step_fn, self._scores_in_place = "cuda_graphs", self._advance, True
                runner = _Runner(self, B, S, T, L, config)
            self._runners[key] = runner
        else:
            self._runners.move_to_end(key)
        return runner

    # ------------------------------------------------------------------
    # Public API

    def _prefix(self, prefix_embeds, prefix_mask, points, point_mask):
        if points is None:
            return prefix_embeds, prefix_mask
        if prefix_embeds is not None:
            raise ValueError("give prefix_embeds or points, not both")
        if self.embedder is None:
            raise ValueError("points need a PrefixLM (this sampler was built from a plain decoder)")
        where = next(self.embedder.parameters()).device
        with torch.no_grad():
            return self.embedder(points.to(where), None if point_mask is None else point_mask.to(where))

    def _uniforms(self, shape, seed, generator) -> torch.Tensor:
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        return torch.rand(shape, generator=generator, device=generator.device)

    def _host_to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU tensor on the sampler's device; to CUDA through pinned memory, so the copy does not block the host."""
        if tensor.device == self.device:
            return tensor
        if self.device.type == "cuda" and tensor.device.type == "cpu":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def batch_rows(self, B: int) -> int:
        """Rows a call of B problems runs with: B, or in graph modes the next bucket (1, 2, 4, .., 32, 64, 96, ..).

        A captured graph has a fixed batch; as searches finish, B shrinks
        nearly every generation, so unbucketed it would mean a capture per
        generation. The padding rows repeat the first problem; their outputs
        are dropped.
        """
        if not self.pad_batches or B <= 1:
            return B
        if B <= BATCH_BUCKET:
            return 1 << (B - 1).bit_length()
        return -(-B // BATCH_BUCKET) * BATCH_BUCKET

    @torch.no_grad()
    def launch(self, prompt_ids: Sequence[Sequence[int]], n_samples: int = 19, max_new_tokens: int = 32,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
               pad_id: int | None = None, seed: int | None = None, generator: torch.Generator | None = None,
               prefix_embeds=None, prefix_mask=None, points=None, point_mask=None, uniforms=None,
               grammar: Grammar | None = None, allowed=None, max_nodes=None,
               early_stop: bool | None = None) -> "PendingSample":
        """Start a `sample_tensor` call and return at once: its PendingSample's `result()` waits for the tokens.

        On CUDA the prefill, every decode step and the copy of the tokens to
        pinned host memory are queued on the device without a synchronisation,
        so the host can work meanwhile, e.g. on the previous call's outputs;
        calls are queued in order on one stream, so several may be in flight.
        That means no early stop (`early_stop` None or False): all
        max_new_tokens steps run, as they do anyway when one of many sequences
        runs long. `early_stop=True` (what `sample_tensor` does) checks every
        `check_every` steps whether every sequence is done, which waits for
        the device. On the CPU the call runs here, stopping early unless
        `early_stop=False`. Results do not depend on it.
        """
        if n_samples < 1 or max_new_tokens < 1:
            raise ValueError("n_samples and max_new_tokens must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        if grammar is not None:
            if eos_id is None or max_new_tokens < 2 or grammar.vocab_size != self.vocab_size:
                raise ValueError(f"a grammar needs eos_id, max_new_tokens >= 2 and one kind per vocabulary id "
                                 f"({self.vocab_size}), got {grammar.vocab_size}")
            if grammar.kinds[int(eos_id)] != END:
                raise ValueError("the grammar's END token must be eos_id")
        pad = int(pad_id if pad_id is not None else (eos_id if eos_id is not None else 0))
        config = SamplingConfig(float(temperature), int(top_k), float(top_p),
                                None if eos_id is None else int(eos_id), pad,
                                None if grammar is None else tuple(grammar.kinds))
        prefix_embeds, prefix_mask = self._prefix(prefix_embeds, prefix_mask, points, point_mask)
        n_prefix = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        longest = n_prefix + max(len(p) for p in prompt_ids)
        if longest + max_new_tokens - 1 > self.max_positions:
            raise ValueError(f"prompt of {longest} positions + {max_new_tokens} new tokens exceeds "
                             f"max_position_embeddings={self.max_positions}")
        B, S, T = len(prompt_ids), int(n_samples), int(max_new_tokens)
        if uniforms is None:
            uniforms = self._uniforms((T, B, S), seed, generator)
        elif tuple(uniforms.shape) != (T, B, S):
            raise ValueError(f"uniforms must have shape (max_new_tokens, B, n_samples) = {(T, B, S)}, "
                             f"got {tuple(uniforms.shape)}")
        if grammar is not None and allowed is not None and tuple(allowed.shape) != (B, self.vocab_size):
            raise ValueError(f"allowed must have shape (B, vocab) = {(B, self.vocab_size)}, got {tuple(allowed.shape)}")
        rows = self.batch_rows(B)
        if rows > B:  # padding rows: copies of the first problem, dropped from the result
            extra = rows - B
            prompt_ids = list(prompt_ids) + [prompt_ids[0]] * extra
            uniforms = torch.cat([uniforms, uniforms[:, :1].expand(T, extra, S)], dim=1)
            if prefix_embeds is not None:
                prefix_embeds = torch.cat([prefix_embeds, prefix_embeds[:1].expand(extra, *prefix_embeds.shape[1:])])
                if prefix_mask is not None:
                    prefix_mask = torch.cat([prefix_mask, prefix_mask[:1].expand(extra, -1)])
            if allowed is not None:
                allowed = torch.cat([allowed, allowed[:1].expand(extra, -1)])
            if max_nodes is not None:
                max_nodes = torch.as_tensor(max_nodes, dtype=torch.long).reshape(B)
                max_nodes = torch.cat([max_nodes, max_nodes[:1].expand(extra)])
        ids, mask = left_pad(prompt_ids, pad)
        L = self._runner_length(rows, S, T, config, ids.shape[1] + n_prefix)
        runner = self._runner(rows, S, T, L, config)
        st = runner.state
        first = self.prefill(ids, mask, prefix_embeds, prefix_mask, out=st)
        st.uniforms.copy_(self._host_to_device(uniforms))
        logits = first.logits[:, None, :]
        if grammar is not None:
            if allowed is None:
                st.allowed.fill_(True)
            else:
                st.allowed.copy_(self._host_to_device(allowed))
            if max_nodes is None:
                st.max_nodes.fill_(T)  # no size limit beyond the token budget
            else:
                nodes = torch.as_tensor(max_nodes, dtype=torch.long).reshape(rows, 1)
                st.max_nodes.copy_(self._host_to_device(nodes))
            st.expect.zero_()
            st.depth.zero_()
            st.nodes.zero_()
            start = grammar_mask(st.kinds, st.allowed, st.expect[:, :1], st.depth[:, :1], T, st.nodes[:, :1],
                                 st.max_nodes)
            logits = logits.masked_fill(~start, -math.inf)
        tokens = choose_tokens(logits, st.uniforms[0], temperature, top_k, top_p)
        if grammar is not None:
            grammar_advance(st.kinds, st.expect_after, tokens, st.expect, st.depth, st.nodes)
        st.tokens.copy_(tokens)
        st.out[:, :, 0] = tokens
        if config.eos_id is None:
            st.finished.zero_()
        else:
            torch.eq(tokens, config.eos_id, out=st.finished)
        st.step.zero_()
        cuda = self.device.type == "cuda"
        stop = config.eos_id is not None and (early_stop if early_stop is not None else not cuda)
        tokens = self._decode(runner, config, T, stop)[:B]
        if not cuda:  # a copy: the runner's buffers are the next call's
            return PendingSample(tokens.clone(), config.eos_id)
        # The runner's buffers are reused by the next call of its shape, queued after this copy on the stream.
        host = torch.empty(tokens.shape, dtype=torch.long, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return PendingSample(host, config.eos_id, event)

    def _decode(self, runner: _Runner, config: SamplingConfig, T: int, stop: bool) -> torch.Tensor:
        """The decode steps after the first token: tokens (rows, S, T'), a view of the runner's buffer or a copy.

        With `stop`, every `check_every` steps: the loop ends once every
        sequence is done (a look at the device's state, so it waits for it).
        When the steps run eagerly (no graph: their shape may change), it also
        drops finished sequences as they accumulate: once the unfinished ones
        would fit in at most COMPACT_BELOW of the rows, the state is gathered
        down to the problems that still have one, each keeping its unfinished
        samples (padded with finished ones to the largest count), and decoding
        goes on with that smaller batch, so a call whose longest sample runs to
        the token budget no longer computes every finished row until then.
        Each sequence's computation is its own, so the tokens are the same.
        """
        compact = stop and self.compact and runner.graph is None
        st = runner.state
        out, rows = st.out, None  # rows: the (problem, sample) each row of `state` stands for; None = itself
        state, done = st, 1
        while done < T:
            if stop and (done - 1) % self.check_every == 0:
                active = ~state.finished
                counts = active.sum(dim=1)
                widest = int(counts.max())
                if widest == 0:
                    break
                kept = counts.nonzero().squeeze(1) if compact else None
                if compact and kept.numel() * widest <= COMPACT_BELOW * active.numel():
                    if rows is None:
                        out = st.out.clone()  # the runner's buffer holds an earlier call's tokens past `done`
                        out[:, :, done:] = config.pad_id
                    else:
                        out[rows] = state.out
                    # Each kept problem's unfinished samples first, then finished ones up to the widest count.
                    order = torch.argsort((~active[kept]).to(torch.int8), dim=1, stable=True)[:, :widest]
                    index = (kept[:, None].expand(-1, widest), order)
                    rows = index if rows is None else (rows[0][index], rows[1][index])
                    state = _gathered(state, kept, index)
                    self.compactions += 1
            if state is st:
                runner.step(self)
            else:
                self._step_fn(state, config)
            done += 1
        if rows is not None:
            out[rows] = state.out
        return out[:, :, :done]

    def sample_tensor(self, prompt_ids: Sequence[Sequence[int]], n_samples: int = 19, max_new_tokens: int = 32,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
                      pad_id: int | None = None, seed: int | None = None, generator: torch.Generator | None = None,
                      prefix_embeds=None, prefix_mask=None, points=None, point_mask=None, uniforms=None,
                      grammar: Grammar | None = None, allowed=None, max_nodes=None):
        """Like `sample`, as tensors on the CPU: tokens (B, S, T') and lengths (B, S) (T' <= max_new_tokens).

        tokens[b, s, :lengths[b, s]] are the generated ids (the last one EOS
        when the sequence finished); later entries are padding.
        """
        return self.launch(prompt_ids, n_samples, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id, seed,
                           generator, prefix_embeds, prefix_mask, points, point_mask, uniforms, grammar, allowed,
                           max_nodes, early_stop=True).result()

    def sample(self, prompt_ids: Sequence[Sequence[int]], n_samples: int = 19, max_new_tokens: int = 32,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
               pad_id: int | None = None, seed: int | None = None, generator: torch.Generator | None = None,
               prefix_embeds=None, prefix_mask=None, points=None, point_mask=None,
               uniforms=None, grammar: Grammar | None = None, allowed=None, max_nodes=None) -> list[list[list[int]]]:
        """`n_samples` continuations of each prompt: result[b][s] = ids up to and including EOS (or max_new_tokens).

        prompt_ids: one list of token ids per problem (any lengths; left-padded
        here with `pad_id`, default eos_id or 0). eos_id None: every sequence
        runs max_new_tokens. temperature 0 = greedy. Reproducible for a given
        `seed` (or a CPU/CUDA torch.Generator `generator`, advanced by the call).
        A PrefixLM's prefix: `prefix_embeds` (B, P, hidden) with `prefix_mask`
        (B, P), or `points`/`point_mask` (point_embedder.encode_points) run
        through the wrapper's embedder. `uniforms` (max_new_tokens, B,
        n_samples) in [0, 1), instead of a seed: the draws themselves, so a
        caller can give every problem its own seeded stream and a problem's
        samples do not depend on which problems share its batch. `grammar`
        (a Grammar, with `allowed` (B, V) bool: each row's permitted tokens,
        and `max_nodes` (B,): each row's size limit) constrains every sample
        to a well-formed expression.
        """
        tokens, lengths = self.sample_tensor(prompt_ids, n_samples, max_new_tokens, temperature, top_k, top_p, eos_id,
                                             pad_id, seed, generator, prefix_embeds, prefix_mask, points, point_mask,
                                             uniforms, grammar, allowed, max_nodes)
        rows, counts = tokens.tolist(), lengths.tolist()
        return [[row[:count] for row, count in zip(problem, problem_counts)]
                for problem, problem_counts in zip(rows, counts)]

    @torch.no_grad()
    def forced_logits(self, prompt_ids: Sequence[Sequence[int]], continuations: torch.Tensor, pad_id: int = 0,
                      prefix_embeds=None, prefix_mask=None) -> torch.Tensor:
        """Teacher-forced logits: (B, S, T + 1, V) float32 for continuations (B, S, T) of the prompts.

        [..., 0, :] is the prompt's next-token distribution (shared by the S
        samples), [..., t + 1, :] the distribution after feeding continuation
        token t: what the sampler computes at each step (tests compare with HF).
        """
        continuations = torch.as_tensor(continuations, dtype=torch.long)
        B, S, T = continuations.shape
        ids, mask = left_pad(prompt_ids, pad_id)
        n_prefix = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        L = self._padded_length(ids.shape[1] + n_prefix)
        runner = _Runner(self, B, S, max(T, 1), L, SamplingConfig(), capture=False)
        state = runner.state
        first = self.prefill(ids, mask, prefix_embeds, prefix_mask, out=state)
        outputs = [first.logits[:, None, :].expand(B, S, -1)]
        continuations = continuations.to(self.device)
        state.step.zero_()
        for t in range(T):
            state.tokens.copy_(continuations[:, :, t])
            outputs.append(self._forward_step(state))
            state.step += 1
        return torch.stack(outputs, dim=2)


# --------------------------------------------------------------------------
# Reference: Hugging Face generate


@torch.no_grad()
def hf_generate_reference(model, prompt_ids: Sequence[Sequence[int]], n_samples: int = 19, max_new_tokens: int = 32,
                          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
                          pad_id: int = 0, seed: int | None = None, return_tensor: bool = False):
    """HF `generate(num_return_sequences=n_samples)` on the same left-padded prompts; same nested lists as `sample`.

    eos_id None: no stopping, every sequence runs max_new_tokens. With
    `return_tensor` the raw new tokens (B * n_samples, T) stay on the device
    (the benchmark times exactly the generate call). Plain GPT-Neo models only:
    a PrefixLM has no `generate` and its prefix positions differ from what
    generate would compute.
    """
    from transformers import GenerationConfig

    decoder, embedder = _split_model(model)
    if embedder is not None:
        raise ValueError("hf_generate_reference supports plain GPTNeoForCausalLM models, not a PrefixLM")
    device = next(decoder.parameters()).device
    ids, mask = left_pad(prompt_ids, pad_id)
    ids, mask = ids.to(device), mask.to(device).long()
    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=int(max_new_tokens), do_sample=sampling, num_return_sequences=int(n_samples),
        temperature=float(temperature) if sampling else None, top_k=int(top_k) if sampling else None,
        top_p=float(top_p) if sampling else None, pad_token_id=int(pad_id),
        eos_token_id=None if eos_id is None else int(eos_id), use_cache=True,
    )
    if eos_id is None:
        # No EOS at all: a never-produced id keeps generate from borrowing the model's default eos_token_id.
        config.eos_token_id = decoder.config.vocab_size + 12345
    # generate draws from torch's global generator: seeded inside a fork, so the caller's state is left as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(int(seed))
        sequences = decoder.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    new = sequences[:, ids.shape[1]:]
    if return_tensor:
        return new
    rows = new.view(len(prompt_ids), int(n_samples), -1).tolist()
    return [truncate_at_eos(problem, eos_id) for problem in rows]
