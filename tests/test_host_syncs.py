"""Host synchronisations per step, counted the way a GPU would see them (see tests/host_syncs.py).

Every registered optimizer takes a few steps on fake CUDA tensors under a dispatch mode that counts
reads of device values and host-to-device copies, including those made inside torch's C++ argument
parser, which no patch of ``Tensor.item`` in Python can see. A step after the first must make exactly
the record's ``host_syncs_per_step + host_syncs_per_param * (number of parameters)``: 0 for every
optimizer this project writes, torch's own classes their measured numbers. The counter is checked
first, so that the contract can fail for the right reasons.
"""

from __future__ import annotations

import pytest
import torch

from rvc_optim.driver import ProtocolDriver
from rvc_optim.optim._foreach import (
    bias_correction,
    decay_weights_,
    foreach_mul_by_constant_,
    scalar,
)
from rvc_optim.records import OptimizerInfo
from rvc_optim.registry import optimizer_info
from tests.host_syncs import PARAM_SHAPES, HostSyncCounter, count_host_syncs, fake_cuda, fake_cuda_params
from tests.test_contract import ALL, build

STEPS = 4


# --- the counter itself ------------------------------------------------------------------------------


def _count(fn) -> HostSyncCounter:
    with HostSyncCounter() as counter:
        fn()
    return counter


def test_counter_counts_device_reads_and_host_to_device_copies():
    with fake_cuda():
        x = torch.randn(5, 3, device="cuda")
        host = torch.randn(5, 3)
        c = torch.full((), 0.5, device="cuda")
        assert _count(lambda: x.sum().item()).count == 1
        assert _count(lambda: bool((x > 0).all())).count == 1
        assert _count(lambda: float(c)).count == 1
        assert _count(lambda: host.cuda()).count == 1
        assert _count(lambda: host.to(x.device)).count == 1
        assert _count(lambda: int(x.sum())).count == 1
        assert _count(lambda: x.copy_(host)).count == 1
        assert _count(lambda: torch.tensor(2.0, device="cuda")).count == 1  # made on the host, then copied
        assert _count(lambda: x.to("cpu")).count == 1  # a device-to-host copy is a read
        # torch's argument parser reads a 0-d tensor passed where a number is expected: the case
        assert _count(lambda: torch._foreach_lerp_([x], [x], c)).count == 1
        # eigh's CUDA kernel reads its convergence flag back: one per call, batched or not
        assert _count(lambda: torch.linalg.eigh(torch.eye(3, device=x.device).expand(4, 3, 3))).count == 1


def test_counter_ignores_fills_device_work_and_cpu_reads():
    with fake_cuda():
        x = torch.randn(5, 3, device="cuda")
        c = torch.full((), 0.5, device="cuda")
        step = torch.tensor(3.0)  # a CPU 0-d counter, like torch's non-capturable Adam's
        assert _count(lambda: torch.full((), 2.0, device="cuda")).count == 0
        assert _count(lambda: torch.zeros((), device="cuda")).count == 0
        assert _count(lambda: torch._foreach_lerp_([x], [x], [c])).count == 0
        assert _count(lambda: torch._foreach_mul_([x], c)).count == 0
        assert _count(lambda: x.mul_(step)).count == 0  # a CPU scalar tensor goes into the kernel as a value
        assert _count(lambda: torch.where(c > 0, x, c)).count == 0
        counter = _count(lambda: (step.item(), float(step), bool(step > 1)))
        assert counter.count == 0 and counter.cpu_reads == 3


@pytest.mark.parametrize("foreach", [False, True])
def test_torch_non_capturable_adam_reads_only_its_cpu_step_counter(foreach):
    """torch's non-capturable Adam keeps ``step`` on the CPU and reads it every step: no sync."""
    seen = []

    def make(params):
        optimizer = torch.optim.Adam(params, lr=1e-3, foreach=foreach, fused=False, capturable=False)

        def step():
            optimizer.step()
            seen.append(optimizer.state[params[0]]["step"].device.type)

        return step

    syncs = count_host_syncs(make, STEPS)
    assert syncs.first == 0 and syncs.later == [0] * (STEPS - 1), (syncs.first_events, syncs.later_events)
    assert set(seen) == {"cpu"}
    assert all(syncs.cpu_reads), f"the CPU step counter was not read every step ({syncs.cpu_reads})"


def test_torch_asgd_syncs_twice_per_parameter_and_step():
    """A per-parameter count (a read of the device step, a copy of mu): it grows with the parameters."""
    for shapes in (PARAM_SHAPES, PARAM_SHAPES[:1]):
        syncs = count_host_syncs(lambda params: torch.optim.ASGD(params, lr=0.1, foreach=True).step, STEPS, shapes)
        assert syncs.later == [2 * len(shapes)] * (STEPS - 1), syncs.later_events


def test_scalar_helpers_do_not_sync():
    with fake_cuda():
        params = fake_cuda_params()
        device, dtype = params[0].device, params[0].dtype
        lr = torch.full((), 1e-3, device="cuda")
        step = torch.full((), 3.0, device="cuda")
        made = []

        def helpers():
            made.append(scalar(0.5, device, dtype))
            made.append(scalar(torch.tensor(0.25), device, dtype))  # a CPU value: a fill, not a copy
            made.append(scalar(lr, device, dtype))
            made.append(scalar(lr, device, torch.float64))
            made.append(bias_correction(0.9, step))
            bias_correction(0.9, 3)
            decay_weights_(params, lr, 0.1)
            decay_weights_(params, 1e-3, 0.1)
            foreach_mul_by_constant_(params, 0.99)

        with torch.no_grad():
            counter = _count(helpers)
        assert counter.count == 0, counter.events
        assert all(t.device.type == "cuda" and t.dim() == 0 for t in made)
        assert made[3].dtype == torch.float64


# --- the contract: every registered optimizer, by its record ------------------------------------------


def _make_step(record: OptimizerInfo, **overrides):
    def make(params):
        optimizer = build(record, params, **overrides)
        driver = ProtocolDriver(optimizer, record)
        driver.train()
        return driver.step

    return make


@pytest.mark.parametrize("record", ALL)
def test_host_syncs_per_step_match_the_record(record):
    record.capabilities  # probed on real CPU tensors, before the fake mode (a pending record raises here)
    protocol = record.protocol
    # A refresh that step() does itself is put out of reach here: the refresh steps have their own test.
    no_refresh = {protocol.refresh_every_arg: 10**6} if protocol.refresh_every_arg else {}
    for shapes in (PARAM_SHAPES, PARAM_SHAPES[:2]):
        syncs = count_host_syncs(_make_step(record, **no_refresh), STEPS, shapes)
        expected = protocol.host_syncs_per_step + protocol.host_syncs_per_param * len(shapes)
        assert syncs.later == [expected] * (STEPS - 1), (
            f"{record.name}: steps 2-{STEPS} made {syncs.later} host syncs on {len(shapes)} parameters, its record "
            f"says {expected}: {sorted(set(e for step in syncs.later_events for e in step))}"
        )
        if record.source == "rvc_optim":
            copies = [e for e in syncs.first_events if e.startswith("copy")]
            assert not copies, f"{record.name}: the first step copies from the host: {copies}"


REFRESHING = [p for p in ALL if p.values[0].protocol.refresh_every_arg]


@pytest.mark.parametrize("record", REFRESHING)
def test_host_syncs_only_on_refresh_steps(record):
    """An optimizer that refreshes inside step() every k steps (``refresh_every_arg``): with k = 2 the
    steps that sync beyond the record's count are every other step, and only those."""
    record.capabilities
    base = record.protocol.host_syncs_per_step
    syncs = count_host_syncs(_make_step(record, **{record.protocol.refresh_every_arg: 2}), 6)
    extra = [i for i, n in enumerate(syncs.later) if n != base]
    assert extra and all(syncs.later[i] > base for i in extra), (record.name, syncs.later, syncs.later_events)
    assert all(b - a == 2 for a, b in zip(extra, extra[1:])) and len(extra) == 2, (record.name, syncs.later)


# Settings the records' test_settings leave out, each a different path through its step.
CONFIGURATIONS = {
    "DAdaptAdam, decoupled, bias-corrected": (
        "DAdaptAdam", lambda ps: dict(params=ps, decouple=True, use_bias_correction=True, weight_decay=0.01)
    ),
    "DAdaptAdaGrad, momentum and decay": ("DAdaptAdaGrad", lambda ps: dict(params=ps, momentum=0.9, weight_decay=0.01)),
    "DAdaptSGD, momentum and decay": ("DAdaptSGD", lambda ps: dict(params=ps, momentum=0.9, weight_decay=0.01)),
    "Ranger21, amsgrad": (
        "Ranger21", lambda ps: dict(params=ps, lr=1e-3, num_epochs=1, num_batches_per_epoch=20, amsgrad=True)
    ),
    "Prodigy, two groups, bias-corrected": (
        "Prodigy",
        lambda ps: dict(params=[{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.1}], use_bias_correction=True),
    ),
    "ScheduleFreeAdamW, warm-up and decay": (
        "ScheduleFreeAdamW", lambda ps: dict(params=ps, warmup_steps=2, weight_decay=0.1)
    ),
    "AnyPrecisionAdamW, Kahan summation": ("AnyPrecisionAdamW", lambda ps: dict(params=ps, use_kahan_summation=True)),
}


def _zero_on_odd_steps(p: torch.Tensor, i: int) -> torch.Tensor:
    """All-zero gradients every other step: the D-adaptation early returns, taken on the device."""
    return torch.zeros_like(p) if i % 2 else torch.randn_like(p)


@pytest.mark.parametrize("grad", [None, _zero_on_odd_steps], ids=["gradients", "zero-gradients"])
@pytest.mark.parametrize("case", list(CONFIGURATIONS))
def test_other_settings_make_no_host_sync_either(case, grad):
    name, settings = CONFIGURATIONS[case]
    record = optimizer_info(name)
    record.capabilities

    def make(params):
        optimizer = record.cls(**settings(params))
        driver = ProtocolDriver(optimizer, record)
        driver.train()
        return driver.step

    syncs = count_host_syncs(make, STEPS, grad=grad)
    assert syncs.later == [0] * (STEPS - 1), f"{case}: {syncs.later_events}"
