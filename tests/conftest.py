"""Test-wide settings: the eager path everywhere except the compiled-path tests, which ask for it."""

from __future__ import annotations

import os

os.environ["RVC_OPTIM_COMPILE"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests use tiny tensors and run two pytest workers on two cores: one thread each avoids
# oversubscription (spinning OpenMP threads made tiny steps 100x slower under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield
