"""CAME against the authors' ``came_pytorch.CAME`` (0.1.3), float64, 200 steps, two param groups
(different lr, weight decay in one, a tighter clip in the other), rtol 1e-9 on parameters and state,
plus 4-D kernels (RVC's period discriminator) and the equations of one step written out.

Measured largest relative difference over the 200 steps, parameters and state: 5.1e-11 with betas
(0.8, 0.99, 0.999), 5.6e-11 with the defaults (elements near zero; 1.2e-10 and 4.3e-11 before the
weight-norm magnitudes [8, 1, 1] stepped by g / sqrt(R), their exact factorisation). Rounding only: ours
folds the clip into one multiply and lerps the moving averages where the reference multiplies and adds.
"""

from __future__ import annotations

import pytest
import torch

from rvc_optim.optim.came import CAME
from tests.optim.kernel_parity import compare_on_shapes
from tests.optim.parity import run_parity

from came_pytorch import CAME as Reference  # noqa: E402  (a test dependency: missing is a failure)

STATE_KEYS = {
    "step": "step",
    "exp_avg": "exp_avg",
    "exp_avg_sq_row": "exp_avg_sq_row",
    "exp_avg_sq_col": "exp_avg_sq_col",
    "exp_avg_res_row": "exp_avg_res_row",
    "exp_avg_res_col": "exp_avg_res_col",
    "exp_avg_sq": "exp_avg_sq",
}
BETAS = (0.8, 0.99, 0.999)  # not the defaults, so a swapped beta would show
GROUPS = [{"lr": 2e-3, "weight_decay": 0.05}, {"lr": 5e-4, "weight_decay": 0.0, "clip_threshold": 0.5}]
# A kernel whose last dimension is 1 (a weight-norm magnitude [O, 1, 1], a Conv2d kernel [O, I, k, 1])
# keeps no column averages: they are the means of its row averages over their last dimension, which is
# what the reference's column averages are compared with.
COLUMN_STATE = {
    "exp_avg_sq_col": lambda st: st["exp_avg_sq_row"].mean(-1, keepdim=True),
    "exp_avg_res_col": lambda st: st["exp_avg_res_row"].mean(-1, keepdim=True),
}


@pytest.mark.parametrize("betas", [BETAS, (0.9, 0.999, 0.9999)], ids=["betas", "default-betas"])
def test_parity_with_came_pytorch(betas):
    ours, _, model, _ = run_parity(
        lambda groups: CAME(groups, betas=betas),
        lambda groups: Reference(groups, lr=1e-3, betas=betas),  # its lr=None default raises
        GROUPS,
        STATE_KEYS,
        derived_state=COLUMN_STATE,
    )
    kernel = model.wn_conv.parametrizations.weight.original1  # [8, 8, 3]: in == out
    assert ours.state[kernel]["exp_avg_res_row"].shape == (8, 8)
    assert ours.state[kernel]["exp_avg_res_col"].shape == (8, 3)


def test_4d_kernels_match_came_pytorch():
    params, opt = compare_on_shapes(lambda g: CAME(g, betas=BETAS), lambda g: Reference(g, lr=1e-3, betas=BETAS),
                                    [(6, 6, 3, 3), (5, 4, 3, 2), (4, 4, 5, 1), (9,)], 2,
                                    [{"lr": 1e-2, "weight_decay": 0.05}, {"lr": 3e-3}], list(STATE_KEYS),
                                    derived_state=COLUMN_STATE)
    column = opt.state[params[2]]  # [4, 4, 5, 1]: the confidence step still runs, on R' alone
    assert column["exp_avg_res_row"].shape == (4, 4, 5) and "exp_avg_res_col" not in column


def test_one_step_equations():
    """From zero state with betas 0: R, C are the means of g^2 + eps1, U = g / sqrt(V) (clip off),
    m = U, the residual is eps2 alone, so the step is m / sqrt(eps2 (x) ...) = m / sqrt(eps2)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 4, 3, dtype=torch.float64))
    g = torch.randn(4, 4, 3, dtype=torch.float64)
    start = p.detach().clone()
    p.grad = g.clone()
    opt = CAME([p], lr=0.1, betas=(0.0, 0.0, 0.0), clip_threshold=1e9, eps=(1e-30, 1e-4))
    opt.step()
    u = g**2 + 1e-30
    r, c = u.mean(-1), u.mean(-2)
    update = g / ((r / r.mean(-1, keepdim=True)).unsqueeze(-1) * c.unsqueeze(-2)).sqrt()
    torch.testing.assert_close(opt.state[p]["exp_avg"], update, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.detach(), start - 0.1 * update / 1e-2, rtol=1e-12, atol=0)


def test_three_betas_required_and_defaults():
    p = [torch.nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="betas"):
        CAME(p, betas=(0.8, 0.99))
    with pytest.raises(ValueError, match="eps"):
        CAME(p, eps=1e-9)
    d = CAME(p).defaults
    assert d == dict(lr=2e-4, eps=(1e-30, 1e-16), clip_threshold=1.0, betas=(0.9, 0.999, 0.9999), weight_decay=0.0)


def test_parity_in_small_cpu_batches(monkeypatch):
    """On a CPU the update runs over batches of whole tensors (cache-sized): with batches of a few
    tensors, the lists are cut in many places, and every cut must keep each tensor with its state."""
    monkeypatch.setattr("rvc_optim.optim._compile.BLOCK_NUMEL", 10)
    run_parity(lambda g: CAME(g, betas=BETAS), lambda g: Reference(g, lr=1e-3, betas=BETAS), GROUPS, STATE_KEYS,
               steps=50, derived_state=COLUMN_STATE)
