"""SWATS against torch-optimizer's ``SWATS`` (a port of Mrpatekful/swats: the only established
reference; the authors released no code, and pytorch_optimizer's ``SWATS`` decides the switch at the end
of the group step with other constants, so it is not parity-compatible).

* Adam phase (the parity model's gradients never trigger the switch): measured over 200 steps,
  parameters and all state agree bit for bit, with and without AMSGrad.
* Across the switch: the gradients are replaced by near-constant ones (a fixed random tensor per
  parameter plus 1e-3 noise, the same on both sides), with which the weights group switches at step
  337 and the biases group at step 180, in both implementations, at the same rate. The reference's SGD
  phase scales its stored buffer by (1 - beta1) in place every step (an aliasing bug that makes the
  momentum shrink); ours follows the paper (b <- beta1 b + g, p <- p - Lambda (1 - beta1) b). The test
  patches the reference by undoing that scaling before each of its steps, which turns it into the
  paper's update, and then holds parameters to rtol 1e-9 over 400 steps: measured 6.3e-13 relative
  on the parameters and 1.8e-15 on the buffers (the patch's division by 1 - beta1 rounds), and the
  switched rates are equal. The unpatched difference, and the paper's equations for
  both SGD variants, are tested too.
* A state_dict saved just before and just after a switch resumes bit for bit, on the CPU path (flag read
  for free) and on the accelerators' path (run here on the CPU, never reading the flag).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch_optimizer import SWATS as ReferenceSWATS

from rvc_optim.optim.swats import SWATS
from tests.optim.parity import assert_close, make_model, run_parity, two_groups

GROUPS = [{"lr": 1e-2, "weight_decay": 1e-2}, {"lr": 3e-3}]
BETAS = (0.9, 0.99)
STATE_KEYS = {"step": "step", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "max_exp_avg_sq": "max_exp_avg_sq"}
SWITCH_STEPS = (337, 180)  # weights group, biases group, with the gradients below


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_adam_phase_parity(amsgrad):
    ours, ref, ours_model, ref_model = run_parity(
        lambda groups: SWATS(groups, betas=BETAS, amsgrad=amsgrad, compiled=False),
        lambda groups: ReferenceSWATS(groups, betas=BETAS, amsgrad=amsgrad),
        GROUPS,
        STATE_KEYS,
        rtol=0.0,
        state_rtol=1e-9,
    )
    assert not any(bool(g["switched"]) for g in ours.param_groups)  # noisy gradients: no switch
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):  # lambda: 0-d here, (1,) there
        assert_close(ours.state[p]["exp_avg2"].reshape(1), ref.state[q]["exp_avg2"], f"exp_avg2 of {name}", 1e-9, 0)


def _flat(opt) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def near_constant_gradients(steps: int, noise: float = 1e-3) -> list[list[torch.Tensor]]:
    """A fixed random gradient per parameter plus a little noise, in param-group order: Adam's step then
    settles and the SGD-rate estimate converges, which is what the switch waits for."""
    gen = torch.Generator().manual_seed(5)
    shapes = [p.shape for group in two_groups(make_model(), GROUPS) for p in group["params"]]
    base = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    return [[b + noise * torch.randn(b.shape, generator=gen, dtype=torch.float64) for b in base] for _ in range(steps)]


def _set_grads(opt, grads) -> None:
    for p, g in zip(_flat(opt), grads):
        p.grad = g.clone()


def undo_reference_scaling(ref, seen: set) -> None:
    """The reference stores (1 - beta1) * (beta1 * b + g) after every SGD step but its first: divide it
    out, so that its next step uses the paper's buffer b."""
    for group in ref.param_groups:
        for q in group["params"]:
            buf = ref.state[q].get("momentum_buffer")
            if buf is not None:
                if q in seen:
                    buf.div_(1.0 - group["betas"][0])
                seen.add(q)


def _run_across_the_switch(patch, steps=400):
    grads, seen, t = near_constant_gradients(steps), set(), [0]

    def before_step(ours, ref):
        for opt in (ours, ref):
            _set_grads(opt, grads[t[0]])
        t[0] += 1
        if patch:
            undo_reference_scaling(ref, seen)

    result = run_parity(
        lambda groups: SWATS(groups, betas=BETAS, compiled=False),
        lambda groups: ReferenceSWATS(groups, betas=BETAS),
        GROUPS, None, steps=steps, before_step=before_step, rtol=1e-9,
    )
    return result, seen


def test_switch_happens_and_matches_the_patched_reference():
    (ours, ref, ours_model, ref_model), seen = _run_across_the_switch(patch=True)
    for group, theirs in zip(ours.param_groups, ref.param_groups):
        assert bool(group["switched"]) and theirs["phase"] == "SGD"
        assert group["sgd_lr"].item() == pytest.approx(theirs["lr"], rel=1e-12)
    undo_reference_scaling(ref, seen)  # the reference's last stored buffer, as the paper's b
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        assert_close(ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"], f"buffer of {name}", 1e-9, 0)


def test_the_unpatched_reference_differs_from_its_third_sgd_step():
    """The biases group switches at step 180 on its last parameter, so its SGD steps start at 181; the
    reference's shrunken buffer first enters an update at the third of them."""
    with pytest.raises(AssertionError, match=rf"step {SWITCH_STEPS[1] + 3}: parameter"):
        _run_across_the_switch(patch=False, steps=SWITCH_STEPS[1] + 10)


def _train(opt, grads) -> None:
    for step_grads in grads:
        _set_grads(opt, step_grads)
        opt.step()


def _swats(model, device_path):
    opt = SWATS(two_groups(model, GROUPS), betas=BETAS, compiled=False)
    opt._read_flag_on_cpu = not device_path
    return opt


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
@pytest.mark.parametrize("saved_at", [SWITCH_STEPS[1] - 1, SWITCH_STEPS[1]], ids=["before-switch", "after-switch"])
def test_state_dict_round_trip_across_the_switch(saved_at, device_path):
    grads = near_constant_gradients(SWITCH_STEPS[1] + 10)
    model = make_model()
    opt = _swats(model, device_path)
    _train(opt, grads[:saved_at])
    assert bool(opt.param_groups[1]["switched"]) == (saved_at >= SWITCH_STEPS[1])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(opt, grads[saved_at:])
    resumed_model = make_model()
    resumed_model.load_state_dict(saved_model)
    resumed = _swats(resumed_model, device_path)
    resumed.load_state_dict(saved_opt)
    _train(resumed, grads[saved_at:])
    assert [bool(g["switched"]) for g in resumed.param_groups] == [False, True]
    assert resumed.param_groups[1]["sgd_lr"].item() == opt.param_groups[1]["sgd_lr"].item() > 0
    for (name, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), f"{name} differs after resuming from step {saved_at}"


def test_device_path_equals_cpu_path():
    """The accelerators' path (both candidate steps, committed by 0/1 weights; the flag never read)
    gives the CPU path's result across the switch. Its bias corrections are tensor powers of the step
    counter where the CPU path raises Python floats: measured 3.2e-16 relative apart after 185 steps."""
    grads = near_constant_gradients(SWITCH_STEPS[1] + 5)
    models = [make_model(), make_model()]
    opts = [_swats(model, device_path) for model, device_path in zip(models, (False, True))]
    for opt in opts:
        _train(opt, grads)
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)
        for key in ("exp_avg", "exp_avg_sq", "exp_avg2"):
            torch.testing.assert_close(opts[0].state[p][key], opts[1].state[q][key], rtol=1e-12, atol=1e-300)
    assert [bool(g["switched"]) for g in opts[1].param_groups] == [False, True]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_phase_matches_the_papers_equations(nesterov):
    torch.manual_seed(0)
    rate, beta1, wd = 0.05, 0.8, 0.01
    p = torch.randn(5, 3, dtype=torch.float64)
    param = torch.nn.Parameter(p.clone())
    opt = SWATS([param], betas=(beta1, 0.99), weight_decay=wd, nesterov=nesterov, compiled=False)
    param.grad = torch.randn_like(p)
    opt.step()  # one Adam step creates the group's switch record
    p = param.detach().clone()
    opt.param_groups[0]["switched"] = torch.tensor(True)
    opt.param_groups[0]["sgd_lr"] = torch.tensor(rate, dtype=torch.float64)
    b = torch.zeros_like(p)
    for _ in range(10):
        g = torch.randn_like(p)
        param.grad = g.clone()
        opt.step()
        g = g + wd * p
        b = beta1 * b + g
        p = p - rate * (1 - beta1) * ((g + beta1 * b) if nesterov else b)
        torch.testing.assert_close(param.detach(), p, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(opt.state[param]["momentum_buffer"], b, rtol=1e-12, atol=1e-15)


def test_defaults_and_arguments():
    p = torch.nn.Parameter(torch.zeros(2))
    d = SWATS([p]).defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"], d["amsgrad"], d["nesterov"]) == (
        1e-3, (0.9, 0.999), 1e-3, 0.0, False, False
    )
    with pytest.raises(ValueError, match="beta"):
        SWATS([p], betas=(0.9, 1.0))
