"""Parity on bare tensors of chosen shapes (4-D kernels, which the parity model lacks): both sides step
their own float64 copies with the same gradients (random, plus a pull towards zero), and parameters and
state are compared at the end at rtol 1e-9. Used by the memory-saving family's tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from tests.optim.parity import state_value


def _run(make: Callable[[list[dict[str, Any]]], torch.optim.Optimizer], shapes: Sequence[tuple[int, ...]],
         split: int, groups: Sequence[Mapping[str, Any]], steps: int):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    opt = make([{"params": params[:split], **groups[0]}, {"params": params[split:], **groups[1]}])
    grads = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads, dtype=torch.float64) + 0.1 * p.detach()
        opt.step()
    return params, opt


def compare_on_shapes(make_ours, make_reference, shapes, split: int, groups, state_keys: Sequence[str],
                      steps: int = 200, derived_state=None) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    """Two groups (the first ``split`` tensors, then the rest) with ``groups``' options; every key of
    ``state_keys`` the reference keeps for a tensor must be in ours and agree, or be one of
    ``derived_state``'s and agree with its value computed from our state (see
    :func:`tests.optim.parity.state_value`). Returns our side."""
    ours, opt = _run(make_ours, shapes, split, groups, steps)
    ref, ref_opt = _run(make_reference, shapes, split, groups, steps)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-9, atol=0.0)
        for key in state_keys:
            if key in ref_opt.state[q]:
                mine = state_value(opt.state[p], key, key, derived_state, f"shape {tuple(p.shape)}")
                torch.testing.assert_close(torch.as_tensor(mine, dtype=torch.float64),
                                           torch.as_tensor(ref_opt.state[q][key], dtype=torch.float64),
                                           rtol=1e-9, atol=0.0)
    return ours, opt
