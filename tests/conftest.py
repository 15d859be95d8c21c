"""Shared setup: two CPU threads (the lab's CI machine has two cores) and a fixed seed per test."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
