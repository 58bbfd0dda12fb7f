import os
import sys

# Make the repo root importable so tests can `import basic_sr` etc.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


import pytest


def pytest_addoption(parser, pluginmanager):
    """pytest.ini's `timeout` belongs to pytest-timeout; where that is not installed (the GPU machine's python),
    the key is declared here so that pytest does not warn about an unknown option (no time limit applies)."""
    if not pluginmanager.has_plugin("timeout"):
        parser.addini("timeout", "per-test time limit in seconds (used by pytest-timeout, not installed here)")


@pytest.fixture(scope="module")
def torch_one_thread():
    """Torch on one thread for a test module (tiny models on a shared 2-core
    machine: one thread is several times faster than two fighting)."""
    import torch  # only the modules that ask for it pay for the import

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def transformers_bars_on():
    """transformers' progress bars switched on for a test (an earlier test may have left them off), then put
    back as they were; the test checks a script silences them for its run only."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield hf_logging
    if not enabled:
        hf_logging.disable_progress_bar()


@pytest.fixture(scope="module")
def tokenizer():
    """The ttsr tokenizer, built once per module."""
    from tokenizer import build_tokenizer

    return build_tokenizer()


# --------------------------------------------------------------------------
# Tiny random-weight checkpoints (NeuralSR tests)

TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "attention_types": [[["global", "local"], 1]],
              "window_size": 64, "intermediate_size": 64, "embed_dropout": 0.0, "resid_dropout": 0.0,
              "attention_dropout": 0.0, "initializer_range": 0.1}  # peaked logits: greedy choices are not near-ties


def save_tiny_checkpoint(folder, mode="onestep", point_prefix=False, context_type="basic", max_target_tokens=16,
                         parentheses="full"):
    """A random-weight GPT-Neo (or PrefixLM) checkpoint written the way train.py writes one."""
    import train

    return train.save_random_checkpoint(folder, TINY_MODEL, mode, point_prefix, context_type, max_target_tokens,
                                        parentheses)


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tmp_path_factory):
    """make(mode="onestep", point_prefix=False, context_type="basic", max_target_tokens=16, parentheses="full")
    -> checkpoint folder."""
    made = {}

    def make(mode="onestep", point_prefix=False, context_type="basic", max_target_tokens=16, parentheses="full"):
        key = (mode, point_prefix, context_type, max_target_tokens, parentheses)
        if key not in made:
            made[key] = save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "final", *key)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_factory):
    """A random-weight tiny one-step GPT-Neo checkpoint (basic context) in a temporary folder; its Path."""
    return tiny_checkpoint_factory()
