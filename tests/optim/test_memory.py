"""Sublinear second-moment state on RVC v2's 40k generator (560 tensors, 36,458,818 parameters, the real
shapes in float32): AdaFactor, CAME and SM3 each take one step at their recommended settings, and the
bytes of their second-moment statistics are compared with one full float32 tensor of the same size
(145.8 MB; Adam keeps one such tensor as exp_avg_sq).

Measured (one step, the generator's shapes):

=========  ===========================================  ==========  ==================
optimizer  second-moment state                          bytes       of one full tensor
=========  ===========================================  ==========  ==================
AdaFactor  exp_avg_sq_row/col (+ exp_avg_sq for 1-D)     48.6 MB     0.333
CAME       exp_avg_sq_row/col (+ exp_avg_sq for 1-D)     48.6 MB     0.333
CAME       exp_avg_res_row/col (the confidence residual) 48.4 MB     0.332
SM3        accumulator_i                                 0.78 MB     0.0053
=========  ===========================================  ==========  ==================

Factoring the last two dimensions of an [out, in, k] kernel (the reference's choice, kept for parity)
keeps out * in numbers for the rows, so 1x1 convolutions (k = 1, 17% of the generator) save nothing; the
k = 3..16 kernels save a factor k. SM3's cover sets (one slice per index of each dimension) keep
out + in + k numbers per kernel.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from rvc_optim import create_optimizer
from rvc_optim.benchmark import load_shapes

SECOND_MOMENT = {
    "AdaFactor": {"second moment": ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")},
    "CAME": {"second moment": ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"),
             "residual": ("exp_avg_res_row", "exp_avg_res_col")},
    "SM3": {"accumulators": ("accumulator_0", "accumulator_1", "accumulator_2")},
}
# The largest fraction of one full tensor each may keep (measured values in the module docstring).
BOUND = {"second moment": 0.34, "residual": 0.34, "accumulators": 0.01}


@pytest.fixture(scope="module")
def generator_params():
    gen = torch.Generator().manual_seed(0)
    params = []
    for _, shape in load_shapes("generator_v2_40k"):
        p = torch.nn.Parameter(torch.empty(shape).normal_(0.0, 0.02, generator=gen))
        p.grad = torch.empty(shape).normal_(0.0, 1e-3, generator=gen)
        params.append(p)
    return params


@pytest.mark.parametrize("name", list(SECOND_MOMENT))
def test_second_moment_state_is_sublinear_on_the_generator(name, generator_params):
    numel = sum(p.numel() for p in generator_params)
    assert numel == 36_458_818
    full = 4 * numel
    before = [p.detach()[(0,) * p.dim()].item() for p in generator_params[:3]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = create_optimizer(name, generator_params)
    optimizer.step()
    assert [p.detach()[(0,) * p.dim()].item() for p in generator_params[:3]] != before
    for label, keys in SECOND_MOMENT[name].items():
        kept = sum(v.numel() * v.element_size() for p in generator_params
                   for k, v in optimizer.state[p].items() if k in keys)
        assert 0 < kept < BOUND[label] * full, f"{name} {label}: {kept / 1e6:.1f} MB, {kept / full:.4f} of one tensor"
    for p in generator_params:  # no full-size second moment for any tensor of 2+ dims with a last dim > 1
        if p.dim() >= 2 and p.shape[-1] > 1 and p.shape[-2] > 1:
            assert all(v.numel() < p.numel() for k, v in optimizer.state[p].items()
                       if any(k in keys for keys in SECOND_MOMENT[name].values())), f"{name}: {tuple(p.shape)}"
    del optimizer
