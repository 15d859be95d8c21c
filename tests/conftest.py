"""Shared setup: the machine's cores shared out among the test workers (pytest-xdist runs one per
core: each gets one torch thread; a run without xdist keeps two, the lab's CI machine's cores), and
a fixed seed per test."""

import os

import pytest
import torch

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, (os.cpu_count() or 2) // WORKERS) if WORKERS > 1 else 2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def local_ray():
    """Ray on this machine, started by the first study of a test worker that asks for it and shared by
    the later ones (a study finds it running and leaves it): each would otherwise pay Ray's start,
    its workers' start and its shutdown (about 10 s). Ray stops when the worker exits."""
    from lab.study.cluster import start_ray

    start_ray()
