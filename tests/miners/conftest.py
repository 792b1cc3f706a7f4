"""Miner tests run on tiny tensors: one intra-op thread is faster than two fighting over a
shared 2-core machine. Restored afterwards so other test directories keep torch's default."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
