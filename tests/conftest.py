"""Shared test settings.

Tests run with one torch thread: on a 2-core machine whose cores are busy (CI, a developer's build,
two pytest workers), two threads make the small-tensor loops these tests run (exact-score ODE steps,
per-point QR, LID on a few points) many times slower than one. A test that needs more threads sets
them itself.
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
