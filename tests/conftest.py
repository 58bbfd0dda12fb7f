import os
import sys

# Make the repo root importable so tests can `import basic_sr` etc.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


import pytest


@pytest.fixture(scope="module")
def torch_one_thread():
    """Torch on one thread for a test module (tiny models on a shared 2-core
    machine: one thread is several times faster than two fighting)."""
    import torch  # only the modules that ask for it pay for the import

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    """The ttsr tokenizer, built once per module."""
    from tokenizer import build_tokenizer

    return build_tokenizer()
