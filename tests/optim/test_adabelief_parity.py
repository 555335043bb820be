"""AdaBelief and AdaBeliefV2 against the authors' adabelief-pytorch 0.2.1 ``AdaBelief``.

Every switch of the reference is covered: rectification on and off (betas (0.8, 0.99) put the first
rectified step at t = 6, so both branches run), degenerated_to_sgd off (no step below the threshold),
AMSGrad with and without rectification (inert with it), decoupled, fixed and L2 decay, and eps 1e-16
and 1e-8. The two groups share their betas: the reference caches its rectification terms in one buffer
shared by the groups, which is only right while their beta2 agree.

Ours performs the reference's operations in its order, so every case agrees bit for bit (measured:
max difference 0 for parameters and states after 200 steps); the test holds the project's rtol 1e-9.
A lerp for the averages instead, one rounding apart, grows to 3e-8 relative on a weight near zero in the
L2 unrectified case (measured): the test does catch a rounding change there.
"""

from __future__ import annotations

import pytest
import torch
from adabelief_pytorch import AdaBelief as ReferenceAdaBelief

from rvc_optim.optim.adabelief import AdaBelief, AdaBeliefV2
from tests.optim.parity import run_parity

GROUPS = [{"lr": 1e-2, "weight_decay": 0.05}, {"lr": 3e-3, "weight_decay": 0.0}]
BETAS = (0.8, 0.99)
STATE_KEYS = {"exp_avg": "exp_avg", "exp_avg_var": "exp_avg_var", "max_exp_avg_var": "max_exp_avg_var", "step": "step"}

SWITCHES = {
    "defaults": {},
    "unrectified": {"rectify": False},
    "unrectified-amsgrad": {"rectify": False, "amsgrad": True},
    "rectified-amsgrad": {"amsgrad": True},
    "no-sgd-below-threshold": {"degenerated_to_sgd": False},
    "l2": {"weight_decouple": False},
    "l2-unrectified": {"weight_decouple": False, "rectify": False},
    "fixed-decay": {"fixed_decay": True},
    "eps-1e-8": {"eps": 1e-8, "rectify": False},
}


def _reference(groups, **switches):
    return ReferenceAdaBelief(groups, betas=BETAS, print_change_log=False, **switches)


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_parity_with_adabelief_pytorch(switches):
    run_parity(
        lambda groups: AdaBelief(groups, betas=BETAS, compiled=False, **switches),
        lambda groups: _reference(groups, **switches),
        GROUPS,
        STATE_KEYS,
    )


def test_v2_is_the_reference_with_amsgrad_and_no_rectification():
    run_parity(
        lambda groups: AdaBeliefV2(groups, betas=BETAS, compiled=False),
        lambda groups: _reference(groups, amsgrad=True, rectify=False),
        GROUPS,
        STATE_KEYS,
    )


def test_v2_defaults_differ_from_adabelief_only_in_amsgrad_and_rectify():
    p = [torch.nn.Parameter(torch.zeros(1))]
    v1, v2 = AdaBelief(p).defaults, AdaBeliefV2(p).defaults
    assert {k for k in v1 if v1[k] != v2[k]} == {"amsgrad", "rectify"}
    assert (v2["amsgrad"], v2["rectify"]) == (True, False)
    assert v1 == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, amsgrad=False,
                      weight_decouple=True, fixed_decay=False, rectify=True, degenerated_to_sgd=True)


def test_rectified_amsgrad_tracks_the_maximum_but_does_not_use_it():
    """The reference's quirk, kept: with rectification on, the update ignores the maximum."""
    results = []
    for amsgrad in (False, True):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
        opt = AdaBelief([p], lr=1e-2, betas=BETAS, amsgrad=amsgrad, compiled=False)
        for i in range(12):
            p.grad = torch.randn(6, dtype=torch.float64) * (3.0 if i < 4 else 0.1)  # the variance falls
            opt.step()
        results.append(p.detach().clone())
        if amsgrad:
            assert (opt.state[p]["max_exp_avg_var"] > opt.state[p]["exp_avg_var"]).all()
    assert torch.equal(*results)


def test_first_rectified_step_and_sgd_steps_before_it():
    """For beta2 0.99 steps 1-5 are lr / bc1 * m (momentum SGD), step 6 is the first adaptive one."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = AdaBelief([p], lr=0.1, betas=BETAS, compiled=False)
    m = torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for t in range(1, 6):
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        m = 0.8 * m + 0.2 * g
        torch.testing.assert_close(p.detach() - before, -0.1 / (1 - 0.8**t) * m, rtol=1e-12, atol=0)
    before = p.detach().clone()
    p.grad = g.clone()
    opt.step()
    m = 0.8 * m + 0.2 * g
    sgd_step = 0.1 / (1 - 0.8**6) * m
    assert not torch.allclose(p.detach() - before, -sgd_step)  # the adaptive update has taken over


def test_eps_accumulates_in_the_variance():
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = AdaBelief([p], eps=1e-3, compiled=False)
    for _ in range(3):
        p.grad = torch.zeros(2, dtype=torch.float64)
        opt.step()
    torch.testing.assert_close(opt.state[p]["exp_avg_var"], torch.full((2,), 1e-3 * (1 + 0.999 + 0.999**2),
                                                                       dtype=torch.float64))


@pytest.mark.parametrize("switches", [{}, {"rectify": False, "amsgrad": True}], ids=["rectified", "amsgrad"])
def test_parameters_with_their_own_step_counts(switches):
    """A parameter that misses steps (no gradient) keeps its own count, as in the reference: the group's
    parameters are then stepped in two buckets with different bias corrections and rectification."""
    torch.manual_seed(0)
    starts = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    sides = []
    for make in (lambda ps: AdaBelief(ps, lr=1e-2, betas=BETAS, compiled=False, **switches),
                 lambda ps: _reference(ps, lr=1e-2, **switches)):
        params = [torch.nn.Parameter(s.clone()) for s in starts]
        sides.append((params, make(params)))
    gen = torch.Generator().manual_seed(1)
    for step in range(20):
        grads = [torch.randn(s.shape, generator=gen, dtype=torch.float64) for s in starts]
        for params, opt in sides:
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = g.clone() if i == 0 or step % 3 == 0 else None
            opt.step()
    (ours, opt), (ref, ref_opt) = sides
    assert opt.state[ours[0]]["step"] == 20 and opt.state[ours[1]]["step"] == 7
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=0)
