"""The ttsr tokenizer: a small word-level vocabulary built locally, no training.

The model's language has a few dozen symbols, so each gets one token
(prototype defect 7: a 50k-token BPE vocabulary). The vocabulary, in id order:

    special tokens   <PAD> <BOS> <EOS> <UNK> <CONTEXT> <POPULATION> <FITNESS>
                     <TARGET> <INVALID>               (format_utils.SPECIAL_TOKENS)
    operators        every symbol of operators.OPERATORS (`+`, `sin`, ...)
    variables        x0 .. x{max_vars-1}
    context words    gen: vars: ops: ... inc dec no   (format_utils.CONTEXT_WORDS)
    constants        the printed form of each search constant, `1.0` by default
    characters       digits . e - + ( ) ; , | # _     (format_utils.NUMBER_CHARACTERS,
                                                        LAYOUT_CHARACTERS)

A regex pre-tokenizer cuts text into a whole constant (`1.0`, but not inside
`11.05`), else the longest known word (operator names, variables, context
words), else a single character; a WordLevel model maps each piece to its id
(`<UNK>` for anything unknown, spaces included), and the Fuse decoder
concatenates tokens, so decode(encode(text)) == text for all text
format_utils writes. Special tokens are matched before pre-tokenization.

Constant tokens exist because the search constants fill a large share of a
prompt (BasicSR's `1.0` was 16% of the tokens at three tokens each); any
other number is spelled with digits. A constant token is only a spelling:
the text, and so decode(encode(text)), is the same either way.

No token spans a `<...>` marker, so the ids of a prompt are a prefix of the
ids of prompt + target (loss masks can be cut at len(prompt ids)).

The tokenizer is saved with every dataset and checkpoint (`save_tokenizer`)
and reloaded with `load_tokenizer` (`PreTrainedTokenizerFast.from_pretrained`).

CLI: `python tokenizer.py --output DIR [--max_vars N] [--constants 1.0,2.0]`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import expressions as ex
import format_utils as fu
from operators import OPERATORS

DEFAULT_MAX_VARS = 10  # SPEC: synthetic expressions have d ~ U{1..10}
DEFAULT_CONSTANTS = (1.0,)  # BasicSR's default constants


def constant_tokens(constants) -> list[str]:
    """One token per search constant: its printed magnitude (`-2.5` is `-` then `2.5`, as binary minus is `-`)."""
    return list(dict.fromkeys(ex.format_constant(abs(float(c))) for c in constants))


def vocabulary(max_vars: int = DEFAULT_MAX_VARS, constants=DEFAULT_CONSTANTS) -> list[str]:
    """All tokens in id order, derived from the operator registry and format_utils."""
    if max_vars < 1:
        raise ValueError(f"max_vars must be >= 1, got {max_vars}")
    tokens = [
        *fu.SPECIAL_TOKENS,
        *OPERATORS,
        *(f"x{i}" for i in range(max_vars)),
        *fu.CONTEXT_WORDS,
        *constant_tokens(constants),
        *fu.NUMBER_CHARACTERS,
        *fu.LAYOUT_CHARACTERS,
    ]
    return list(dict.fromkeys(tokens))  # '-' is an operator and a number character


def _split_pattern(tokens: list[str], constants: list[str]) -> str:
    """A whole constant, else the longest multi-character token, else any one character."""
    # A constant only counts when no digit or '.' touches it: '1.0' in '(x0+1.0)', not in '11.05'.
    numbers = [rf"(?<![0-9.]){re.escape(c)}(?![0-9e])" for c in sorted(constants, key=len, reverse=True) if len(c) > 1]
    words = sorted(
        (t for t in tokens if len(t) > 1 and t not in fu.SPECIAL_TOKENS and t not in constants), key=len, reverse=True
    )
    return "|".join([*numbers, *map(re.escape, words), r"[\s\S]"])


def build_tokenizer(max_vars: int = DEFAULT_MAX_VARS, constants=DEFAULT_CONSTANTS) -> PreTrainedTokenizerFast:
    """The ttsr tokenizer for up to `max_vars` variables (x0..x{max_vars-1}) and the search `constants`."""
    tokens = vocabulary(max_vars, constants)
    pattern = _split_pattern(tokens, constant_tokens(constants))
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=fu.UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(fu.SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=fu.BOS,
        eos_token=fu.EOS,
        pad_token=fu.PAD,
        unk_token=fu.UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 16,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder) -> Path:
    """Write the tokenizer files into `folder` (created if needed), each file replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=folder))
    try:
        tokenizer.save_pretrained(staging)
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_tokenizer(folder) -> PreTrainedTokenizerFast:
    """Reload a tokenizer saved by `save_tokenizer` (or any dataset/checkpoint folder holding one)."""
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the ttsr tokenizer and save it to a folder.")
    parser.add_argument("--output", required=True, help="folder to write tokenizer.json and tokenizer_config.json into")
    parser.add_argument(
        "--max_vars", type=int, default=DEFAULT_MAX_VARS,
        help=f"number of variable tokens x0..x{{N-1}} (default {DEFAULT_MAX_VARS})",
    )
    parser.add_argument(
        "--constants", default=",".join(map(str, DEFAULT_CONSTANTS)),
        help="comma-separated search constants that get a token of their own (default %(default)s)",
    )
    args = parser.parse_args(argv)
    constants = tuple(float(c) for c in args.constants.split(",") if c.strip())
    tokenizer = build_tokenizer(args.max_vars, constants)
    folder = save_tokenizer(tokenizer, args.output)
    print(f"saved tokenizer: {len(tokenizer)} tokens, variables x0..x{args.max_vars - 1}, "
          f"constants {','.join(constant_tokens(constants))}, to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
