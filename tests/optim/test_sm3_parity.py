"""SM3 against pytorch_optimizer's ``SM3`` (4.1.0, beta=0: the authors' SM3-II, which it matches to
1e-16 per REFERENCES.md), float64, 200 steps, two param groups with different lr, rtol 1e-9 on
parameters and accumulators, with and without momentum; 4-D kernels; the update written out for a
3-D tensor.

Measured largest relative difference over the 200 steps: 1.4e-11 without momentum, 6.1e-11 with (elements
near zero; the reference forms nu with one fused addcmul, ours squares then adds).
pytorch_optimizer keeps a ``momentum_buffer`` even with momentum 0; ours, like the authors', keeps none
then, so the buffer is compared only with momentum.
"""

from __future__ import annotations

import pytest
import torch

from rvc_optim.optim.sm3 import SM3, _max_over_rows
from tests.optim.kernel_parity import compare_on_shapes
from tests.optim.parity import run_parity

from pytorch_optimizer import SM3 as Reference  # noqa: E402  (a test dependency: missing is a failure)

ACCUMULATORS = {f"accumulator_{i}": f"accumulator_{i}" for i in range(3)}
GROUPS = [{"lr": 0.05}, {"lr": 0.02}]  # SM3 has no weight decay: the groups differ in lr (and momentum below)


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["no-momentum", "momentum"])
def test_parity_with_pytorch_optimizer(momentum):
    keys = {**ACCUMULATORS, **({"momentum_buffer": "momentum_buffer"} if momentum else {})}
    groups = [dict(GROUPS[0], momentum=momentum), dict(GROUPS[1], momentum=momentum / 2)]
    ours, _, model, _ = run_parity(lambda g: SM3(g), lambda g: Reference(g), groups, keys)
    kernel = model.conv.weight  # [8, 6, 3]
    assert [ours.state[kernel][f"accumulator_{i}"].shape for i in range(3)] == [(8, 1, 1), (1, 6, 1), (1, 1, 3)]
    assert ("momentum_buffer" in ours.state[kernel]) == (momentum > 0)


def test_4d_kernels_match_pytorch_optimizer():
    params, opt = compare_on_shapes(lambda g: SM3(g, momentum=0.9), lambda g: Reference(g, momentum=0.9),
                                    [(6, 6, 3, 3), (5, 4, 3, 1), (7, 3), (9,), (8, 1, 1), (1, 1, 1), (1, 5), (4, 1, 3)], 2, [{"lr": 0.05}, {"lr": 0.01}],
                                    ["momentum_buffer", *(f"accumulator_{i}" for i in range(4))])
    assert [a.numel() for k, a in opt.state[params[0]].items() if k.startswith("accumulator")] == [6, 6, 3, 3]


def test_two_steps_of_the_paper_equations():
    """SM3-II (Algorithm 2 of the paper) for a 3-D tensor, two steps, momentum 0.5, written out."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4, 2, dtype=torch.float64))
    x = p.detach().clone()
    opt = SM3([p], lr=0.1, momentum=0.5, eps=0.0)
    acc = [torch.zeros(3, 1, 1, dtype=torch.float64), torch.zeros(1, 4, 1, dtype=torch.float64),
           torch.zeros(1, 1, 2, dtype=torch.float64)]
    m = torch.zeros_like(x)
    for _ in range(2):
        g = torch.randn(3, 4, 2, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        nu = torch.minimum(torch.minimum(acc[0], acc[1]), acc[2]) + g * g
        acc = [nu.amax(dim=(1, 2), keepdim=True), nu.amax(dim=(0, 2), keepdim=True), nu.amax(dim=(0, 1), keepdim=True)]
        m = 0.5 * m + 0.5 * g / nu.sqrt()
        x = x - 0.1 * m
        torch.testing.assert_close(p.detach(), x, rtol=1e-13, atol=0)
    for i in range(3):
        torch.testing.assert_close(opt.state[p][f"accumulator_{i}"], acc[i], rtol=1e-13, atol=0)


def test_vectors_and_scalars_are_adagrad():
    v = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    s = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    opt = SM3([v, s], lr=1.0, eps=0.0)
    for k in range(1, 3):
        v.grad, s.grad = torch.full((4,), 2.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(opt.state[v]["accumulator_0"], torch.full((4,), 4.0 * k, dtype=torch.float64))
        torch.testing.assert_close(opt.state[s]["accumulator_0"], torch.tensor(4.0 * k, dtype=torch.float64))


def test_defaults_are_the_ports():
    assert SM3([torch.nn.Parameter(torch.zeros(1))]).defaults == dict(lr=0.1, momentum=0.0, eps=1e-30)


def test_parity_in_small_cpu_batches(monkeypatch):
    """On a CPU the update runs over batches of whole tensors (cache-sized): with batches of a few
    tensors, the lists are cut in many places, and every cut must keep each tensor with its state."""
    monkeypatch.setattr("rvc_optim.optim._compile.BLOCK_NUMEL", 10)
    run_parity(lambda g: SM3(g, momentum=0.9), lambda g: Reference(g, momentum=0.9), GROUPS,
               {**ACCUMULATORS, "momentum_buffer": "momentum_buffer"}, steps=50)


@pytest.mark.parametrize("shape", [(7, 3), (64, 5), (1024, 1), (6, 2000), (96, 11)])
def test_folded_max_over_rows_is_amax(shape):
    """The accumulators' max over a kernel's leading dimensions, folded for speed, is torch's amax exactly
    (odd and even row counts, one column, more columns than the fold's width)."""
    rows = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(_max_over_rows(rows), rows.amax(dim=0))


def test_squares_are_added_in_place_to_new_covers_only():
    """nu = min over the covering accumulators + g^2: written into the min where that is a new
    full-size tensor (no second kernel-sized tensor per step), never into an accumulator (a vector's
    cover is its accumulator)."""
    from rvc_optim.optim.sm3 import _covers, _squares_over_covers

    kernel, vector = torch.randn(4, 3, 5, 1), torch.randn(6)
    accumulators = ([torch.rand(4, 1, 1, 1), torch.rand(6)], [torch.rand(1, 3, 1, 1)], [torch.rand(1, 1, 5, 1)],
                    [torch.rand(1, 1, 1, 1)])
    before = [[a.clone() for a in accs] for accs in accumulators]
    covers, fresh = _covers(accumulators)
    assert fresh == [True, False]
    expected = [torch.addcmul(c, g, g) for c, g in zip(covers, (kernel, vector))]
    nu = _squares_over_covers(accumulators, [kernel, vector])
    torch.testing.assert_close(nu, expected, rtol=0, atol=0)
    for accs, saved in zip(accumulators, before):
        torch.testing.assert_close(accs, saved, rtol=0, atol=0)
    assert nu[1].data_ptr() != accumulators[0][1].data_ptr()
