"""Adan against pytorch_optimizer's ``Adan`` (which agrees with the authors' sail-sg/Adan to 5e-16
without clipping), against the update equations written out below (clipping, both weight-decay
modes), and against Adam's step size (the update must not vanish).

pytorch_optimizer names the authors' ``no_prox`` ``weight_decouple`` and the state ``neg_pre_grad``
``previous_grad`` (both hold -g of the previous step).
"""

from __future__ import annotations

import sys

import pytest
import torch

from rvc_optim.optim.adan import Adan
from tests.optim.parity import batches, make_model, run_parity, two_groups



def _import_reference():
    """pytorch_optimizer imports transformers whenever it is installed; where transformers is installed
    without its dependencies (``--no-deps``, as here) that import fails and takes pytorch_optimizer down
    with it. Retry with transformers hidden for the duration of the import (pytorch_optimizer then only
    loses a DeepSpeed check that Adan never uses)."""
    try:
        from pytorch_optimizer import Adan as reference
    except ImportError:
        for name in [m for m in sys.modules if m.split(".")[0] == "pytorch_optimizer"]:
            del sys.modules[name]
        saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] == "transformers"}
        sys.modules["transformers"] = None  # find_spec() and import both treat it as absent
        try:
            from pytorch_optimizer import Adan as reference
        finally:
            del sys.modules["transformers"]
            sys.modules.update(saved)
    return reference


ReferenceAdan = _import_reference()

STATE_KEYS = {
    "exp_avg": "exp_avg",
    "exp_avg_sq": "exp_avg_sq",
    "exp_avg_diff": "exp_avg_diff",
    "neg_pre_grad": "previous_grad",
}
GROUPS = [{"lr": 1e-2, "weight_decay": 0.02}, {"lr": 4e-3, "weight_decay": 0.0}]
BETAS = (0.9, 0.85, 0.97)  # not the defaults, so a swapped beta would show
CLIP = 0.25  # the parity model's gradient norm is 0.1..0.48: clipping engages on about half the steps


def _compare_group_steps(ours, ref):
    for g_ours, g_ref in zip(ours.param_groups, ref.param_groups):
        assert g_ours["step"] == g_ref["step"] == 200


@pytest.mark.parametrize("no_prox", [False, True], ids=["proximal", "no_prox"])
def test_parity_with_pytorch_optimizer(no_prox):
    ours, ref, _, _ = run_parity(
        lambda groups: Adan(groups, betas=BETAS, no_prox=no_prox),
        lambda groups: ReferenceAdan(groups, betas=BETAS, weight_decouple=no_prox),
        GROUPS,
        STATE_KEYS,
    )
    _compare_group_steps(ours, ref)


def _squared_norm_in_float64(param_groups, device=None, **_):
    grads = [p.grad for group in param_groups for p in group["params"] if p.grad is not None]
    return torch.stack([(g.double() ** 2).sum() for g in grads]).sum().reshape(1)


def test_parity_with_pytorch_optimizer_clipped(monkeypatch):
    # pytorch_optimizer sums the squared per-tensor norms in FLOAT32 (``.float()`` in its
    # get_global_gradient_norm), so its clip factor carries float32 rounding (~6e-8 relative) even for
    # float64 gradients; ours accumulates float64 gradients in float64. (The authors' code also
    # accumulates in float32, in a float32 buffer, rounded differently: that is the 4e-9 between the
    # authors' and pytorch_optimizer.) With that one function of the reference replaced by a float64
    # sum, the two agree to 1e-9 over 200 steps: nothing else differs.
    monkeypatch.setattr(sys.modules[ReferenceAdan.__module__], "get_global_gradient_norm", _squared_norm_in_float64)
    ours, ref, _, _ = run_parity(
        lambda groups: Adan(groups, betas=BETAS, max_grad_norm=CLIP),
        lambda groups: ReferenceAdan(groups, betas=BETAS, max_grad_norm=CLIP),
        GROUPS,
        STATE_KEYS,
    )
    _compare_group_steps(ours, ref)


def test_parity_with_unmodified_pytorch_optimizer_clipped():
    # The reference as shipped, float32 clip factor and all: the rounding of c (~6e-8 relative per
    # step) moves the gradients by ~1e-8 absolute; Adan's step is nearly invariant to the scale of g, so
    # the weights move by far less. Measured over 200 steps (this test runs 50): parameters 7.6e-9 abs.,
    # states 5.9e-9 abs. (weights are 0.01..1; elements crossing zero make a purely relative bound
    # meaningless).
    run_parity(
        lambda groups: Adan(groups, betas=BETAS, max_grad_norm=CLIP),
        lambda groups: ReferenceAdan(groups, betas=BETAS, max_grad_norm=CLIP),
        GROUPS,
        STATE_KEYS,
        steps=50,
        rtol=1e-6,
        atol=2e-8,
        state_atol=2e-8,
    )


# --- the equations, written out -------------------------------------------------------------------


class AdanEquations:
    """Adan as the paper's Algorithm 1 in code convention (beta = 1 - paper beta), one tensor at a
    time in float64, with the authors' global clip: c = min(1, max_grad_norm / (||g|| + eps))."""

    def __init__(self, groups, betas, eps, max_grad_norm, no_prox):
        self.groups, self.betas, self.eps, self.max_grad_norm, self.no_prox = groups, betas, eps, max_grad_norm, no_prox
        self.k = 0
        self.state = {}
        self.clips = []

    @torch.no_grad()
    def step(self):
        b1, b2, b3 = self.betas
        self.k += 1
        k = self.k
        params = [p for g in self.groups for p in g["params"]]
        c = 1.0
        if self.max_grad_norm > 0:
            norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
            c = min(1.0, self.max_grad_norm / (norm.item() + self.eps))
        self.clips.append(c)
        for group in self.groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                g = c * p.grad
                if p not in self.state:
                    self.state[p] = dict(m=torch.zeros_like(p), v=torch.zeros_like(p), n=torch.zeros_like(p), prev=g)
                s = self.state[p]
                diff = g - s["prev"]
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * diff
                s["n"] = b3 * s["n"] + (1 - b3) * (g + b2 * diff) ** 2
                s["prev"] = g
                denom = s["n"].sqrt() / (1 - b3**k) ** 0.5 + self.eps
                u = lr / (1 - b1**k) * s["m"] / denom + lr * b2 / (1 - b2**k) * s["v"] / denom
                if self.no_prox:
                    p.copy_(p * (1 - lr * wd) - u)
                else:
                    p.copy_((p - u) / (1 + lr * wd))


def _run_against_equations(no_prox, max_grad_norm, steps=100):
    ours_model, eq_model = make_model(), make_model()
    ours = Adan(two_groups(ours_model, GROUPS), betas=BETAS, max_grad_norm=max_grad_norm, no_prox=no_prox)
    eq = AdanEquations(two_groups(eq_model, GROUPS), BETAS, 1e-8, max_grad_norm, no_prox)
    for step, (tokens, target) in enumerate(batches(steps), start=1):
        for model in (ours_model, eq_model):
            model.zero_grad()
            torch.mean((model(tokens) - target) ** 2).backward()
        ours.step()
        eq.step()
        for (name, p), q in zip(ours_model.named_parameters(), eq_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=0.0, msg=lambda m: f"step {step}, {name}: {m}")
    for p, q in zip(ours_model.parameters(), eq_model.parameters()):
        torch.testing.assert_close(ours.state[p]["exp_avg"], eq.state[q]["m"], rtol=1e-9, atol=1e-300)
        torch.testing.assert_close(ours.state[p]["exp_avg_diff"], eq.state[q]["v"], rtol=1e-9, atol=1e-300)
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], eq.state[q]["n"], rtol=1e-9, atol=1e-300)
        torch.testing.assert_close(ours.state[p]["neg_pre_grad"], -eq.state[q]["prev"], rtol=1e-9, atol=1e-300)
    return eq.clips


@pytest.mark.parametrize("no_prox", [False, True], ids=["proximal", "no_prox"])
def test_clipping_matches_equations(no_prox):
    clips = _run_against_equations(no_prox, max_grad_norm=CLIP)
    # The threshold is chosen so that clipping engages on some steps and not on others.
    assert any(c < 1.0 for c in clips) and any(c == 1.0 for c in clips), clips


@pytest.mark.parametrize("no_prox", [False, True], ids=["proximal", "no_prox"])
def test_unclipped_matches_equations(no_prox):
    _run_against_equations(no_prox, max_grad_norm=0.0, steps=50)


def test_clipping_scales_grad_in_place_and_keeps_it_on_the_device():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = Adan([p], max_grad_norm=1.0, eps=0.0)
    p.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8], dtype=torch.float64), rtol=1e-15, atol=0)


# --- protocol ------------------------------------------------------------------------------------


def test_restart_opt_is_a_fresh_start():
    """After restart_opt the run continues exactly like a new Adan started from the current weights."""
    data = batches(20)

    def train(model, opt, chunk):
        for tokens, target in chunk:
            opt.zero_grad()
            torch.mean((model(tokens) - target) ** 2).backward()
            opt.step()

    model = make_model()
    opt = Adan(two_groups(model, GROUPS), betas=BETAS)
    train(model, opt, data[:10])
    fresh_model = make_model()
    fresh_model.load_state_dict(model.state_dict())
    opt.restart_opt()
    assert all(g["step"] == 0 for g in opt.param_groups)
    train(model, opt, data[10:])
    fresh = Adan(two_groups(fresh_model, GROUPS), betas=BETAS)
    train(fresh_model, fresh, data[10:])
    for (name, p), q in zip(model.named_parameters(), fresh_model.parameters()):
        assert torch.equal(p, q), f"{name} differs after restart_opt by {(p - q).abs().max():.3g}"


def test_two_betas_are_rejected_clearly():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"betas.*three"):
        Adan([p], betas=(0.8, 0.99))
    with pytest.raises(ValueError, match=r"betas.*three"):
        Adan([{"params": [p], "betas": (0.8, 0.99)}])


def test_defaults_are_the_authors():
    opt = Adan([torch.nn.Parameter(torch.zeros(1))])
    d = opt.defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"], d["max_grad_norm"], d["no_prox"]) == (
        1e-3, (0.98, 0.92, 0.99), 1e-8, 0.0, 0.0, False
    )


def test_step_size_stays_comparable_to_adam():
    """An earlier version of the guide had an Adan whose step vanished within 8 steps. On a smooth
    problem Adan's update is about lr per coordinate like Adam's: check each of 20 steps."""
    torch.manual_seed(3)
    a = torch.randn(32, 16, dtype=torch.float64)
    b = torch.randn(32, dtype=torch.float64)
    start = torch.randn(16, dtype=torch.float64)
    steps = {}
    for name, make in (("adam", lambda ps: torch.optim.Adam(ps, lr=1e-2)), ("adan", lambda ps: Adan(ps, lr=1e-2))):
        x = torch.nn.Parameter(start.clone())
        opt = make([x])
        sizes = []
        for _ in range(20):
            opt.zero_grad()
            (0.5 * ((a @ x - b) ** 2).sum()).backward()
            before = x.detach().clone()
            opt.step()
            sizes.append((x.detach() - before).abs().mean().item())
        steps[name] = sizes
    ratios = [d / m for d, m in zip(steps["adan"], steps["adam"])]  # measured: 1.00 at step 1 .. 1.04 at step 20
    assert all(0.5 < r < 2.0 for r in ratios), ratios
