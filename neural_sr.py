"""NeuralSR: BasicSR whose population update is proposed by a trained transformer.

    from neural_sr import NeuralSR, Proposer
    model = NeuralSR(checkpoint="checkpoints/onestep-tiny/final", population_size=20,
                     num_generations=100, max_size=25, max_depth=10, seed=0).fit(X, y)
    model.best_expression_, model.well_formed_rate_, model.n_neural_, model.n_fallback_

One generation (`generate_new_population`, the seam BasicSR leaves for it):
slot 0 keeps the best individual (elitism); the model is shown the current
population with its fitnesses, in the prompt the training data was built
with (`format_utils.prompt_for_state`, the function the conversions use,
so run-time and training prompts are the same bytes), and proposes the other
population_size - 1 children:

    mode "one_step"  population_size - 1 samples of one child each
                     (`{expr}<EOS>`, one_step_conversion's target);
    mode "autoreg"   one sample that writes a whole population
                     (`{expr};{expr};...<EOS>`, autoreg_conversion's target),
                     its first population_size - 1 entries used.

A proposal that does not parse, uses a variable or operator this search does
not have, exceeds max_size or max_depth, or scores a non-finite fitness is
replaced by a `generate_child_via_evolution` child (tournament, crossover or
mutation), labelled "fallback"; kept proposals are labelled "neural". A
neural child's parent is the previous individual it shares its largest
subtree with (the one an edit most plausibly started from; a copy's parent is
its source), so the ancestry of the final best stays connected for
`--ancestors_only` targets and DAgger. Stagnation restarts work as in BasicSR
(no model call that generation).

Counting: `n_evaluations_` is BasicSR's (every individual of every
generation) plus each distinct proposal that was scored and rejected as
invalid; `n_proposals_` the proposals asked for; `well_formed_rate_` the
share of them kept. With collect_trajectory the trajectory gains int32
arrays `n_neural`, `n_fallback`, `n_well_formed` of shape (G+1,).

The model lives in a `Proposer`: the checkpoint's model, tokenizer, prompt
settings (context type and mode from the checkpoint's saved training
settings) and a fast_sampler.SharedPrefixSampler, which encodes each prompt
once and shares its KV cache among the samples. Prompt ids are built from
cached pieces and outputs parsed through a memo (token_codec.py). A PrefixLM
checkpoint (point_embedder.py) also reads the problem's points. Sampling is
seeded per (run seed, generation) (`random_stream.derive_seed`), each problem
with its own uniforms, so a run gives the same children whether it runs
alone or batched with others (batched_neural_sr.py).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import expressions as ex
import format_utils as fu
from basic_sr import BasicSR
from expressions import is_variable_name
from operators import BINARY_OPERATORS, UNARY_OPERATORS
from random_stream import derive_seed

DEFAULT_CHECKPOINT = Path("models/neuralsr-tiny")
MODES = ("one_step", "autoreg")
TRAINING_MODES = {"onestep": "one_step", "autoreg": "autoreg"}  # train.py's names -> ours
SAMPLING_STREAM = 1  # derive_seed(run seed, SAMPLING_STREAM, generation) seeds a generation's samples
NEW_TOKEN_MARGIN = 8  # tokens beyond the longest training target (train.py samples the same way)
TOKENS_PER_NODE = 3  # a binary node prints as `(`, its symbol and `)`: a bound when no target length is known
MAX_OWNER_CACHE = 1 << 16


def resolve_device(device=None):
    """The torch device NeuralSR's model runs on: `device`, or when None cuda when available, else cpu.

    ValueError (one line) for a text that names no torch device.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(device)!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None


def default_attention(device) -> str:
    """The sampler's attention mode by device: "fused" on the CPU (measured ~10% faster), "scores" on CUDA.

    Both give the same logits (tests compare each with Hugging Face's); on
    CUDA "fused" (flash attention over the shared prompt) is not measured
    yet, so the measured "scores" stays the default there (docs/LOG.md).
    """
    import torch

    return "scores" if torch.device(device).type == "cuda" else "fused"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; one line naming the folder."""


@functools.cache
def load_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged checkpoint folder raises: I/O and parse errors, a truncated or corrupt
    model.safetensors (safetensors' SafetensorError), a config.json field of the wrong type
    (huggingface_hub's StrictDataclassError), weights that do not fit the config (RuntimeError)."""
    errors: list[type[BaseException]] = [OSError, ValueError, TypeError, KeyError, RuntimeError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:
        pass
    try:
        from huggingface_hub.errors import StrictDataclassError

        errors.append(StrictDataclassError)
    except ImportError:
        pass
    return tuple(errors)


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its lines joined), at most `limit` characters."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------
# The model behind the proposals


@dataclass(frozen=True)
class ProposalRequest:
    """One population's question to the model: `n_samples` continuations of its prompt."""

    state: fu.PromptState
    n_samples: int
    seed: int  # the samples' uniforms come from this seed alone
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int | None = None  # None: the proposer's default
    constrained: bool = False  # grammar-constrained decoding: every sample well-formed, of its search's symbols
    max_nodes: int | None = None  # constrained: the largest expression (nodes) a sample may spell


def _is_operand_token(text: str) -> bool:
    """A token that is a whole operand: a variable (x3) or a whole constant (1.0), not a character of a number."""
    if is_variable_name(text):
        return True
    if len(text) == 1 and text in fu.NUMBER_CHARACTERS:  # a digit, ".", "e" or a sign
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def expression_grammar(tokenizer, vocab_size: int):
    """fast_sampler.Grammar of ttsr's infix expressions over `tokenizer`'s ids (kinds for `vocab_size` ids).

    Parentheses, the end token, the registry's binary and unary operators,
    and whole-operand tokens (variables, one-token constants such as 1.0);
    everything else (digits, markers, context words) is never sampled.
    """
    import fast_sampler as fs

    by_text = {"(": fs.OPEN, ")": fs.CLOSE, tokenizer.eos_token: fs.END}
    by_text.update({symbol: fs.BINARY for symbol in BINARY_OPERATORS})
    by_text.update({symbol: fs.UNARY for symbol in UNARY_OPERATORS})
    kinds = [fs.OTHER] * vocab_size
    for text, index in tokenizer.get_vocab().items():
        if index < vocab_size:
            kinds[index] = by_text.get(text, fs.OPERAND if _is_operand_token(text) else fs.OTHER)
    return fs.Grammar(tuple(kinds))


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable ({error})") from None


def checkpoint_settings(folder) -> dict:
    """What a train.py checkpoint says about its prompts: mode, context_type, parentheses, max_target_tokens
    (None: unknown; parentheses "full" when not recorded, as every checkpoint before the option was).

    From the resolved run config and the meta file's `prompt` entry (the
    training data's settings); for checkpoints saved without that entry, from
    the conversion sidecar beside the training file, when it is still there.
    """
    import train

    folder = Path(folder)
    resolved = _read_json(folder / train.RESOLVED_CONFIG) or {}
    meta = _read_json(folder / train.CHECKPOINT_META) or {}
    prompt = meta.get("prompt")
    if prompt is None and resolved.get("train_file"):
        prompt = train.training_prompt_settings(resolved["train_file"])
    prompt = prompt or {}
    return {"mode": resolved.get("mode"), "context_type": prompt.get("context_type"),
            "parentheses": prompt.get("parentheses") or "full", "max_target_tokens": prompt.get("max_target_tokens")}


def checkpoint_fingerprint(folder) -> str:
    """sha256 over a checkpoint's weights and tokenizer files: which model made a trace."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "tokenizer.json"]:
        if path.exists():
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


class Proposer:
    """A checkpoint's model, tokenizer, prompt settings and fast sampler: loaded once, shared by many searches."""

    def __init__(self, model, tokenizer, *, mode: str | None, context_type: str, max_new_tokens: int | None = None,
                 checkpoint=None, device=None, dtype=None, compile="cuda_graphs", attention: str | None = None,
                 parentheses: str = "full"):
        import torch

        import point_embedder as pe
        from fast_sampler import SharedPrefixSampler
        from token_codec import OutputParser, PromptEncoder

        if context_type not in fu.CONTEXT_TYPES:
            raise ValueError(f"context_type must be one of {', '.join(fu.CONTEXT_TYPES)}, got {context_type!r}")
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.mode = mode  # "one_step", "autoreg", or None when the checkpoint does not say
        self.context_type = context_type
        self.parentheses = ex.check_parentheses(parentheses)  # how the prompts write expressions
        self.max_new_tokens = max_new_tokens  # None: each search bounds it by its own limits
        self.device = resolve_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device).eval()  # the embedder of a PrefixLM runs from here
        self.tokenizer = tokenizer
        self.sampler = SharedPrefixSampler(self.model, device=self.device, dtype=dtype, compile=compile,
                                           attention=attention or default_attention(self.device))
        self.embedder_config = model.embedder.config if isinstance(model, pe.PrefixLM) else None
        self.n_prefix = 0 if self.embedder_config is None else self.embedder_config.n_prefix
        self.contexts = fu.ContextCache()
        self.encoder = PromptEncoder(tokenizer)
        self.parser = OutputParser(tokenizer, self.sampler.vocab_size)
        self._points: dict[int, tuple] = {}  # id(X) -> (X, y, points, mask) of PrefixLM problems
        self._grammar = None  # fast_sampler.Grammar, built on first constrained call
        self._allowed: dict[tuple, tuple[int, ...]] = {}  # search symbols -> permitted token ids
        self.seconds = 0.0  # spent in the sampler (prefill, embedder and decode)
        self.calls = 0
        self.overlong = 0  # requests whose prompt left the model no room to answer (empty outputs)

    @classmethod
    def load(cls, checkpoint, device=None, dtype=None, compile="cuda_graphs", context_type: str | None = None,
             max_new_tokens: int | None = None, attention: str | None = None) -> "Proposer":
        """Load a train.py checkpoint folder; context type, mode and new-token budget come from its settings.

        `context_type` / `max_new_tokens` override what the checkpoint says
        (needed for checkpoints saved without training settings). `compile`:
        the sampler's decode mode on CUDA (fast_sampler.COMPILE_MODES; CUDA
        graphs by default, which cut the launch overhead of small batches);
        ignored on the CPU. `attention`: the sampler's attention over the
        prompt (fast_sampler.ATTENTION_MODES; None: `default_attention`).
        """
        folder = Path(checkpoint)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"checkpoint {folder}: not found (expected a folder written by train.py, "
                                  f"holding config.json, the weights and the tokenizer)")
        settings = checkpoint_settings(folder)
        if settings["mode"] is not None and settings["mode"] not in TRAINING_MODES:
            raise CheckpointError(f"checkpoint {folder}: trained in {settings['mode']} mode; NeuralSR needs a "
                                  f"one-step or autoregressive checkpoint")
        context_type = context_type or settings["context_type"]
        if context_type is None:
            raise CheckpointError(f"checkpoint {folder}: its training context type is unknown (no prompt settings "
                                  f"in its meta file, no conversion sidecar beside its train_file); give context_type")
        if settings["parentheses"] not in fu.PARENTHESES:
            raise CheckpointError(f"checkpoint {folder}: its prompt settings name parentheses "
                                  f"{settings['parentheses']!r}; known: {', '.join(fu.PARENTHESES)}")
        if max_new_tokens is None and settings["max_target_tokens"]:
            max_new_tokens = int(settings["max_target_tokens"]) + NEW_TOKEN_MARGIN
        import point_embedder as pe
        import tokenizer as tk
        from progress import library_bars_off

        try:
            with library_bars_off():  # a tiny model loads in no time: no "Loading weights" bar on stderr
                model = pe.load_model(folder)
                tokenizer = tk.load_tokenizer(folder)
        except load_errors() as error:
            where = {"SafetensorError": "model.safetensors: ", "StrictDataclassFieldValidationError": "config.json: ",
                     "StrictDataclassError": "config.json: "}.get(type(error).__name__, "")
            raise CheckpointError(f"checkpoint {folder}: cannot load ({where}{_one_line(error)})") from None
        return cls(model, tokenizer, mode=TRAINING_MODES.get(settings["mode"]), context_type=context_type,
                   max_new_tokens=max_new_tokens, checkpoint=folder, device=device, dtype=dtype, compile=compile,
                   attention=attention, parentheses=settings["parentheses"])

    def __repr__(self) -> str:
        return f"Proposer({str(self.checkpoint)!r})" if self.checkpoint else "Proposer(<in memory>)"

    def __deepcopy__(self, memo) -> "Proposer":
        return self  # shared and never modified: sklearn.clone must not copy the model

    # ------------------------------------------------------------------
    # Text

    def prompt_text(self, state: fu.PromptState) -> str:
        """The prompt of a state, exactly as the conversions write it."""
        return fu.prompt_for_state(state, self.contexts)

    def prompt_ids(self, state: fu.PromptState) -> list[int]:
        """The token ids of `prompt_text(state)`, built from cached pieces."""
        return self.encoder.ids(state, self.contexts)

    def parse_child(self, ids: tuple) -> tuple | None:
        """A one-step output as a prefix tuple (None: malformed or unfinished)."""
        return self.parser.child(ids)

    def parse_population(self, ids: tuple) -> list[tuple | None]:
        """An autoregressive output as a list of prefix tuples (None: malformed)."""
        return self.parser.population(ids)

    # ------------------------------------------------------------------
    # Sampling

    def propose(self, requests: Sequence, seed: int | Sequence[int] = 0) -> list[list[str | None]]:
        """Generated texts for (prompt_state, n_samples) pairs, in one batched model call.

        `seed`: one int (request i draws from derive_seed(seed, i)) or one
        seed per request. Each text runs up to and including <EOS>; None for
        a sample that never produced <EOS> within the token budget.
        """
        one_seed = isinstance(seed, (int, np.integer))
        seeds = [derive_seed(seed, i) for i in range(len(requests))] if one_seed else list(seed)
        if len(seeds) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(seeds)} seeds")
        asked = [ProposalRequest(state, int(n_samples), s) for (state, n_samples), s in zip(requests, seeds)]
        eos = self.tokenizer.eos_token_id
        return [[self.parser.text(ids) if eos in ids else None for ids in samples]
                for samples in self.propose_ids(asked)]

    def propose_ids(self, requests: Sequence[ProposalRequest]) -> list[list[tuple[int, ...]]]:
        """Generated ids per request and sample (up to and including <EOS>); one sampler call per sampling setting.

        A prompt that leaves the model too few positions for the token budget
        gets fewer new tokens (its own sampler call); one that leaves none (a
        population of very large expressions) gets empty outputs, which the
        search replaces by fallback children. `overlong` counts the latter.
        """
        return self.launch(requests, early_stop=True).result()

    def launch(self, requests: Sequence[ProposalRequest], early_stop: bool | None = None) -> "PendingProposals":
        """`propose_ids`, started: on CUDA the model's work is queued and this returns before it is done.

        `result()` of the returned PendingProposals waits for the outputs, so
        the host can meanwhile finish other searches' generations
        (batched_neural_sr overlaps the two halves this way). `early_stop`: as
        in fast_sampler.SharedPrefixSampler.launch (None: no early stop on CUDA,
        which would wait for the device).
        """
        started = time.perf_counter()
        results: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
            budget = request.max_new_tokens or self.max_new_tokens
            if budget is None:
                raise ValueError("no max_new_tokens: the checkpoint does not record its target lengths")
            prompt = self.prompt_ids(request.state)
            steps = min(int(budget), self.sampler.max_positions - (self.n_prefix + len(prompt)) + 1)
            if steps < (2 if request.constrained else 1):
                results[index] = [()] * request.n_samples
                self.overlong += 1
                continue
            key = (float(request.temperature), int(request.top_k), float(request.top_p), int(budget), steps,
                   bool(request.constrained))
            groups.setdefault(key, []).append((index, prompt))
        calls = []
        for (temperature, top_k, top_p, budget, steps, constrained), members in groups.items():
            asked = [requests[i] for i, _ in members]
            pending = self._launch(asked, [prompt for _, prompt in members], temperature, top_k, top_p, budget, steps,
                                   constrained, early_stop)
            calls.append(([i for i, _ in members], asked, pending))
        self.seconds += time.perf_counter() - started
        self.calls += len(calls)
        return PendingProposals(self, results, calls)

    def _launch(self, requests, prompts, temperature, top_k, top_p, budget, steps, constrained, early_stop):
        import torch

        width = max(request.n_samples for request in requests)
        # Each request's uniforms come from its own seed for the full budget, so a sample does not depend on
        # which requests share its call or how many steps the call runs.
        uniforms = torch.stack([self._uniforms(r.seed, budget, r.n_samples, width)[:steps] for r in requests], dim=1)
        return self.sampler.launch(
            prompts, n_samples=width, max_new_tokens=steps, temperature=temperature, top_k=top_k, top_p=top_p,
            eos_id=self.tokenizer.eos_token_id, pad_id=self.tokenizer.pad_token_id, uniforms=uniforms,
            early_stop=early_stop, **self._grammar_for(requests, constrained), **self._points_for(requests))

    def grammar(self):
        """The infix-expression Grammar over this tokenizer's ids (fast_sampler.Grammar), built once."""
        if self._grammar is None:
            self._grammar = expression_grammar(self.tokenizer, self.sampler.vocab_size)
        return self._grammar

    def allowed_tokens(self, state: fu.PromptState) -> tuple[int, ...]:
        """Ids a constrained sample of this search may use: its variables, operators and constant tokens.

        A constant's token is its magnitude, as the tokenizer spells it
        (tokenizer.constant_tokens: `-2.5` is `-` then `2.5`); the grammar has
        no unary minus, so a constrained sample writes the magnitude.
        """
        from tokenizer import constant_tokens

        key = (state.n_vars, tuple(state.binary_operators), tuple(state.unary_operators), tuple(state.constants))
        ids = self._allowed.get(key)
        if ids is None:
            vocab = self.tokenizer.get_vocab()
            texts = ["(", ")", self.tokenizer.eos_token, *state.binary_operators, *state.unary_operators,
                     *(f"x{i}" for i in range(state.n_vars)), *constant_tokens(state.constants)]
            ids = self._allowed[key] = tuple(sorted({vocab[text] for text in texts if text in vocab}))
        return ids

    def _grammar_for(self, requests, constrained: bool) -> dict:
        """grammar/allowed for sample_tensor when the requests are constrained, else nothing."""
        if not constrained:
            return {}
        import torch

        allowed = torch.zeros(len(requests), self.sampler.vocab_size, dtype=torch.bool)
        for row, request in enumerate(requests):
            allowed[row, list(self.allowed_tokens(request.state))] = True
        unlimited = 1 << 30
        max_nodes = [request.max_nodes or unlimited for request in requests]
        return {"grammar": self.grammar(), "allowed": allowed, "max_nodes": max_nodes}

    @staticmethod
    def _uniforms(seed: int, steps: int, n_samples: int, width: int):
        """(steps, width) uniforms of one request from its own seed (columns past n_samples unused)."""
        import torch

        generator = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
        draws = torch.rand((steps, n_samples), generator=generator)
        return torch.nn.functional.pad(draws, (0, width - n_samples))

    def _points_for(self, requests) -> dict:
        """points/point_mask for a PrefixLM (each problem's encoded once), else nothing."""
        if self.embedder_config is None:
            return {}
        import torch

        import point_embedder as pe

        rows = []
        for request in requests:
            X, y = request.state.X, request.state.y
            if X is None or y is None:
                raise ValueError("this checkpoint reads the problem's points: its PromptStates need X and y")
            entry = self._points.get(id(X))
            if entry is None or entry[0] is not X or entry[1] is not y:
                if len(self._points) >= 4096:
                    self._points.clear()
                points, mask = pe.encode_points([X], [y], self.embedder_config.max_input_dim,
                                                self.embedder_config.max_points)
                entry = self._points[id(X)] = (X, y, points, mask)
            rows.append(entry)
        return {"points": torch.cat([row[2] for row in rows]), "point_mask": torch.cat([row[3] for row in rows])}


class PendingProposals:
    """Proposer.launch's calls in flight; `result()` gives propose_ids' value (and counts the wait as model time)."""

    def __init__(self, proposer: Proposer, results: list, calls: list):
        self._proposer, self._results, self._calls = proposer, results, calls

    def ready(self) -> bool:
        """True when `result()` will not wait for the device."""
        return all(pending.ready() for _, _, pending in self._calls)

    def result(self) -> list[list[tuple[int, ...]]]:
        started = time.perf_counter()
        results = self._results
        for indices, requests, pending in self._calls:
            tokens, lengths = pending.result()
            rows, counts = tokens.tolist(), lengths.tolist()
            for b, (index, request) in enumerate(zip(indices, requests)):
                results[index] = [tuple(row[:count]) for row, count in
                                  zip(rows[b][:request.n_samples], counts[b][:request.n_samples])]
        self._calls = []
        self._proposer.seconds += time.perf_counter() - started
        return results


@functools.lru_cache(maxsize=1)
def _cached_proposer(path: str, device, stamp: float) -> Proposer:
    return Proposer.load(path, device=device)


def load_proposer(checkpoint, device=None) -> Proposer:
    """A Proposer for a checkpoint path, reused while the same checkpoint (unchanged on disk) is asked for."""
    if isinstance(checkpoint, Proposer):
        return checkpoint
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        return Proposer.load(folder, device=device)  # raises the one-line "not found"
    stamp = max(path.stat().st_mtime for path in folder.iterdir() if path.is_file())  # rewritten: load again
    return _cached_proposer(str(folder.resolve()), None if device is None else str(device), stamp)


# --------------------------------------------------------------------------
# The search


class NeuralSR(BasicSR):
    """BasicSR with model-proposed children (see the module docstring); scikit-learn style."""

    _pause_garbage_collection = False  # the model's code may make reference cycles

    def __init__(self, *, checkpoint=DEFAULT_CHECKPOINT, mode: str = "one_step", temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, device=None, constrained: bool = False, **basic_sr_params):
        """Every BasicSR parameter (keyword only) plus:

        checkpoint   a train.py checkpoint folder, or an already loaded Proposer (shared, loaded once)
        mode         "one_step" or "autoreg"; must match the checkpoint's training mode
        temperature  0 = greedy; top_k (0 = off) and top_p (1 = off) as in Hugging Face
        device       None: cuda when available, else cpu (ignored when checkpoint is a Proposer)
        constrained  one-step mode: grammar-constrained decoding (fast_sampler.Grammar), so every
                     proposal is a well-formed expression of this search's variables, operators and
                     (one-token) constants that ends within the token budget; it may still be too
                     large or score non-finite, and then falls back
        """
        self.checkpoint = checkpoint
        self.mode = mode
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.device = device
        self.constrained = constrained
        super().__init__(**basic_sr_params)

    def _validate_params(self) -> None:
        super()._validate_params()

        def require(condition: bool, name: str, rule: str) -> None:
            if not condition:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        require(self.mode in MODES, "mode", f"one of {', '.join(MODES)}")
        require(isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0, "temperature", "a finite number >= 0 (0 = greedy)")
        require(isinstance(self.top_k, (int, np.integer)) and not isinstance(self.top_k, bool) and self.top_k >= 0,
                "top_k", "an integer >= 0 (0 = off)")
        require(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p", "in (0, 1]")
        require(isinstance(self.checkpoint, (str, os.PathLike, Proposer)), "checkpoint",
                "a checkpoint folder or a Proposer")
        require(isinstance(self.constrained, (bool, np.bool_)), "constrained", "True or False")
        require(not self.constrained or self.mode == "one_step", "constrained", "False in autoreg mode")

    # ------------------------------------------------------------------
    # Fitting: BasicSR's loop; `next_request` and `step_with` let batched_neural_sr drive many in lockstep

    def _setup(self, X: np.ndarray, y: np.ndarray) -> None:
        super()._setup(X, y)
        self._proposer = load_proposer(self.checkpoint, self.device)
        if self._proposer.mode not in (None, self.mode):
            raise ValueError(f"mode is {self.mode!r} but checkpoint {self._proposer.checkpoint} was trained "
                             f"for {self._proposer.mode!r}; pass mode={self._proposer.mode!r}")
        self._X, self._y = X, y
        # seed None: fresh entropy for the model's draws too (SeedSequence reads the OS, not global state).
        self._sampling_seed = self.seed if self.seed is not None else np.random.SeedSequence().entropy
        self._max_new_tokens = self._proposer.max_new_tokens or self._token_budget()
        self._outputs = None  # (outputs, seconds) handed in by step_with
        self._symbols = frozenset(self._variables) | frozenset(self._operators)
        self._owners: dict[tuple, int] = {}  # subtree -> slot, for the population in _owners_of
        self._owners_of = None
        self._counts: list[tuple[int, int, int]] = [(0, 0, 0)]  # per generation: neural, fallback, well-formed
        self.n_neural_ = self.n_fallback_ = self.n_proposals_ = 0
        self.model_seconds_ = 0.0

    def _token_budget(self) -> int:
        """New tokens when the checkpoint records no target length: room for max_size nodes per child."""
        child = TOKENS_PER_NODE * self.max_size + 1
        return child + 1 if self.mode == "one_step" else (self.population_size - 1) * child + 1

    def next_request(self) -> ProposalRequest | None:
        """What the model is asked for the next generation; None when that generation needs no model (a restart)."""
        generation = self._generation + 1
        if self.restart_due(generation):
            return None
        return self._request(self._population, self._fitnesses, generation)

    def step_with(self, outputs, seconds: float = 0.0) -> bool:
        """`step`, with the model's outputs for `next_request()` already computed (None: ask the model here)."""
        self._outputs = None if outputs is None else (outputs, seconds)
        try:
            return self.step()
        finally:
            self._outputs = None

    def _request(self, population, fitnesses, generation: int) -> ProposalRequest:
        # The state children of `generation` are made from is generation - 1 (as one_step_conversion writes it).
        state = fu.PromptState(generation - 1, list(population), fitnesses, self.n_features_in_, self._binary,
                               self._unary, tuple(self._constants), self._X, self._y, self._proposer.context_type,
                               self._proposer.parentheses)
        n_samples = len(population) - 1 if self.mode == "one_step" else 1
        return ProposalRequest(state, n_samples, derive_seed(self._sampling_seed, SAMPLING_STREAM, generation),
                               float(self.temperature), int(self.top_k), float(self.top_p), self._max_new_tokens,
                               bool(self.constrained), int(self.max_size))

    def _finish(self) -> None:
        super()._finish()
        n_well_formed = sum(counts[2] for counts in self._counts)
        self.well_formed_rate_ = n_well_formed / self.n_proposals_ if self.n_proposals_ else 0.0
        if self.collect_trajectory:
            columns = np.array(self._counts, dtype=np.int32).reshape(-1, 3)
            for index, name in enumerate(("n_neural", "n_fallback", "n_well_formed")):
                self.trajectory_[name] = np.ascontiguousarray(columns[:, index])

    # ------------------------------------------------------------------
    # One generation

    def generate_new_population(self, population, fitnesses, generation):
        """The elite, then the model's proposals, each unusable one replaced by a fallback child."""
        elite = int(np.argmax(fitnesses))
        if self.restart_due(generation):
            self._counts.append((0, 0, 0))
            return self.restart_population(population[elite], elite, generation)
        if self._outputs is not None:
            outputs, seconds = self._outputs
        else:
            started = time.perf_counter()
            outputs = self._proposer.propose_ids([self._request(population, fitnesses, generation)])[0]
            seconds = time.perf_counter() - started
        self.model_seconds_ += seconds
        return self._fill(population, fitnesses, elite, self._proposals(outputs, len(population) - 1))

    def _proposals(self, outputs, count: int) -> list[tuple | None]:
        """`count` proposed trees (None where the model gave nothing usable)."""
        if self.mode == "one_step":
            proposals = [self._proposer.parse_child(ids) for ids in outputs]
        else:
            proposals = self._proposer.parse_population(outputs[0])
        proposals = (proposals + [None] * count)[:count]
        self.n_proposals_ += count
        return proposals

    def _fill(self, population, fitnesses, elite: int, proposals: list):
        usable = self._usable(proposals)
        children, parents, origins = [population[elite]], [(elite,)], ["elite"]
        select = None
        for tree in proposals:
            if tree in usable:
                children.append(tree)
                # The parent only matters to a recorded trajectory (its ancestry); it costs a subtree index.
                parents.append((self._source_slot(tree, population, fitnesses, elite),) if self.collect_trajectory
                               else ())
                origins.append("neural")
                continue
            if select is None:  # only when needed: the selector draws tie-breaks from the stream
                select = self.make_selector(fitnesses.tolist())
            child, child_parents, _ = self.generate_child_via_evolution(population, [], select)
            children.append(child)
            parents.append(child_parents)
            origins.append("fallback")
        n_neural = origins.count("neural")
        self.n_neural_ += n_neural
        self.n_fallback_ += len(proposals) - n_neural
        self._counts.append((n_neural, len(proposals) - n_neural, n_neural))
        return children, parents, origins

    def _usable(self, proposals: list) -> set:
        """The proposals that parsed, use only this search's symbols, fit the limits and score a finite fitness."""
        allowed = self._symbols
        candidates = [tree for tree in dict.fromkeys(proposals) if tree is not None
                      and len(tree) <= self.max_size  # before the symbol scan: a runaway output can be long
                      and all(token.__class__ is float or token in allowed for token in tree)
                      and self._fits_limits(tree)]
        if not candidates:
            return set()
        fitnesses = self.score_population(candidates)
        finite = np.isfinite(fitnesses)
        # Kept proposals are counted again with the population; rejected ones cost one evaluation each.
        self.n_evaluations_ -= int(finite.sum())
        return {tree for tree, ok in zip(candidates, finite.tolist()) if ok}

    def _source_slot(self, tree: tuple, population, fitnesses, elite: int) -> int:
        """The slot a neural child most plausibly came from: the best holder of its largest subtree in the population.

        Among subtrees of equal size the child's rightmost counts first; among
        holders of one subtree, the fittest (then the lower slot).
        """
        owners = self._owners
        if self._owners_of is not population:  # built once per generation, only when a neural child needs it
            order = np.argsort(-np.asarray(fitnesses, dtype=np.float64), kind="stable").tolist()
            # The fittest holder of each subtree is written last, so it wins.
            self._owners = owners = {subtree: slot for slot in reversed(order)
                                     for subtree in _subtrees(population[slot])}
            self._owners_of = population
        slot = owners.get(tree)  # a copy: the whole tree is the largest subtree
        if slot is not None:
            return slot
        best, size = elite, 0
        for subtree in _subtrees(tree):
            if len(subtree) > size:
                holder = owners.get(subtree)
                if holder is not None:
                    best, size = holder, len(subtree)
        return best

    # ------------------------------------------------------------------
    # After fitting

    def summary(self) -> dict:
        summary = super().summary()
        summary.update(well_formed_rate=self.well_formed_rate_, n_neural=self.n_neural_, n_fallback=self.n_fallback_,
                       model_seconds=self.model_seconds_)
        checkpoint = self.checkpoint.checkpoint if isinstance(self.checkpoint, Proposer) else self.checkpoint
        summary["params"]["checkpoint"] = None if checkpoint is None else str(checkpoint)
        summary["params"]["device"] = None if self.device is None else str(self.device)
        return summary


def _merged_signature(base, extra) -> inspect.Signature:
    """`extra`'s signature with `base`'s parameters (keyword only) in place of its **kwargs."""
    params = list(inspect.signature(base).parameters.values())
    own = list(inspect.signature(extra).parameters.values())
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[1:]]
    mine = [p for p in own[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return inspect.Signature([own[0], *keyword, *mine])


# BasicSR's parameters are listed once, in BasicSR; NeuralSR's signature (get_params, repr,
# sklearn.clone) is derived from it, so the two can never disagree about a default.
NeuralSR.__init__.__signature__ = _merged_signature(BasicSR.__init__, NeuralSR.__init__)


@functools.lru_cache(maxsize=MAX_OWNER_CACHE)
def _subtrees(tree: tuple) -> tuple[tuple, ...]:
    """Every subtree of a prefix tree, the rightmost first (one right-to-left pass; the whole tree last)."""
    arity = ex.ARITY
    ends: list[int] = []
    spans = []
    for start in range(len(tree) - 1, -1, -1):
        token = tree[start]
        count = arity.get(token, 0) if token.__class__ is str else 0
        if count == 0:
            ends.append(start + 1)
            spans.append((token,))
            continue
        end = ends.pop()
        if count == 2:
            end = ends.pop()
        ends.append(end)
        spans.append(tree[start:end])
    return tuple(spans)
