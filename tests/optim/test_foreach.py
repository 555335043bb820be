"""The shared multi-tensor helpers whose CPU and accelerator branches must agree (``_foreach.py``)."""

from __future__ import annotations

import pytest
import torch

import rvc_optim.optim._foreach as foreach_module
from rvc_optim.optim._foreach import lerp_, write_into_
from tests.host_syncs import HostSyncCounter, fake_cuda

SHAPES = [(6, 5), (4, 3, 2), (7,)]


def _tensors(seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=generator, dtype=dtype) + 0.1 for shape in SHAPES]


@pytest.mark.parametrize("fn, others", [(torch.mul, 1), (torch.rsqrt, 0), (torch.abs, 0)], ids=["mul", "rsqrt", "abs"])
def test_write_into_gives_the_multi_tensor_result_bit_for_bit_in_the_given_memory(fn, others, monkeypatch):
    tensors, second = _tensors(1), _tensors(2)
    # the eager CPU branch: one pass per tensor with out=
    outs = _tensors(3)
    pointers = [out.data_ptr() for out in outs]
    returned = write_into_(outs, fn, tensors, *([second] * others))
    assert returned is outs and [out.data_ptr() for out in outs] == pointers
    # the accelerator branch, forced on the CPU: a multi-tensor copy, then the in-place op
    monkeypatch.setattr(foreach_module, "eager_on_cpu", lambda t: False)
    expected = write_into_(_tensors(3), fn, tensors, *([second] * others))
    for i, (out, want) in enumerate(zip(outs, expected)):
        assert torch.equal(out, want)
        assert torch.equal(out, fn(tensors[i], *([second[i]] * others)))


def test_write_into_broadcasts_the_other_operand():
    grads = _tensors(1)
    rows = [torch.rand(t.shape[:-1]).unsqueeze(-1) for t in grads]
    outs = write_into_(_tensors(2), torch.mul, grads, rows)
    for out, g, r in zip(outs, grads, rows):
        assert torch.equal(out, g * r)


def test_lerp_with_a_cpu_tensor_weight_is_the_float_lerp():
    starts, ends = _tensors(1, torch.float64), _tensors(2, torch.float64)
    expected = [s.clone() for s in starts]
    torch._foreach_lerp_(expected, ends, 0.3)
    lerp_(starts, ends, torch.tensor(0.3, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(starts, expected))


def test_lerp_with_a_device_tensor_weight_reads_nothing_back():
    with fake_cuda():
        starts = [torch.randn(shape, device="cuda") for shape in SHAPES]
        ends = [torch.randn(shape, device="cuda") for shape in SHAPES]
        weight = torch.full((), 0.3, device="cuda")
        with HostSyncCounter() as counter:
            lerp_(starts, ends, weight)
        assert counter.count == 0
        with HostSyncCounter() as counter:  # what lerp_ avoids: the parser reads the 0-d weight back
            torch._foreach_lerp_(starts, ends, weight)
        assert counter.count == 1
