"""Token ids of prompts and of model outputs, built and read through per-piece caches.

NeuralSR asks the model for children every generation, for hundreds of
problems at once. Encoding every prompt text (400-750 tokens) with the
tokenizer cost more than the sampling itself (412 ms against 68 ms per step
at B=256), and so did parsing every generated text, although from one
generation to the next most expressions, fitness texts and outputs recur.
So:

    PromptEncoder  the ids of `format_utils.prompt_for_state(state)`, built
                   by concatenating cached ids of its pieces: the context,
                   each expression, each fitness text, and the marker and
                   separator tokens between them. A new expression's ids are
                   assembled from the ids of its atoms (parentheses, operator
                   symbols, variables, constants) in printing order, and a new
                   fitness text is spelled character by character when no
                   multi-character token occurs in it: the tokenizer's regex
                   costs ~10-20 us a call, and every generation brings about
                   ten new expressions and fitness texts per problem.
    OutputParser   generated ids -> a prefix tuple (one-step) or a list of
                   them (autoregressive), memoised on the id tuple; ids are
                   turned into text by a table lookup, then parsed with
                   format_utils.parse_generated(_population), never eval'd.

Why concatenating piece ids equals encoding the whole prompt (tokenizer.py:
the pre-tokenizer cuts a whole search constant, else the longest word, else
one character): special tokens (`<BOS>`, `<FITNESS>`, ...) are matched before
pre-tokenization, so the text between two markers is pre-tokenized on its
own. Inside it, pieces meet at `;`, `(`, `)` or an operator symbol, which no
longer token contains, and the only context-sensitive rule, a constant's
look-around (no digit or `.` before, no digit or `e` after), sees such a
character or the edge of the text either way. A text in which no
multi-character token occurs can only be cut into single characters. The
first prompt each PromptEncoder builds, and every CHECK_EVERY-th after it, is
also encoded whole and compared: a tokenizer that breaks these rules is
caught (a warning, then whole-text encoding) instead of silently feeding the
model other ids than it was trained on; tests compare the two on many states.
"""

from __future__ import annotations

import re
import warnings
from typing import Sequence

import numpy as np

import expressions as ex
import format_utils as fu

MAX_CACHE_ENTRIES = 1 << 18  # per cache; a full cache is emptied (runs of many problems would grow it forever)
CHECK_EVERY = 1024  # prompts between two comparisons with whole-text encoding


class _Memo(dict):
    """A dict emptied when it reaches `limit` entries: bounded memory, no per-access bookkeeping."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key, value):
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


class PromptEncoder:
    """Prompt token ids of PromptStates, equal to encoding `format_utils.prompt_for_state(state)`."""

    def __init__(self, tokenizer, max_entries: int = MAX_CACHE_ENTRIES):
        backend = tokenizer.backend_tokenizer  # the Rust tokenizer: its Python wrapper costs more than the work
        self._encode_text = lambda text: backend.encode(text, add_special_tokens=False).ids
        vocab = tokenizer.get_vocab()
        self._head = [vocab[fu.BOS], vocab[fu.CONTEXT]]
        self._population = vocab[fu.POPULATION]
        self._fitness = vocab[fu.FITNESS]
        self._target = vocab[fu.TARGET]
        self._separator = self._encode_text(fu.INDIVIDUAL_SEPARATOR)
        self._open, self._close = self._encode_text("("), self._encode_text(")")
        self._characters = {token: index for token, index in vocab.items() if len(token) == 1}
        self._character_set = frozenset(self._characters)
        words = sorted((t for t in vocab if len(t) > 1 and t not in fu.SPECIAL_TOKENS), key=len, reverse=True)
        self._any_word = re.compile("|".join(map(re.escape, words))).search if words else lambda text: None
        self._contexts = _Memo(4096)
        self._atoms = _Memo(max_entries)
        self._trees = {parentheses: _Memo(max_entries) for parentheses in fu.PARENTHESES}
        self._fitness_texts = _Memo(max_entries)
        self.prompts = 0  # built so far; the first and every CHECK_EVERY-th are checked
        self.exact = True  # False: the pieces did not add up, every prompt is encoded whole

    def ids(self, state: fu.PromptState, contexts: fu.ContextCache | None = None) -> list[int]:
        """The prompt's token ids (a new list)."""
        if not self.exact:
            return self._encode_text(fu.prompt_for_state(state, contexts))
        fitnesses = np.asarray(state.fitnesses, dtype=np.float64).tolist()  # as format_population reads them
        if len(fitnesses) != len(state.population):
            raise ValueError(f"{len(state.population)} expressions but {len(fitnesses)} fitnesses")
        ids = self._head + self._context_ids(fu.context_for_state(state, contexts))
        ids.append(self._population)
        parentheses = state.parentheses
        trees, fitness_texts = self._trees[parentheses], self._fitness_texts
        for index, (tree, fitness) in enumerate(zip(state.population, fitnesses)):
            if index:
                ids += self._separator
            tree_ids = trees.get(tree)
            if tree_ids is None:
                tree_ids = trees.put(tree, self._tree_ids(tree, parentheses))
            ids += tree_ids
            ids.append(self._fitness)
            text = fu.format_fitness(fitness)
            fitness_ids = fitness_texts.get(text)
            if fitness_ids is None:
                fitness_ids = fitness_texts.put(text, self._text_ids(text))
            ids += fitness_ids
        ids.append(self._target)
        if self.prompts % CHECK_EVERY == 0:
            self._check(state, contexts, ids)
        self.prompts += 1
        return ids

    def _atom_ids(self, token) -> list[int]:
        """The ids of one token of a tree (keyed by token, so a -0.0 constant reads as an equal 0.0 seen
        first, or the reverse, as format_utils' text memo does)."""
        ids = self._atoms.get(token)
        if ids is None:
            ids = self._atoms.put(token, self._encode_text(ex.format_constant(token) if token.__class__ is float
                                                           else token))
        return ids

    def _tree_ids(self, tree: tuple, parentheses: str) -> list[int]:
        """The ids of an expression's model text, from its atoms in printing order (expressions.infix_pieces,
        the rule expressions.to_string prints with; the model text has no spaces)."""
        return ex.infix_pieces(tree, parentheses, self._atom_ids, self._open, self._close, [])

    def _text_ids(self, text: str) -> list[int]:
        """A text's ids: one per character when no multi-character token occurs in it, else the tokenizer's."""
        if self._character_set.issuperset(text) and self._any_word(text) is None:
            characters = self._characters
            return [characters[character] for character in text]
        return self._encode_text(text)

    def _context_ids(self, context: str) -> list[int]:
        ids = self._contexts.get(context)
        if ids is None:
            ids = self._contexts.put(context, self._encode_text(context))
        return ids

    def _check(self, state, contexts, ids: list[int]) -> None:
        whole = self._encode_text(fu.prompt_for_state(state, contexts))
        if whole != ids:
            self.exact = False
            warnings.warn("this tokenizer does not encode prompts piece by piece; "
                          "encoding every prompt whole instead (slower)")
            ids[:] = whole


class OutputParser:
    """Generated token ids -> expressions, memoised; None marks an unusable output."""

    def __init__(self, tokenizer, vocab_size: int | None = None, max_entries: int = MAX_CACHE_ENTRIES):
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # A model may have more output rows than the tokenizer has tokens: those ids read as <UNK>.
        self._tokens = tokens + [fu.UNK] * max(0, (vocab_size or 0) - len(tokens))
        self._eos = tokenizer.eos_token_id
        vocab = tokenizer.get_vocab()
        # "(" and ")" are tokens of their own (no longer token contains them, see the module docstring), so an
        # output whose counts of the two differ cannot parse: most of an undertrained model's bad outputs are
        # rejected by two counts instead of a decode and a failing parse.
        self._parentheses = (vocab["("], vocab[")"]) if "(" in vocab and ")" in vocab else None
        self._children = _Memo(max_entries)
        self._populations = _Memo(max_entries)

    def text(self, ids: Sequence[int]) -> str:
        """The text of generated ids (the tokenizer's decoder concatenates tokens)."""
        tokens = self._tokens
        return "".join(tokens[i] for i in ids)

    def child(self, ids: tuple) -> tuple | None:
        """A one-step output `{expr}<EOS>` as a prefix tuple; None when malformed or unfinished (no <EOS>)."""
        if ids in self._children:
            return self._children[ids]
        if self._eos not in ids:
            return self._children.put(ids, None)
        if self._parentheses is not None:
            body = ids[:ids.index(self._eos)]
            if body.count(self._parentheses[0]) != body.count(self._parentheses[1]):
                return self._children.put(ids, None)
        return self._children.put(ids, fu.parse_generated(self.text(ids)))

    def population(self, ids: tuple) -> list[tuple | None]:
        """An autoregressive output as one entry per `;`-separated individual (None = malformed).

        Without <EOS> the model ran out of tokens: the last piece may be cut
        (`12` of `12.5` would even parse), so only the complete pieces count.
        """
        entries = self._populations.get(ids)
        if entries is None:
            entries = fu.parse_generated_population(self.text(ids))
            if self._eos not in ids:
                entries = entries[:-1]
            self._populations.put(ids, entries)
        return list(entries)
