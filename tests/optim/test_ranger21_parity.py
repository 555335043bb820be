"""Ranger21 against the authors' ``ranger21.Ranger21`` 0.1.0 and against its equations.

The authors' code has real bugs (see the module docstring of rvc_optim.optim.ranger21). The parity
runs use configurations where they are inert on both sides: ``weight_decay=0`` and
``normloss_active=False`` (applied to a stale parameter there), ``using_normgc=False`` (applied
twice there), and equal lr in both groups (its warm-down overwrites every group's lr with the
constructor's); the groups differ in eps and beta1 instead. Their runs are long enough that the
warm-up AND the warm-down both happen, with Lookahead merging throughout.

What ours fixes is checked against the equations written out here (``EquationRanger21``: one
parameter at a time, plain torch, following the paper and the authors' evident intent), and by
small tests that isolate one component each.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from rvc_optim.optim.ranger21 import Ranger21, foreach_softplus
from tests.optim.parity import batches, make_model, run_parity, two_groups

import ranger21 as ranger21_reference  # noqa: E402  (a test dependency: missing means a broken install)

ReferenceRanger21 = ranger21_reference.Ranger21

LR = 1e-2
T = 250  # run length of the parity runs
# betas (0.9, 0.99): ceil(2 / 0.01) = 201 warm-up steps would be over 45% of T, so the authors' rule
# takes int(0.22 * 250) = 55; the warm-down starts at int(0.72 * 250) = 180.
BETAS = (0.9, 0.99)
WARMUP = 55
WARMDOWN_START = 180
INERT = dict(weight_decay=0.0, normloss_active=False, using_normgc=False)
GROUPS = [{"eps": 1e-8}, {"eps": 1e-6, "betas": (0.8, 0.99)}]
STATE_KEYS = {k: k for k in ("step", "grad_ma", "neg_grad_ma", "variance_ma", "lookahead_params")}
MADGRAD_KEYS = {k: k for k in ("step", "variance_ma", "grad_sum_sq", "s", "x0", "lookahead_params")}


def reference(groups, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # the authors' class prints its settings
        return ReferenceRanger21(groups, **kwargs)


def quiet_parity(*args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # ... and its progress
        return run_parity(*args, **kwargs)


def _group_steps(optimizer, expected):
    assert [g["step"] for g in optimizer.param_groups] == [expected] * len(optimizer.param_groups)


# --- parity with the authors' code -----------------------------------------------------------------


def test_parity_default_components():
    """AGC, centralisation, PNM, softplus, warm-up, warm-down and Lookahead, as the authors run them."""
    settings = dict(lr=LR, betas=BETAS, num_epochs=1, num_batches_per_epoch=T, **INERT)
    ours, ref, _, _ = quiet_parity(
        lambda groups: Ranger21(groups, **settings),
        lambda groups: reference(groups, **settings),
        GROUPS, STATE_KEYS, steps=T,
    )
    assert ref.num_warmup_iters == ours.num_warmup_iters == WARMUP
    assert ref.start_warm_down == ours.start_warm_down == WARMDOWN_START
    assert ref.warmup_complete and ref.warmdown_displayed  # both phases happened in the run
    _group_steps(ours, T)


@pytest.mark.parametrize(
    "switches",
    [
        dict(use_adaptive_gradient_clipping=False, gc_conv_only=True, softplus=False, lookahead_mergetime=3,
             lookahead_blending_alpha=0.3, num_warmup_iterations=30, warmdown_start_pct=0.5, warmdown_min_lr=1e-3),
        dict(lookahead_active=False, using_gc=False, use_warmup=False, warmdown_active=False, beta_softplus=10,
             agc_clipping_value=5e-3, agc_eps=1e-2),
        dict(warmup_pct_default=0.1, betas=(0.95, 0.999), lookahead_blending_alpha=0.8),
    ],
    ids=["agc-off-gc-conv-only-no-softplus", "lookahead-gc-schedule-off", "warmup-pct"],
)
def test_parity_switches(switches):
    settings = dict(lr=LR, betas=BETAS, num_epochs=2, num_batches_per_epoch=100, **INERT)
    settings.update(switches)
    quiet_parity(
        lambda groups: Ranger21(groups, **settings),
        lambda groups: reference(groups, **settings),
        GROUPS, STATE_KEYS if settings.get("lookahead_active", True) else {
            k: v for k, v in STATE_KEYS.items() if k != "lookahead_params"},
        steps=200,
    )


def test_parity_madgrad_core():
    """use_madgrad=True: group 0 with momentum 0.9 (x0 averaging), group 1 with momentum 0 (x0 recovered)."""
    settings = dict(lr=LR, betas=BETAS, num_epochs=1, num_batches_per_epoch=200, use_madgrad=True, **INERT)
    quiet_parity(
        lambda groups: Ranger21(groups, **settings),
        lambda groups: reference(groups, **settings),
        [{"momentum": 0.9}, {"momentum": 0.0}], MADGRAD_KEYS, steps=200,
    )


def test_parity_lookahead_load_at_validation():
    """Every epoch's end loads the slow weights; the next step's caller restores the backup."""

    def restore(ours, ref):
        if any("backup_params" in s for s in ref.state.values()):
            assert any("backup_params" in s for s in ours.state.values())
            ours.clear_and_load_backup()
            ref.clear_and_load_backup()

    settings = dict(lr=LR, betas=BETAS, num_epochs=4, num_batches_per_epoch=52, lookahead_load_at_validation=True,
                    **INERT)
    ours, _, model, _ = quiet_parity(
        lambda groups: Ranger21(groups, **settings),
        lambda groups: reference(groups, **settings),
        GROUPS, {**STATE_KEYS, "backup_params": "backup_params"}, steps=208, before_step=restore,
    )
    # After step 208 (an epoch's end) the weights are the slow ones and the backup is waiting.
    for p in model.parameters():
        assert torch.equal(p, ours.state[p]["lookahead_params"])
        assert "backup_params" in ours.state[p]


# --- the equations ---------------------------------------------------------------------------------


def unit_norm_eq(x):
    """||x||_u written out: whole tensor for <= 1-D; over dim 1 for 2-D/3-D; over dims 1.. for 4-D+."""
    squares = x * x
    if x.dim() <= 1:
        return squares.sum().sqrt()
    if x.dim() in (2, 3):
        return squares.sum(dim=1, keepdim=True).sqrt()
    return squares.reshape(x.shape[0], -1).sum(dim=1).sqrt().reshape(-1, *([1] * (x.dim() - 1)))


def scheduled_lr_eq(lr, k, total, warmup, start_pct=0.72, min_lr=3e-5):
    """Linear warm-up over ``warmup`` steps, linear warm-down from int(start_pct * total) to min_lr."""
    start = int(start_pct * total)
    if k >= start:
        if lr <= min_lr:
            return lr
        return max(min_lr, lr - (lr - min_lr) * min(1.0, (k - start + 1) / (total - start + 1)))
    return lr * min(1.0, k / warmup) if k <= warmup else lr


def process_gradient_eq(p, g, agc=True, gc=True, normalize=True):
    """AGC, then centralisation, then normalisation: each once."""
    if agc:
        max_norm = 1e-2 * unit_norm_eq(p).clamp_min(1e-3)
        g_norm = unit_norm_eq(g)
        g = torch.where(g_norm > max_norm, g * max_norm / g_norm.clamp_min(1e-6), g)
    if gc and g.dim() > 1:
        g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
    if normalize and g.numel() > 2:
        g = g / (g.std() + 1e-8)
    return g


class EquationRanger21(torch.optim.Optimizer):
    """Ranger21 (Adam/PNM core) one parameter at a time: every parameter gets stable weight decay and
    norm loss, gradients are processed once, each group's lr is scheduled, AMSGrad optional."""

    def __init__(self, params, lr, total, warmup, betas, eps=1e-8, weight_decay=1e-4, normloss_factor=1e-4,
                 amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.total, self.warmup, self.normloss_factor, self.amsgrad = total, warmup, normloss_factor, amsgrad
        self.k = 0

    @torch.no_grad()
    def step(self):
        self.k += 1
        variance_sum, count = 0.0, 0
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, grad_ma=torch.zeros_like(p), neg_grad_ma=torch.zeros_like(p),
                                 variance_ma=torch.zeros_like(p), lookahead_params=p.clone())
                    if self.amsgrad:
                        state["max_variance_ma"] = torch.zeros_like(p)
                state["step"] += 1
                g = process_gradient_eq(p, p.grad)
                state["g"] = g
                state["variance_ma"] = beta2 * state["variance_ma"] + (1 - beta2) * g * g
                variance_sum = variance_sum + (state["variance_ma"] / (1 - beta2 ** state["step"])).sum()
                count += p.numel()
        sigma = torch.sqrt(variance_sum / count)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = scheduled_lr_eq(group["lr"], self.k, self.total, self.warmup)
            for p in group["params"]:
                state = self.state[p]
                t, g = state["step"], state.pop("g")
                p.mul_(1 - group["weight_decay"] * lr / sigma)
                p.mul_(1 - lr * 2 * self.normloss_factor * (1 - 1 / (unit_norm_eq(p) + group["eps"])))
                pos, neg = ("grad_ma", "neg_grad_ma") if t % 2 == 1 else ("neg_grad_ma", "grad_ma")
                state[pos] = beta1**2 * state[pos] + (1 - beta1**2) * g
                v = state["variance_ma"]
                if self.amsgrad:
                    state["max_variance_ma"] = torch.maximum(state["max_variance_ma"], v)
                    v = state["max_variance_ma"]
                denom = F.softplus(v.sqrt() / math.sqrt(1 - beta2**t) + group["eps"], beta=50)
                noise_norm = math.sqrt((1 + beta2) ** 2 + beta2**2)
                p.sub_(lr / (1 - beta1**t) * (2 * state[pos] - state[neg]) / noise_norm / denom)
                if self.k % 5 == 0:
                    p.copy_(0.5 * p + 0.5 * state["lookahead_params"])
                    state["lookahead_params"] = p.clone()


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_equations_every_component_two_lrs(amsgrad):
    """Stable decay and norm loss on every parameter, normalisation once, each group's lr scheduled."""
    groups = [{"lr": 2e-2, "weight_decay": 0.05, "eps": 1e-8}, {"lr": 4e-3, "weight_decay": 0.01, "eps": 1e-6}]
    quiet_parity(
        lambda g: Ranger21(g, lr=1e-3, betas=BETAS, num_epochs=1, num_batches_per_epoch=T, normloss_factor=0.05,
                           amsgrad=amsgrad),
        lambda g: EquationRanger21(g, lr=1e-3, total=T, warmup=WARMUP, betas=BETAS, normloss_factor=0.05,
                                   amsgrad=amsgrad),
        groups, {**STATE_KEYS, "max_variance_ma": "max_variance_ma"}, steps=T,
    )


def _one_step(model, **settings):
    opt = Ranger21(two_groups(model, [{}, {}]), **settings)
    tokens, target = batches(1)[0]
    torch.mean((model(tokens) - target) ** 2).backward()
    grads = {p: p.grad.clone() for p in model.parameters()}
    opt.step()
    return opt, grads


def _first_step_sigma(start, model, grads):
    """After one step v-hat = g^2 exactly, so sigma = sqrt(mean of g^2 over all parameters)."""
    processed = [process_gradient_eq(p0, grads[p], normalize=False) for p0, p in zip(start, model.parameters())]
    return torch.sqrt(sum((g * g).sum() for g in processed) / sum(g.numel() for g in processed))


def test_row_blocks_change_nothing_but_rounding(monkeypatch):
    """A CPU step cuts large tensors into row blocks (ranger21.row_blocks): forced down to one row per
    block on the parity model, 20 steps with every component on agree with whole tensors to rounding."""
    import rvc_optim.optim.ranger21 as module

    def run(blocked):
        if blocked:
            monkeypatch.setattr(module, "ROW_BLOCK_MIN_NUMEL", 0)
            monkeypatch.setattr(module, "ROW_BLOCK_NUMEL", 1)
        model = make_model()
        opt = Ranger21(two_groups(model, [{}, {"weight_decay": 0.0}]), lr=LR, betas=BETAS, weight_decay=0.1,
                       normloss_factor=0.05, num_epochs=1, num_batches_per_epoch=T)
        cut = []
        monkeypatch.setattr(module, "row_blocks", lambda *ts: cut.append(len(out := row_blocks(*ts))) or out)
        for tokens, target in batches(20):
            opt.zero_grad()
            torch.mean((model(tokens) - target) ** 2).backward()
            opt.step()
        monkeypatch.undo()
        return model, opt, max(cut)

    row_blocks = module.row_blocks
    whole, whole_opt, whole_cut = run(blocked=False)
    rows, rows_opt, rows_cut = run(blocked=True)
    assert whole_cut == 1 and rows_cut > 1
    for a, b in zip(whole.parameters(), rows.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-15)
        for key in ("grad_ma", "neg_grad_ma", "variance_ma"):
            torch.testing.assert_close(rows_opt.state[b][key], whole_opt.state[a][key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("agc", [True, False])
def test_a_cpu_step_reads_each_parameters_unit_norms_once(monkeypatch, agc):
    """AGC and the norm loss both need ||p||_u, and p does not change between the two passes: on a CPU
    the first pass keeps the norms it takes and the decay uses them (one unit norm of p per tensor per
    step, plus g's for AGC), with the same result as taking them again (the parity tests above)."""
    import rvc_optim.optim.ranger21 as module

    model = make_model()
    params = list(model.parameters())
    opt = Ranger21(params, lr=LR, betas=BETAS, num_epochs=1, num_batches_per_epoch=T, normloss_factor=0.05,
                   use_adaptive_gradient_clipping=agc)
    taken = []
    unit_norm = module.unit_norm
    monkeypatch.setattr(module, "unit_norm", lambda x: taken.append(x.data_ptr()) or unit_norm(x))
    for tokens, target in batches(3):
        opt.zero_grad()
        torch.mean((model(tokens) - target) ** 2).backward()
        opt.step()
    of_params = [ptr for ptr in taken if ptr in {p.data_ptr() for p in params}]
    assert len(of_params) == 3 * len(params)
    assert len(taken) == 3 * len(params) * (2 if agc else 1)


def test_stable_weight_decay_reaches_every_parameter():
    base = dict(lr=LR, betas=BETAS, num_epochs=1, num_batches_per_epoch=T, normloss_active=False,
                using_normgc=False, lookahead_active=False)
    plain, decayed = make_model(), make_model()
    start = [p.detach().clone() for p in plain.parameters()]
    _one_step(plain, weight_decay=0.0, **base)
    _, grads = _one_step(decayed, weight_decay=0.3, **base)
    lr_1 = LR / WARMUP
    sigma = _first_step_sigma(start, decayed, grads)
    for p0, a, b in zip(start, plain.parameters(), decayed.parameters()):
        # the update is additive and the same on both sides; the decay multiplies p before it
        torch.testing.assert_close(a - b, p0 * 0.3 * lr_1 / sigma, rtol=1e-9, atol=1e-15)
        assert (a - b).abs().max() > 0 or p0.abs().max() == 0


def test_norm_loss_reaches_every_parameter():
    base = dict(lr=LR, betas=BETAS, num_epochs=1, num_batches_per_epoch=T, weight_decay=0.0, using_normgc=False,
                lookahead_active=False, eps=1e-8)
    plain, pulled = make_model(), make_model()
    start = [p.detach().clone() for p in plain.parameters()]
    _one_step(plain, normloss_active=False, **base)
    _one_step(pulled, normloss_active=True, normloss_factor=0.2, **base)
    lr_1 = LR / WARMUP
    for p0, a, b in zip(start, plain.parameters(), pulled.parameters()):
        expected = p0 * lr_1 * 2 * 0.2 * (1 - 1 / (unit_norm_eq(p0) + 1e-8))
        nonzero = p0 != 0  # the zero-initialised bias stays zero
        torch.testing.assert_close((a - b)[nonzero], expected[nonzero], rtol=1e-9, atol=1e-15)
        assert torch.equal(a[~nonzero], b[~nonzero])


@pytest.mark.parametrize("beta", [50.0, 1.0, 0.3])
def test_softplus_is_torchs_on_both_sides_of_the_cut_off(beta):
    """The maskless form (max of x and the clamped log form) against torch's definition: negative values,
    values on both sides of beta * x = 20, and the extremes."""
    x = torch.cat([torch.linspace(-30, 30, 2001, dtype=torch.float64) / beta,
                   torch.tensor([0.0, 1e-300, 20 / beta, math.nextafter(20 / beta, 0), math.nextafter(20 / beta, 99),
                                 1e300, -1e300, float("inf")], dtype=torch.float64)])
    def masked(x):  # torch's definition, term by term
        return torch.where(beta * x > 20, x, torch.log1p(torch.exp((beta * x).clamp_max(20))) / beta)

    ours, = foreach_softplus([x], beta)
    # Just above the cut-off, where torch's softplus jumps down by log1p(e^-20) / beta, the maximum keeps
    # the log form a little longer: at most 1.03e-10 relative, on at most 1.03e-10 relative of x's range.
    window = (beta * x > 20) & (beta * x < 20 + 2.1e-9)
    assert window.any()
    assert torch.equal(ours[~window], masked(x)[~window])
    torch.testing.assert_close(ours[window], x[window], rtol=1.1e-10, atol=0)
    # torch's own kernel rounds its exp and log1p differently (1e-10 relative where the result is 1e-15)
    torch.testing.assert_close(ours, F.softplus(x, beta=beta), rtol=1e-9, atol=0)
    x32 = x.float()
    ours32, = foreach_softplus([x32], beta)
    torch.testing.assert_close(ours32, masked(x32), rtol=2 ** -23, atol=0)  # the maximum: within an ulp


@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 3, 5), (4, 3, 2, 2)], ids=["1d", "2d", "3d", "4d"])
def test_agc_unit_norms(shape):
    """With centralisation and normalisation off, p.grad after the step is the clipped gradient."""
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64))
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    scale = torch.logspace(-3, 0, shape[0], dtype=torch.float64).reshape(-1, *([1] * (len(shape) - 1)))
    g = g * scale  # along the units: some clip, some don't
    p.grad = g.clone()
    p0 = p.detach().clone()  # AGC compares with the weights before the step
    Ranger21([p], lr=LR, num_epochs=1, num_batches_per_epoch=10, using_gc=False, using_normgc=False,
             agc_clipping_value=0.05).step()
    # The unit norms, written out per rank: whole vector; rows; (out, k) slices over in; per filter.
    if len(shape) == 1:
        p_norm, g_norm = p0.pow(2).sum().sqrt(), g.pow(2).sum().sqrt()
    elif len(shape) in (2, 3):
        p_norm, g_norm = p0.pow(2).sum(1, keepdim=True).sqrt(), g.pow(2).sum(1, keepdim=True).sqrt()
    else:
        p_norm = p0.pow(2).sum((1, 2, 3), keepdim=True).sqrt()
        g_norm = g.pow(2).sum((1, 2, 3), keepdim=True).sqrt()
    limit = 0.05 * p_norm.clamp_min(1e-3)
    expected = torch.where(g_norm > limit, g * limit / g_norm, g)
    clipped = (g_norm > limit).expand_as(g)
    assert clipped.any() and (len(shape) == 1 or not clipped.all())
    torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=0)


def test_gradient_processed_once():
    """Centralisation and normalisation once: p.grad and v after one step hold the once-processed g."""
    model = make_model()
    opt, grads = _one_step(model, lr=LR, betas=BETAS, num_epochs=1, num_batches_per_epoch=T)
    for p in model.parameters():
        p0 = opt.state[p]["lookahead_params"]  # AGC saw the weights before the step: the slow weights
        once = process_gradient_eq(p0, grads[p])
        torch.testing.assert_close(p.grad, once, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(opt.state[p]["variance_ma"], (1 - BETAS[1]) * once * once, rtol=1e-12, atol=0)
        torch.testing.assert_close(opt.state[p]["grad_ma"], (1 - BETAS[0] ** 2) * once, rtol=1e-12, atol=0)
        if p.numel() > 2 and once.abs().max() > 0:
            twice = process_gradient_eq(p0, once, agc=False)
            assert p.grad.std().sub(1).abs() < 1e-4  # normalised to unit std (up to the 1e-8 in std + 1e-8)
            assert not torch.equal(once, twice)  # what the authors' second pass would change


def test_scheduled_lr_per_group():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 2e-2},
              {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3},
              {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.0},
              {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-5},
              {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3, "warmdown_min_lr": 5e-4}]
    opt = Ranger21(groups, lr=1e-3, betas=BETAS, num_epochs=1, num_batches_per_epoch=T)
    for k in range(1, T + 20):
        for group in opt.param_groups:
            min_lr = group["warmdown_min_lr"]
            expected = scheduled_lr_eq(group["lr"], k, T, WARMUP, min_lr=min_lr)
            assert opt.scheduled_lr(group, k) == pytest.approx(expected, rel=1e-15, abs=0)
    # spot values: the plateau, the warm-down's first and last steps, the frozen group, the lr below the floor
    assert opt.scheduled_lr(opt.param_groups[0], 100) == 2e-2
    first_down = 2e-2 - (2e-2 - 3e-5) / (T - WARMDOWN_START + 1)
    assert opt.scheduled_lr(opt.param_groups[0], WARMDOWN_START) == pytest.approx(first_down, rel=1e-15)
    assert opt.scheduled_lr(opt.param_groups[0], T) == 3e-5  # the floor at the run's last step
    assert opt.scheduled_lr(opt.param_groups[2], 200) == 0.0
    assert opt.scheduled_lr(opt.param_groups[3], 200) == 1e-5
    assert opt.scheduled_lr(opt.param_groups[4], T + 10) == pytest.approx(5e-4, rel=1e-15)


def test_warmup_type_none_is_no_warmup():
    params = [torch.nn.Parameter(torch.zeros(2))]
    off = Ranger21(params, lr=LR, num_epochs=1, num_batches_per_epoch=T, use_warmup=False)
    none = Ranger21(params, lr=LR, num_epochs=1, num_batches_per_epoch=T, warmup_type=None)
    for k in range(1, T + 1):
        assert off.scheduled_lr(off.param_groups[0], k) == none.scheduled_lr(none.param_groups[0], k)
    assert none.scheduled_lr(none.param_groups[0], 1) == LR


def test_amsgrad_keeps_the_running_maximum():
    model = make_model()
    # beta2 = 0.5 so v falls on some steps (with 0.99 it only rises this early)
    opt = Ranger21(model.parameters(), lr=LR, betas=(0.9, 0.5), num_epochs=1, num_batches_per_epoch=T, amsgrad=True)
    running = {}
    for tokens, target in batches(12):
        opt.zero_grad()
        torch.mean((model(tokens) - target) ** 2).backward()
        opt.step()
        for p in model.parameters():
            v = opt.state[p]["variance_ma"]
            running[p] = torch.maximum(running.get(p, torch.zeros_like(v)), v)
    for p in model.parameters():
        assert torch.equal(opt.state[p]["max_variance_ma"], running[p])
    assert any(not torch.equal(running[p], opt.state[p]["variance_ma"]) for p in model.parameters())


# --- protocol --------------------------------------------------------------------------------------


def _train(model, opt, data):
    for tokens, target in data:
        opt.zero_grad()
        torch.mean((model(tokens) - target) ** 2).backward()
        opt.step()


def test_state_dict_resume_mid_run_is_bit_identical():
    """A resume crosses a Lookahead merge, the end of the warm-up and the start of the warm-down."""
    settings = dict(lr=LR, betas=(0.9, 0.9), num_epochs=2, num_batches_per_epoch=20, amsgrad=True)
    data = batches(40)  # warm-up 20 steps (ceil(2 / 0.1)), warm-down from step 28
    model = make_model()
    straight = Ranger21(two_groups(model, GROUPS), **settings)
    _train(model, straight, data)

    first_model = make_model()
    first = Ranger21(two_groups(first_model, GROUPS), **settings)
    _train(first_model, first, data[:23])
    buffer = io.BytesIO()
    torch.save({"model": first_model.state_dict(), "opt": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert [g["step"] for g in saved["opt"]["param_groups"]] == [23, 23]

    resumed_model = make_model(seed=7)
    resumed_model.load_state_dict(saved["model"])
    resumed = Ranger21(two_groups(resumed_model, GROUPS), **settings)
    resumed.load_state_dict(saved["opt"])
    _train(resumed_model, resumed, data[23:])
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), f"{name} differs after resume"
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        for key, value in straight.state[a].items():
            other = resumed.state[b][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def test_param_group_added_mid_run_starts_its_own_schedule():
    model = make_model()
    late = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = Ranger21(model.parameters(), lr=LR, betas=BETAS, num_epochs=1, num_batches_per_epoch=T)
    _train(model, opt, batches(3))
    opt.add_param_group({"params": [late]})
    before = late.detach().clone()
    tokens, target = batches(1)[0]
    opt.zero_grad()
    torch.mean((model(tokens) - target) ** 2).backward()
    late.grad = torch.randn_like(late)
    opt.step()
    assert [g["step"] for g in opt.param_groups] == [4, 1]
    assert opt.state[late]["step"] == 1 and not torch.equal(late, before)


def test_all_zero_gradients_do_not_crash():
    """sigma is 0 until a gradient is non-zero: no decay then (the authors' code divides by zero)."""
    model = make_model()
    opt = Ranger21(model.parameters(), lr=LR, num_epochs=1, num_batches_per_epoch=20, weight_decay=0.1,
                   normloss_active=False)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    _train(model, opt, batches(3))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_run_length_is_required():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="run length.*num_epochs"):
        Ranger21(params, lr=LR, num_batches_per_epoch=10)
    with pytest.raises(ValueError, match="run length.*num_batches_per_epoch"):
        Ranger21(params, lr=LR, num_epochs=3)
    with pytest.raises(TypeError):
        Ranger21(params, num_epochs=1, num_batches_per_epoch=10)  # lr is required, as in the authors'


@pytest.mark.parametrize(
    "bad",
    [dict(use_adabelief=True), dict(use_cheb=True), dict(momentum_type="sgd"), dict(decay_type="l2"),
     dict(warmup_type="exponential"), dict(lookahead_mergetime=0), dict(momentum=1.0)],
    ids=lambda d: next(iter(d)),
)
def test_broken_or_invalid_options_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Ranger21([torch.nn.Parameter(torch.zeros(3))], lr=LR, num_epochs=1, num_batches_per_epoch=10, **bad)


def test_pnm_momentum_factor_warns_it_has_no_effect():
    with pytest.warns(UserWarning, match="pnm_momentum_factor"):
        Ranger21([torch.nn.Parameter(torch.zeros(3))], lr=LR, num_epochs=1, num_batches_per_epoch=10,
                 pnm_momentum_factor=0.5)


def test_logs_instead_of_printing(capsys, caplog):
    model = make_model()
    with caplog.at_level(logging.INFO, logger="rvc_optim.optim.ranger21"):
        opt = Ranger21(model.parameters(), lr=LR, betas=BETAS, num_epochs=1, num_batches_per_epoch=10)
        _train(model, opt, batches(10))
    assert capsys.readouterr().out == ""
    text = caplog.text
    assert "warm-up over 2 steps" in text and "warm-up complete" in text and "warm-down starts" in text
