"""Fixtures shared by the training-engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rvc_optim.train.config import get_config
from rvc_optim.train.demo_data import make_demo_experiment


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """4 items of 1.5 s: with batch 1, 4 batches per epoch; all items the same length."""
    root = tmp_path_factory.mktemp("exp") / "demo"
    make_demo_experiment(root, get_config("tiny"), n_items=4, seconds=1.5, seed=0)
    return root
