"""The compiled path: same numbers as the eager path, compiled once, not once per step.

"Not once per step" is checked with dynamo's ``error_on_recompile``: after the first two steps a
cache miss on an already-compiled update raises.

Compiling takes 10-120 s per graph on this CPU, so these tests are few, tiny and shared: one
parametrised test over every optimizer with a compiled update, on three small tensors.
"""

from __future__ import annotations


import pytest
import torch
import torch._dynamo

from rvc_optim.capabilities import capabilities_of
from rvc_optim.catalog import RECORDS
from rvc_optim.driver import ProtocolDriver
from rvc_optim.optim._compile import ENV_VAR, compile_available, resolve_compiled

COMPILED = [r for r in RECORDS if r.available and capabilities_of(r.cls).compiled]


def test_switch_reads_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "0")
    assert resolve_compiled(None) is False
    monkeypatch.setenv(ENV_VAR, "1")
    assert resolve_compiled(None) is compile_available("cpu")
    monkeypatch.setenv(ENV_VAR, "auto")
    assert resolve_compiled(None, "cpu") is False  # opt-in on CPU: compiling takes minutes there
    assert resolve_compiled(None, "cuda") is compile_available("cuda")
    assert resolve_compiled(False) is False
    monkeypatch.setenv(ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_compiled(None)


def _run(record, compiled: bool, steps: int, forbid_recompiles_after: int | None = None):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((8, 4), (16,), (3, 2, 5))]
    settings = {**record.test_settings, "compiled": compiled}
    from rvc_optim import create_optimizer

    optimizer = create_optimizer(record.name, params, **settings)
    driver = ProtocolDriver(optimizer, record)
    driver.train()
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if optimizer.param_groups[0].get("lr") is not None and not record.protocol.owns_schedule:
            for group in optimizer.param_groups:  # a changing lr must not recompile
                group["lr"] = group["lr"] * 0.9
        # After the first steps every update function has met its inputs; from then on any cache miss
        # (a Python float that changed, a guard on a step count) is a recompile, and an error.
        strict = forbid_recompiles_after is not None and i >= forbid_recompiles_after
        with torch._dynamo.config.patch(error_on_recompile=strict):
            driver.step()
    return [p.detach().clone() for p in params]


@pytest.mark.compiled
@pytest.mark.skipif(not compile_available("cpu"), reason="no C++ compiler for torch.compile on this machine")
@pytest.mark.parametrize("record", COMPILED, ids=lambda r: r.name)
def test_compiled_matches_eager_and_compiles_once(record):
    torch._dynamo.reset()
    steps = 7  # past a Lookahead merge (every 5 steps) and any warm-up's first steps
    eager = _run(record, compiled=False, steps=steps)
    torch._dynamo.utils.counters.clear()
    compiled = _run(record, compiled=True, steps=steps, forbid_recompiles_after=2)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 1, f"{record.name}: nothing was compiled"
