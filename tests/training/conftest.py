import importlib.util
import sys
from pathlib import Path

import pytest

TOY = Path(__file__).with_name("toy_train.py")


@pytest.fixture(scope="session")
def toy():
    """The toy training module (importable despite --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location("clara_toy_train", TOY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Bitwise-reproducible CPU math for the duration of a test."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
