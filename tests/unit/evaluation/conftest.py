import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tests use tiny tensors: intra-op threads only add synchronisation (badly so on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
