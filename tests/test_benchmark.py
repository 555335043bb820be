"""The benchmark's machinery on a tiny parameter set (no timing assertions) and the records' floors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from rvc_optim.catalog import RECORDS
from rvc_optim.records import memory_floor
from rvc_optim.registry import create_optimizer, optimizer_info

IMPLEMENTED = [r.name for r in RECORDS if r.available]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.name)
def test_every_record_has_a_floor(record):
    floor = record.floor_bytes_per_param
    assert math.isfinite(floor) and floor >= 12.0, f"{record.name}: floor_bytes_per_param not filled"
    assert floor % 4 == 0


def _allocated_state(name: str) -> tuple[float, torch.optim.Optimizer]:
    """Bytes of per-parameter state tensors (not 0-d scalars) per parameter after two steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    info = optimizer_info(name)
    extra = {"num_iterations": 100} if info.protocol.run_length else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = create_optimizer(name, model, **extra)
    if info.protocol.train_eval:
        optimizer.train()
    for _ in range(2):
        model(torch.randn(8, 16)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    numel = sum(p.numel() for p in model.parameters())
    total = sum(v.numel() * v.element_size() for p in model.parameters()
                for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v) and v.dim() > 0)
    return total / numel, optimizer


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_floor_matches_the_state_the_class_allocates(name):
    """The record's floor is memory_floor(read-written, read-only, reduction) for a split of the state the
    class really keeps (each fp32 tensor of the parameter's size is one unit); where the class says which
    tensors it only reads and whether it needs a reduction pass, the floor must use exactly that."""
    state_bytes, optimizer = _allocated_state(name)
    units = state_bytes / 4.0
    assert units == int(units), f"{name}: state is not whole fp32 buffers ({state_bytes} B/param)"
    floor = optimizer_info(name).floor_bytes_per_param
    splits = {(ro, red): memory_floor(units - ro, ro, red) for ro in range(int(units) + 1) for red in (False, True)}
    assert floor in splits.values(), f"{name}: floor {floor} fits no split of {units:g} state buffers"
    declared_ro = getattr(optimizer, "read_only_state", None)
    declared_red = getattr(optimizer, "needs_reduction_pass", None)
    if declared_ro is not None or declared_red is not None:
        assert floor == memory_floor(units - len(declared_ro or ()), len(declared_ro or ()), bool(declared_red))
