"""AnyPrecisionAdamW against the authors' update written out below (torchdistx is not installable),
against torch.optim.AdamW (to which it reduces with float32 buffers and no Kahan summation), and
against a float32 AdamW run for bfloat16 weights with and without Kahan summation.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch.optim import Optimizer

from rvc_optim.optim._foreach import foreach_mul_by_constant_
from rvc_optim.optim.any_precision_adamw import AnyPrecisionAdamW
from tests.optim.parity import batches, make_model, run_parity, two_groups


def _buffers(dtype):
    return dict(momentum_dtype=dtype, variance_dtype=dtype, compensation_buffer_dtype=dtype)


F64_BUFFERS, F32_BUFFERS, BF16_BUFFERS = _buffers(torch.float64), _buffers(torch.float32), _buffers(torch.bfloat16)
GROUPS = [{"lr": 1e-2, "weight_decay": 0.05}, {"lr": 4e-3, "weight_decay": 0.0}]
BETAS = (0.85, 0.99)
STATE_KEYS = {"step": "step", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "compensation": "compensation"}


class AuthorsUpdate(Optimizer):
    """torchdistx's AnyPrecisionAdamW update, one tensor at a time, as the authors compute it: the step
    counter is a float32 tensor, the bias corrections come from it in float32, buffers live in their
    own dtypes and every operation rounds to the dtype of the tensor it writes."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, use_kahan_summation=False,
                 momentum_dtype=torch.float32, variance_dtype=torch.bfloat16,
                 compensation_buffer_dtype=torch.bfloat16):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, use_kahan_summation=use_kahan_summation,
                        momentum_dtype=momentum_dtype, variance_dtype=variance_dtype,
                        compensation_buffer_dtype=compensation_buffer_dtype)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd, kahan = group["lr"], group["weight_decay"], group["use_kahan_summation"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, s = p.grad, self.state[p]
                if not s:
                    s["step"] = torch.tensor(0.0, dtype=torch.float32)
                    s["exp_avg"] = torch.zeros_like(p, dtype=group["momentum_dtype"])
                    s["exp_avg_sq"] = torch.zeros_like(p, dtype=group["variance_dtype"])
                    if kahan:
                        s["compensation"] = torch.zeros_like(p, dtype=group["compensation_buffer_dtype"])
                s["step"] += 1
                t = s["step"]
                if wd:
                    p.mul_(1 - lr * wd)
                m, v = s["exp_avg"], s["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step_size = lr / (1 - beta1**t)  # float32: beta ** (float32 tensor)
                denom = v.sqrt() / (1 - beta2**t) ** 0.5 + group["eps"]
                if kahan:
                    c = s["compensation"]
                    c.addcdiv_(m, denom, value=-step_size.item())
                    before = p.clone()
                    p.add_(c)
                    c.add_(before - p)
                else:
                    p.addcdiv_(m, denom, value=-step_size.item())


# --- float64: the authors' arithmetic to 1e-9 ----------------------------------------------------------


@pytest.mark.parametrize("kahan", [False, True], ids=["plain", "kahan"])
def test_float64_matches_authors_update(kahan):
    """Float64 weights and buffers. Matching to 1e-9 needs the authors' float32 bias corrections
    (ours computes them the same way on purpose; float64 ones would be 3e-6 away, see below)."""
    settings = dict(betas=BETAS, use_kahan_summation=kahan, **F64_BUFFERS)
    ours, _, _, _ = run_parity(
        lambda groups: AnyPrecisionAdamW(groups, **settings),
        lambda groups: AuthorsUpdate(groups, **settings),
        GROUPS,
        STATE_KEYS,
        # the compensation is rounding residue, ~1e-17 in float64: compare it against the weights' scale
        state_atol=1e-15,
    )
    states = [ours.state[p] for g in ours.param_groups for p in g["params"]]
    assert all(s["step"].dtype == torch.float32 and s["step"].device.type == "cpu" for s in states)
    assert all(s["exp_avg"].dtype == torch.float64 for s in states)
    assert all(("compensation" in s) == kahan for s in states)


def test_float64_weights_with_default_buffers_match_authors_update():
    """The authors' defaults (float32 momentum, bfloat16 variance) on float64 weights. A bfloat16
    variance makes the run chaotic (one differently rounded bit grows to percents within 200 steps),
    so this holds only because every operation rounds where the authors' does: measured 0 difference."""
    ours, _, _, _ = run_parity(
        lambda groups: AnyPrecisionAdamW(groups, betas=BETAS),
        lambda groups: AuthorsUpdate(groups, betas=BETAS),
        GROUPS,
        {"step": "step", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    )
    state = ours.state[ours.param_groups[0]["params"][0]]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.bfloat16


def test_float32_bias_corrections_are_deliberate():
    """Against torch.optim.AdamW in float64, whose bias corrections are float64: measured 3.9e-7 apart
    (relative to each tensor's largest weight) after 20 steps, which is only the float32 rounding of
    1 - beta^t: the tests above match the authors' float32 corrections to 1e-9."""
    model, ref_model = make_model(), make_model()
    ours = AnyPrecisionAdamW(model.parameters(), lr=1e-2, betas=BETAS, **F64_BUFFERS)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, betas=BETAS, weight_decay=0.0, foreach=False)
    _train_both(model, ours, ref_model, ref, steps=20)
    pairs = zip(model.parameters(), ref_model.parameters())
    rel = max(((p - q).abs().max() / q.abs().max()).item() for p, q in pairs)
    assert 1e-8 < rel < 1e-4, rel


# --- reduction to AdamW ------------------------------------------------------------------------------


def _train_both(model, opt, ref_model, ref, steps, dtype=torch.float64):
    for tokens, target in batches(steps):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            torch.mean((m(tokens) - target.to(dtype)) ** 2).backward()
            o.step()


def test_float32_buffers_without_kahan_are_adamw():
    """Float32 weights and buffers, no Kahan: torch.optim.AdamW to float32 precision. The bias
    corrections differ in the last float32 bit (ours float32, torch's float64): measured 8e-7
    (weights) and 1.8e-6 (exp_avg) relative to each tensor's largest value after 200 steps."""
    model, ref_model = make_model().float(), make_model().float()
    ours = AnyPrecisionAdamW(two_groups(model, GROUPS), betas=BETAS, **F32_BUFFERS)
    ref = torch.optim.AdamW(two_groups(ref_model, GROUPS), betas=BETAS, foreach=False)
    _train_both(model, ours, ref_model, ref, steps=200, dtype=torch.float32)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5 * q.abs().max().item(), msg=lambda m: f"{name}: {m}")
        m, ref_m = ours.state[p]["exp_avg"], ref.state[q]["exp_avg"]
        torch.testing.assert_close(m, ref_m, rtol=0, atol=1e-5 * ref_m.abs().max().item(),
                                   msg=lambda m: f"exp_avg of {name}: {m}")


# --- Kahan summation ---------------------------------------------------------------------------------


def test_kahan_in_float32_matches_authors_update():
    """Float32 weights and compensation, where the compensation does work (it is ~1e-9, not 0 as in
    float64). Every operation rounds where the authors' does: measured 0 difference after 100 steps,
    in the weights and in the compensation, so both are compared exactly."""
    model, ref_model = make_model().float(), make_model().float()
    settings = dict(betas=BETAS, use_kahan_summation=True, **F32_BUFFERS)
    ours = AnyPrecisionAdamW(two_groups(model, GROUPS), **settings)
    ref = AuthorsUpdate(two_groups(ref_model, GROUPS), **settings)
    _train_both(model, ours, ref_model, ref, steps=100, dtype=torch.float32)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(ours.state[p]["compensation"], ref.state[q]["compensation"], rtol=0,
                                   atol=0, msg=lambda m: f"compensation of {name}: {m}")
    assert any(ours.state[p]["compensation"].abs().max() > 0 for p in model.parameters())


def _quadratic_run(make_optimizer, dtype, steps=300):
    """Minimise a fixed least-squares problem from weights in [0.5, 1.5] with updates of ~lr = 1e-3,
    below half a bfloat16 step there (2**-9..2**-8 = 2e-3..3.9e-3). The gradient is computed in
    float32 from the current weights and handed to the optimizer in the weights' dtype."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 32, generator=gen) / 8
    b = torch.randn(64, generator=gen)
    x = torch.nn.Parameter((torch.rand(32, generator=gen) + 0.5).to(dtype))
    opt = make_optimizer([x])
    for _ in range(steps):
        xf = x.detach().float()
        x.grad = (a.T @ (a @ xf - b)).to(dtype)
        opt.step()
    return x.detach().float()


@pytest.mark.parametrize(
    "buffers", [BF16_BUFFERS, F32_BUFFERS, {}], ids=["bf16-buffers", "fp32-buffers", "default-buffers"]
)
def test_bf16_weights_with_kahan_track_float32_adamw(buffers):
    reference = _quadratic_run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0), torch.float32)
    start = _quadratic_run(lambda ps: torch.optim.SGD(ps, lr=0.0), torch.float32, steps=1)
    kahan = _quadratic_run(lambda ps: AnyPrecisionAdamW(ps, use_kahan_summation=True, **buffers), torch.bfloat16)
    plain = _quadratic_run(lambda ps: AnyPrecisionAdamW(ps, **buffers), torch.bfloat16)
    moved = (reference - start).norm()
    err_kahan, err_plain = (kahan - reference).norm(), (plain - reference).norm()
    # Measured: the float32 run moves the weights by 1.49 in norm. Plain bfloat16 weights stay where
    # they started (every update rounds away): 1.49 from it. With Kahan summation: 0.049 with bfloat16
    # buffers, 0.013 with float32 buffers, 0.057 with the default ones (ratios 0.033, 0.009, 0.038).
    assert err_plain > 0.9 * moved, (err_plain, moved)
    assert err_kahan < 0.1 * err_plain, (err_kahan, err_plain)
    # and both are the authors' arithmetic, bit for bit
    authors_kahan = _quadratic_run(
        lambda ps: AuthorsUpdate(ps, use_kahan_summation=True, **buffers), torch.bfloat16
    )
    authors_plain = _quadratic_run(lambda ps: AuthorsUpdate(ps, **buffers), torch.bfloat16)
    assert torch.equal(kahan, authors_kahan) and torch.equal(plain, authors_plain)


def test_mul_by_constant_is_exact_in_bfloat16():
    """The helper that replaces torch's CPU _foreach_mul_(list, number), which rounds the number to
    bfloat16 first (0.999 -> 1.0: a bfloat16 variance that never decays)."""
    v = torch.rand(100).bfloat16()
    for beta in (0.99, 0.999, 0.9):
        scaled = [v.clone(), v.clone()]
        foreach_mul_by_constant_(scaled, beta)
        assert all(torch.equal(t, v.clone().mul_(beta)) for t in scaled)


# --- protocol --------------------------------------------------------------------------------------


def test_step_returns_the_closure_loss():
    p = torch.nn.Parameter(torch.ones(3))
    opt = AnyPrecisionAdamW([p])

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() == 3.0


def test_parameters_keep_their_own_step_count():
    """A parameter that misses steps (no gradient) keeps its own count and bias corrections, as the
    authors' per-parameter ``step``; parameters of one group then have different counts."""
    torch.manual_seed(1)
    ours_ps = [torch.nn.Parameter(torch.randn(5, dtype=torch.float64)) for _ in range(3)]
    ref_ps = [torch.nn.Parameter(p.detach().clone()) for p in ours_ps]
    ours = AnyPrecisionAdamW(ours_ps, lr=1e-2, **F64_BUFFERS)
    ref = AuthorsUpdate(ref_ps, lr=1e-2, **F64_BUFFERS)
    for step in range(12):
        grads = [torch.randn(5, dtype=torch.float64) for _ in range(3)]
        for i in range(3):
            present = not (i == 1 and step % 3 == 0) and not (i == 2 and step < 4)
            for ps in (ours_ps, ref_ps):
                ps[i].grad = grads[i].clone() if present else None
        ours.step()
        ref.step()
    assert [ours.state[p]["step"].item() for p in ours_ps] == [12.0, 8.0, 8.0]
    for p, q in zip(ours_ps, ref_ps):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


def _save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_keeps_dtypes_and_resumes_exactly(dtype):
    settings = dict(lr=1e-2, betas=BETAS, weight_decay=0.01, use_kahan_summation=True, momentum_dtype=torch.float32,
                    variance_dtype=torch.bfloat16, compensation_buffer_dtype=torch.bfloat16)
    data = batches(12)

    def train(model, opt, chunk):
        for tokens, target in chunk:
            opt.zero_grad()
            torch.mean((model(tokens) - target.to(dtype)) ** 2).backward()
            opt.step()

    straight_model = make_model().to(dtype)
    straight = AnyPrecisionAdamW(straight_model.parameters(), **settings)
    train(straight_model, straight, data)

    model = make_model().to(dtype)
    first = AnyPrecisionAdamW(model.parameters(), **settings)
    train(model, first, data[:6])
    saved = _save_load(first.state_dict())
    assert saved["param_groups"][0]["variance_dtype"] is torch.bfloat16
    assert saved["param_groups"][0]["momentum_dtype"] is torch.float32
    resumed = AnyPrecisionAdamW(model.parameters(), lr=1e-3)  # everything else must come from the save
    resumed.load_state_dict(saved)
    group = resumed.param_groups[0]
    assert (group["variance_dtype"], group["compensation_buffer_dtype"], group["use_kahan_summation"]) == (
        torch.bfloat16, torch.bfloat16, True)
    for p in model.parameters():
        s = resumed.state[p]
        assert (s["exp_avg"].dtype, s["exp_avg_sq"].dtype, s["compensation"].dtype) == (
            torch.float32, torch.bfloat16, torch.bfloat16)
        assert s["step"].dtype == torch.float32 and s["step"].item() == 6.0
    train(model, resumed, data[6:])
    for (name, p), q in zip(model.named_parameters(), straight_model.parameters()):
        assert torch.equal(p, q), f"{name} differs after resume by {(p - q).abs().max():.3g}"


def test_defaults_are_the_authors():
    d = AnyPrecisionAdamW([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"], d["use_kahan_summation"]) == (
        1e-3, (0.9, 0.999), 1e-8, 0.0, False)
    assert (d["momentum_dtype"], d["variance_dtype"], d["compensation_buffer_dtype"]) == (
        torch.float32, torch.bfloat16, torch.bfloat16)


@pytest.mark.parametrize("name", ["momentum_dtype", "variance_dtype", "compensation_buffer_dtype"])
def test_dtype_arguments_are_checked(name):
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match=name):
        AnyPrecisionAdamW([p], **{name: torch.int32})
    with pytest.raises(ValueError, match=name):
        AnyPrecisionAdamW([p], **{name: "bfloat16"})
