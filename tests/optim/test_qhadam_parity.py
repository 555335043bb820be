"""QHAdam against the authors' qhoptim 1.1.0 ``QHAdam`` (and torch-optimizer's, the same code).

Covers nus (1, 1) (Adam), the paper's (0.7, 1.0), both below 1, and (0, 0); L2 and decoupled decay
(QHAdamW); eps 0. Ours performs the reference's operations in its order: measured over 200 steps, 0
difference in parameters and states, held at the project's rtol 1e-9. (pytorch_optimizer's ``QHAdam`` is
left out: it keeps the weights as float32 tensors even for float64 parameters, 3.5e-10 apart in 50
steps.)
"""

from __future__ import annotations

import pytest
import torch
import torch_optimizer
from qhoptim.pyt import QHAdam as ReferenceQHAdam

from rvc_optim.optim.qhadam import QHAdam
from tests.optim.parity import run_parity

GROUPS = [{"lr": 1e-2, "weight_decay": 0.05}, {"lr": 3e-3, "weight_decay": 0.0}]
BETAS = (0.9, 0.99)
STATE_KEYS = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "beta1_weight": "beta1_weight",
              "beta2_weight": "beta2_weight"}

SETTINGS = {
    "adam": {},
    "paper-nus": {"nus": (0.7, 1.0)},
    "both-nus": {"nus": (0.7, 0.9)},
    "zero-nus": {"nus": (0.0, 0.0)},
    "decoupled": {"nus": (0.7, 0.9), "decouple_weight_decay": True},
    "no-eps": {"nus": (0.8, 1.0), "eps": 0.0},
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_parity_with_qhoptim(settings):
    run_parity(
        lambda groups: QHAdam(groups, betas=BETAS, compiled=False, **settings),
        lambda groups: ReferenceQHAdam(groups, betas=BETAS, **settings),
        GROUPS,
        STATE_KEYS,
    )


def test_parity_with_torch_optimizer_paper_settings():
    settings = {"nus": (0.7, 1.0), "betas": (0.995, 0.999), "decouple_weight_decay": True}
    run_parity(
        lambda groups: QHAdam(groups, compiled=False, **settings),
        lambda groups: torch_optimizer.QHAdam(groups, **settings),
        GROUPS,
        STATE_KEYS,
    )


def test_unit_nus_are_adam():
    """nus (1, 1) is Adam with the bias correction inside the square root: torch's Adam to rounding."""
    torch.manual_seed(0)
    start = torch.randn(7, dtype=torch.float64)
    params = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    ours = QHAdam([params[0]], lr=1e-2, betas=BETAS, eps=0.0, compiled=False)
    adam = torch.optim.Adam([params[1]], lr=1e-2, betas=BETAS, eps=0.0)
    for _ in range(30):
        g = torch.randn(7, dtype=torch.float64)
        for p, opt in zip(params, (ours, adam)):
            p.grad = g.clone()
            opt.step()
    torch.testing.assert_close(params[0], params[1], rtol=1e-12, atol=0)


def test_from_nadam_matches_qhoptim():
    assert QHAdam.from_nadam(2e-3, (0.95, 0.98)) == ReferenceQHAdam.from_nadam(2e-3, (0.95, 0.98)) | {"betas": (0.95, 0.98)}


def test_nus_outside_zero_one_are_rejected():
    with pytest.raises(ValueError, match="nus"):
        QHAdam([torch.nn.Parameter(torch.zeros(1))], nus=(1.2, 1.0))
