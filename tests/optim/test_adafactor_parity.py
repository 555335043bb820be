"""AdaFactor against ``transformers.optimization.Adafactor`` (the fairseq algorithm, the most used
PyTorch Adafactor), float64, 200 steps, two param groups, rtol 1e-9 on parameters and state.

Every combination of the switches the paper and the reference have is covered: relative step on (with
and without warm-up init) and off, parameter scaling on and off, first moment on and off, weight decay
in one group. The parity model has a 3-D conv kernel with in == out (the weight-normed [8, 8, 3]
direction), where torch-optimizer's port silently goes wrong; a separate test runs 4-D kernels.
Measured largest relative difference over the 200 steps, parameters and state: 2.5e-12 (defaults),
4.5e-12 (relative step with warm-up init, unscaled, beta1), 3.9e-12 (external lr, scaled), 1.5e-11
(external lr, unscaled, beta1), each on an element near zero. Rounding only: ours folds the clip and
alpha into one multiply and lerps the moving averages where the reference multiplies and adds.
"""

from __future__ import annotations

import pytest
import torch

from rvc_optim.optim.adafactor import AdaFactor
from tests.optim.kernel_parity import compare_on_shapes
from tests.optim.parity import run_parity

from transformers.optimization import Adafactor as Reference  # noqa: E402  (a test dependency)

STATE_KEYS = {
    "step": "step",
    "exp_avg": "exp_avg",
    "exp_avg_sq_row": "exp_avg_sq_row",
    "exp_avg_sq_col": "exp_avg_sq_col",
    "exp_avg_sq": "exp_avg_sq",
}
# A kernel whose last dimension is 1 (a weight-norm magnitude [O, 1, 1], a Conv2d kernel [O, I, k, 1])
# keeps no column averages: they are the means of its row averages over their last dimension, which is
# what the reference's column averages are compared with.
COLUMN_STATE = {
    "exp_avg_sq_col": lambda st: st["exp_avg_sq_row"].mean(-1, keepdim=True),
}

CONFIGS = {
    # relative_step, warmup_init, scale_parameter, beta1
    "defaults": dict(relative_step=True, warmup_init=False, scale_parameter=True, beta1=None),
    "relative-warmup-unscaled-beta1": dict(relative_step=True, warmup_init=True, scale_parameter=False, beta1=0.9),
    "external-lr-scaled": dict(relative_step=False, warmup_init=False, scale_parameter=True, beta1=None),
    "external-lr-unscaled-beta1": dict(relative_step=False, warmup_init=False, scale_parameter=False, beta1=0.8),
}


def _groups(relative_step: bool) -> list[dict]:
    if relative_step:  # the step size is computed: the groups differ in decay and clipping
        return [{"weight_decay": 0.1, "clip_threshold": 1.0}, {"weight_decay": 0.0, "clip_threshold": 0.5}]
    return [{"lr": 2e-3, "weight_decay": 0.1}, {"lr": 5e-4, "weight_decay": 0.0}]


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_parity_with_transformers(config):
    kwargs = CONFIGS[config]
    ours, ref, model, _ = run_parity(
        lambda groups: AdaFactor(groups, **kwargs),
        lambda groups: Reference(groups, **kwargs),
        _groups(kwargs["relative_step"]),
        STATE_KEYS,
        derived_state=COLUMN_STATE,
    )
    kernel = model.wn_conv.parametrizations.weight.original1
    assert kernel.shape == (8, 8, 3)  # in == out: the case torch-optimizer gets wrong
    assert ours.state[kernel]["exp_avg_sq_row"].shape == (8, 8)
    assert ours.state[kernel]["exp_avg_sq_col"].shape == (8, 3)
    assert ("exp_avg" in ours.state[kernel]) == (kwargs["beta1"] is not None)


SHAPES_4D = [(6, 6, 3, 3), (5, 4, 3, 2), (4, 4, 5, 1), (7, 3), (9,)]


def test_4d_conv_kernels_match_transformers():
    """Conv2d-shaped kernels (RVC's period discriminator), with in == out and an [O, I, k, 1] kernel."""
    kw = dict(relative_step=False, scale_parameter=True, beta1=0.8)
    params, opt = compare_on_shapes(lambda g: AdaFactor(g, **kw), lambda g: Reference(g, **kw), SHAPES_4D, 3,
                                    [{"lr": 1e-2, "weight_decay": 0.05}, {"lr": 3e-3}], list(STATE_KEYS),
                                    derived_state=COLUMN_STATE)
    assert opt.state[params[0]]["exp_avg_sq_row"].shape == (6, 6, 3)
    assert opt.state[params[0]]["exp_avg_sq_col"].shape == (6, 6, 3)
    column = opt.state[params[2]]  # [4, 4, 5, 1]: the reference's R and C, with C = mean_last(R)
    assert column["exp_avg_sq_row"].shape == (4, 4, 5) and "exp_avg_sq_col" not in column


def test_factored_state_is_the_outer_product_of_the_last_two_dims():
    """One step from zero state: b2 = 0, so R and C are exactly the means of g^2 + eps1 and the update
    direction is g / sqrt((R / mean_last(R)) (x) C), written out here for an [out, in, k] kernel."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 4, 3, dtype=torch.float64))
    g = torch.randn(4, 4, 3, dtype=torch.float64)
    start = p.detach().clone()
    p.grad = g.clone()
    opt = AdaFactor([p], lr=0.1, relative_step=False, scale_parameter=False, clip_threshold=1e9)
    opt.step()
    u = g**2 + 1e-30
    r, c = u.mean(-1), u.mean(-2)
    v = (r / r.mean(-1, keepdim=True)).unsqueeze(-1) * c.unsqueeze(-2)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq_row"], r, rtol=1e-12, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq_col"], c, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.detach(), start - 0.1 * g / v.sqrt(), rtol=1e-12, atol=0)


def test_a_column_kernel_steps_by_its_row_means_alone():
    """An [O, I, k, 1] kernel: the paper's V = (R / mean_last(R)) (x) C over the last two dims, written
    out from zero state over three steps, equals R itself (C and mean_last(R) follow the same recursion),
    and the kernel keeps R alone."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3, 5, 1, dtype=torch.float64))
    opt = AdaFactor([p], lr=0.1, relative_step=False, scale_parameter=False, clip_threshold=1e9)
    r = torch.zeros(4, 3, 5, dtype=torch.float64)
    c = torch.zeros(4, 3, 1, dtype=torch.float64)
    expected = p.detach().clone()
    for t in range(1, 4):
        g = torch.randn(4, 3, 5, 1, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        w, u = t**-0.8, g**2 + 1e-30
        r, c = (1 - w) * r + w * u.mean(-1), (1 - w) * c + w * u.mean(-2)
        v = (r / r.mean(-1, keepdim=True)).unsqueeze(-1) * c.unsqueeze(-2)
        expected -= 0.1 * g / v.sqrt()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq_row"], r, rtol=1e-12, atol=0)
    assert set(opt.state[p]) == {"step", "exp_avg_sq_row"}


def test_the_direction_is_written_over_the_spent_squares():
    """No new tensor the size of a kernel per step for g / sqrt(V) (page faults on a CPU): each result
    is the storage of the squares it was computed from, for matrices and columns alike."""
    from rvc_optim.optim.adafactor import factored_second_moment_

    grads = [torch.randn(6, 4, 3), torch.randn(5, 2, 3, 1)]
    squares = [g * g for g in grads]
    rows = [torch.zeros(6, 4), torch.zeros(5, 2, 3)]
    out = factored_second_moment_(grads, squares, rows, [torch.zeros(6, 3)], 1.0)
    assert [o.data_ptr() for o in out] == [s.data_ptr() for s in squares]
    torch.testing.assert_close(out[1], grads[1] / grads[1].abs())  # w = 1: V = g^2, so U = sign(g)


def test_torch_optimizer_port_is_wrong_when_in_equals_out():
    """The trap REFERENCES.md names: torch_optimizer's Adafactor normalises R without keepdim, which on
    an [O, O, k] kernel broadcasts along the wrong axis and runs without an error. Ours agrees with
    transformers there (above); this records that the port does not, so it cannot serve as a reference."""
    import torch_optimizer

    kw = dict(lr=1e-2, relative_step=False, scale_parameter=False, beta1=None)

    def run(make):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(6, 6, 3, dtype=torch.float64))
        opt = make([p])
        for _ in range(5):
            p.grad = torch.randn(6, 6, 3, dtype=torch.float64)
            opt.step()
        return p.detach()

    ours = run(lambda ps: AdaFactor(ps, **kw))
    assert torch.allclose(ours, run(lambda ps: Reference(ps, **kw)), rtol=1e-9, atol=0)
    assert not torch.allclose(ours, run(lambda ps: torch_optimizer.Adafactor(ps, **kw)), rtol=1e-6, atol=0)


def test_arguments_are_checked_like_the_reference():
    p = [torch.nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="lr"):
        AdaFactor(p, lr=1e-3)  # relative_step=True by default
    with pytest.raises(ValueError, match="lr"):
        AdaFactor(p, relative_step=False)
    with pytest.raises(ValueError, match="warmup_init"):
        AdaFactor(p, lr=1e-3, relative_step=False, warmup_init=True)
    with pytest.raises(ValueError, match="eps"):
        AdaFactor(p, eps=1e-30)


def test_defaults_are_the_references():
    d = AdaFactor([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert d == dict(lr=None, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0,
                     scale_parameter=True, relative_step=True, warmup_init=False)


def test_parity_in_small_cpu_batches(monkeypatch):
    """On a CPU the update runs over batches of whole tensors (cache-sized): with batches of a few
    tensors, the lists are cut in many places, and every cut must keep each tensor with its state."""
    monkeypatch.setattr("rvc_optim.optim._compile.BLOCK_NUMEL", 10)
    run_parity(lambda g: AdaFactor(g, **CONFIGS["external-lr-unscaled-beta1"]),
               lambda g: Reference(g, **CONFIGS["external-lr-unscaled-beta1"]), _groups(False), STATE_KEYS, steps=50,
               derived_state=COLUMN_STATE)
