"""Test-wide settings: the eager path everywhere except the compiled-path tests, which ask for it."""

from __future__ import annotations

import os

os.environ["RVC_OPTIM_COMPILE"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield
