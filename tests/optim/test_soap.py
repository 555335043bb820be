"""SOAP beyond parity: the shapes the preconditioner sees, when the bases change, host syncs on refresh
steps, half-precision state, and the state_dict round trip with its placeholders."""

from __future__ import annotations

import copy

import pytest
import torch

from rvc_optim.optim.soap import SOAP, merged_shape
from tests.host_syncs import count_host_syncs


@pytest.mark.parametrize("shape, limit, merged", [
    ((4, 3, 3, 3), 10000, (108,)),  # a whole small kernel becomes one vector: one 108 x 108 factor
    ((6, 4), 10000, (24,)),
    ((512, 256, 16), 10000, (512, 4096)),
    ((1024, 1024, 5, 1), 10000, (1024, 5120)),
    ((8, 1, 1), 10000, (8,)),
    ((6144, 256, 1), 2048, (6144, 256)),
    ((), 10000, (1,)),
])
def test_merged_shape(shape, limit, merged):
    assert merged_shape(shape, limit) == merged


def _factor_sizes(optimizer, p):
    return [tuple(g.shape) if len(g) else None for g in optimizer.state[p]["GG"]]


def test_factors_per_dimension_and_skipped_dimensions():
    kernel, bias, wide = torch.zeros(6, 4, 3, 1), torch.zeros(6), torch.zeros(3, 20)
    params = [torch.nn.Parameter(t) for t in (kernel, bias, wide)]
    opt = SOAP(params, max_precond_dim=8)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert _factor_sizes(opt, params[0]) == [(6, 6), (4, 4), (3, 3), (1, 1)]  # conv dims as they are
    assert _factor_sizes(opt, params[1]) == [None]  # 1-D: plain Adam unless precondition_1d
    assert _factor_sizes(opt, params[2]) == [(3, 3), None]  # 20 > max_precond_dim: left diagonal
    assert all(torch.equal(p, torch.zeros_like(p)) for p in params)  # the first call moves nothing


def test_bases_change_on_refresh_steps_only():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 4))
    opt = SOAP([p], precondition_frequency=3)
    changed = []
    for _ in range(10):
        p.grad = torch.randn_like(p)
        before = [q.clone() for q in opt.state[p]["Q"]] if "Q" in opt.state[p] else None
        opt.step()
        if before is not None:
            changed.append(any(not torch.equal(a, b) for a, b in zip(before, opt.state[p]["Q"])))
    steps = list(range(1, 10))  # the state's step count after each later call
    assert changed == [t % 3 == 0 for t in steps]


def test_host_syncs_none_on_refresh_steps_either():
    """Every step counted on fake CUDA, refreshes every second step included: the refreshes (power
    iteration and QR) read nothing back; the first step's eigendecompositions make exactly one read
    each, eigh's convergence check, which the record names."""
    for settings in (dict(precondition_frequency=2), dict(precondition_frequency=2, merge_dims=True,
                                                          precondition_1d=True, normalize_grads=True)):
        syncs = count_host_syncs(lambda ps: SOAP(ps, **settings).step, 7)
        assert syncs.later == [0] * 6, syncs.later_events
        assert syncs.first > 0 and syncs.first_events == ["read (error check) aten._linalg_eigh.default"] * syncs.first


def test_half_precision_state_is_float32_and_survives_a_state_dict():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 4, 3, dtype=torch.bfloat16))
    opt = SOAP([p], lr=1e-2, precondition_frequency=2)
    for _ in range(4):
        p.grad = torch.randn_like(p)
        opt.step()
    state = opt.state[p]
    tensors = [state["exp_avg"], state["exp_avg_sq"], *state["GG"], *state["Q"]]
    assert all(t.dtype == torch.float32 for t in tensors)
    again = SOAP([p], lr=1e-2, precondition_frequency=2)
    again.load_state_dict(opt.state_dict())
    loaded = again.state[p]
    assert all(t.dtype == torch.float32 for t in [loaded["exp_avg"], *loaded["GG"], *loaded["Q"]])
    p.grad = torch.randn_like(p)
    again.step()
    assert torch.isfinite(p).all()


def test_state_dict_round_trip_keeps_placeholders_and_resumes_exactly():
    torch.manual_seed(0)
    shapes = [(6, 4, 3), (7,), (3, 20)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = SOAP(params, precondition_frequency=2, max_precond_dim=8)
    grads = [[torch.randn(s) for s in shapes] for _ in range(6)]
    for step_grads in grads[:3]:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    resumed = SOAP(copies, precondition_frequency=2, max_precond_dim=8)
    for q, p in zip(copies, params):
        q.data.copy_(p.data)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no tensor shared
    assert resumed.state[copies[1]]["GG"] == [[]] and resumed.state[copies[2]]["Q"][1] == []
    for step_grads in grads[3:]:
        for p, q, g in zip(params, copies, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
    assert all(torch.equal(p, q) for p, q in zip(params, copies))


def test_invalid_arguments_are_named():
    p = [torch.nn.Parameter(torch.zeros(2, 2))]
    for kwargs, name in [({"precondition_frequency": 0}, "precondition_frequency"),
                         ({"max_precond_dim": -1}, "max_precond_dim"), ({"data_format": "nchw"}, "data_format"),
                         ({"shampoo_beta": 1.0}, "shampoo_beta"), ({"betas": (0.9, 1.0)}, "beta")]:
        with pytest.raises(ValueError, match=name):
            SOAP(p, **kwargs)
