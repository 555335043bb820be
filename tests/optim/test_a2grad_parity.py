"""A2Grad against torch-optimizer's ``A2GradUni``, ``A2GradInc`` and ``A2GradExp`` (copies of
severilov/A2Grad_optimizer), and against the paper's three-sequence form written out below.

The two published ports disagree from the first step on (``test_the_ports_disagree``). torch-optimizer
indexes the sequences as the paper does (a_k = 2/(k+2), gamma_k = 2L/(k+1) from k = 0), which the
equations below check independently, with the aggregated point xbar kept explicitly and the averages in
closed form; pytorch_optimizer's ``A2Grad`` is one step ahead and adds a sqrt(k+2) factor to the
incremental variant. We match torch-optimizer.

Tolerances: the reference reads ||delta||^2 and the step coefficient back as Python floats and updates
the gradient average as (k * gbar + g) / (k + 1); ours keeps them on the device and updates it as
gbar + (g - gbar) / (k + 1). Measured over 200 steps (largest of the three variants): parameters
1.1e-11 relative (on entries near zero), avg_grad 1.5e-11, x_k 7.4e-14, v_k and v_kk 1.2e-15: within
the project's 1e-9.
"""

from __future__ import annotations

import pytest
import torch
from torch_optimizer import A2GradExp, A2GradInc, A2GradUni

from rvc_optim.optim.a2grad import A2Grad
from tests.optim.parity import run_parity
from tests.optim.test_apollo_parity import against_equations, import_pytorch_optimizer

REFERENCES = {"uni": A2GradUni, "inc": A2GradInc, "exp": A2GradExp}
# Two groups with different Lipschitz guesses and betas (A2Grad has no lr and no weight decay).
GROUPS = [{"lips": 20.0, "beta": 5.0}, {"lips": 50.0, "beta": 10.0, "rho": 0.7}]
STATE_KEYS = {"avg_grad": "avg_grad", "x_k": "x_k", "v_k": "v_k", "v_kk": "v_kk"}


@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_parity_with_torch_optimizer(variant):
    ours, ref, _, _ = run_parity(
        lambda groups: A2Grad(groups, variant=variant),
        lambda groups: REFERENCES[variant](groups),
        GROUPS,
        STATE_KEYS,
    )
    assert all(g["step"] == 200 for g in ours.param_groups)


@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_parity_with_torch_optimizer_in_the_cpu_compiled_layout(variant, monkeypatch):
    """Compiled on a CPU the spreads' norms are eager dot products and the rest one elementwise update with
    per-tensor coefficients and 0-d step scalars (``A2Grad._step_with_eager_norms``); run that layout
    eagerly here, with the scalars as tensors, as the compiled graph takes them."""
    monkeypatch.setattr("rvc_optim.optim.a2grad.resolve_compiled", lambda *args: True)
    monkeypatch.setattr("rvc_optim.optim._compile.UpdateFunction._run_blocked",
                        lambda self, lists, scalars: self.fn(*lists, **scalars))
    calls = []
    original = A2Grad._step_with_eager_norms
    monkeypatch.setattr(A2Grad, "_step_with_eager_norms", lambda self, *a: calls.append(1) or original(self, *a))
    run_parity(lambda groups: A2Grad(groups, variant=variant), lambda groups: REFERENCES[variant](groups),
               GROUPS, STATE_KEYS)
    assert calls


class A2GradEquations:
    """The paper's accelerated scheme with its three sequences (x^md = the parameters, xbar, x), one
    scalar h per tensor as both ports, and the averages in closed form over the whole history."""

    def __init__(self, groups, variant):
        self.groups, self.variant, self.k = groups, variant, 0
        self.hist = {}  # per parameter: gradients so far, ||delta_i||^2 so far, xbar, x, v, vt

    @torch.no_grad()
    def step(self):
        k = self.k
        a_k, a_next = 2 / (k + 2), 2 / (k + 3)
        for group in self.groups:
            lips, beta, rho = group["lips"], group["beta"], group.get("rho", 0.5)
            for p in group["params"]:
                h = self.hist.setdefault(p, dict(g=[], s=[], xbar=p.clone(), x=p.clone(), v=0.0, vt=0.0))
                h["g"].append(p.grad.clone())
                gbar = sum(h["g"]) / (k + 1)
                s = float(((p.grad - gbar) ** 2).sum())
                h["s"].append(s)
                if self.variant == "uni":
                    h["v"] = sum(h["s"])
                    hk = h["v"] ** 0.5
                elif self.variant == "inc":  # closed form of v <- (k/(k+1))^2 v + s
                    h["v"] = sum(((i + 1) / (k + 1)) ** 2 * si for i, si in enumerate(h["s"]))
                    hk = h["v"] ** 0.5
                else:
                    h["vt"] = s if k == 0 else rho * h["vt"] + (1 - rho) * s
                    h["v"] = max(h["v"], h["vt"])
                    hk = ((k + 1) * h["v"]) ** 0.5
                c = 1 / (2 * lips / (k + 1) + beta * hk)
                h["x"] = h["x"] - c * p.grad
                h["xbar"] = (1 - a_k) * h["xbar"] + a_k * h["x"]
                p.copy_((1 - a_next) * h["xbar"] + a_next * h["x"])
        self.k += 1


@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_matches_the_papers_equations(variant):
    ours, eq, ours_model, eq_model = against_equations(
        lambda groups: A2Grad(groups, variant=variant), lambda groups: A2GradEquations(groups, variant), GROUPS, 60)
    for p, q in zip(ours_model.parameters(), eq_model.parameters()):
        torch.testing.assert_close(ours.state[p]["x_k"], eq.hist[q]["x"], rtol=1e-9, atol=1e-300)
        torch.testing.assert_close(float(ours.state[p]["v_k"]), eq.hist[q]["v"], rtol=1e-9, atol=1e-300)


def test_first_step_is_gradient_over_2l():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = A2Grad([p], lips=4.0)
    p.grad = torch.tensor([0.8, 0.4], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -2.05], dtype=torch.float64), rtol=1e-15, atol=0)


@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_the_ports_disagree(variant):
    """Why one port is chosen: after one step the two ports already differ (pytorch_optimizer uses
    gamma = 2L/(k+2) and a' = 2/(k+4)); ours follows torch-optimizer and the paper's indexing."""
    port = import_pytorch_optimizer("A2Grad")
    ps = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(2)]
    opts = [A2Grad([ps[0]], variant=variant), port([ps[1]], variant=variant)]
    for p, opt in zip(ps, opts):
        p.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        opt.step()
    assert not torch.allclose(ps[0], ps[1], rtol=1e-3)


def test_arguments():
    p = torch.nn.Parameter(torch.zeros(2))
    d = A2Grad([p]).defaults
    assert (d["beta"], d["lips"], d["rho"], d["variant"]) == (10.0, 10.0, 0.5, "uni")
    with pytest.raises(ValueError, match="variant"):
        A2Grad([p], variant="adam")
    with pytest.raises(ValueError, match="lips"):
        A2Grad([p], lips=0.0)
    with pytest.raises(ValueError, match="rho"):
        A2Grad([p], rho=1.5)
