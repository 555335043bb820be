"""DAdaptAdam, DAdaptAdaGrad and DAdaptSGD against the authors' ``dadaptation`` 3.2, against the
update equations written out below where ours deliberately differs (each group's own lr, momentum or
weight decay is honoured), and the edge cases the references do not survive (all-zero gradients).

Tolerance: rtol 1e-9, atol 0, for parameters, state and group values. Ours takes the global sums
(the numerator and the size of ``s``) with multi-tensor reductions where the reference adds one
``.item()`` per parameter, so the last bits differ and reach ``d`` and every parameter; measured over
the 200-step runs below: at most 2.2e-15 absolute, 4.7e-15 relative to a tensor's largest element,
4e-12 relative element by element.

Configurations. Every run below is one where the training itself is stable: with the defaults
(lr=1.0, coupled decay, no bias correction) DAdaptAdam drives this tiny model into a chaotic regime
(the loss rises from 1.3 to 2.4 by step 32, d identical on both sides) where the last-bit
difference of the sums grows about 10x per step (measured: 1e-15 at step 30, 1e-8 at step 42); the
reference's DAdaptSGD with lr=1.0 and weight decay 0.01 diverges here (loss 1e201). Hence lr 0.1 (Adam) and 0.3 (SGD)
in those runs; the other switches run at the authors' lr=1.0 where that is stable.
"""

from __future__ import annotations

import copy
import logging
import math

import dadaptation
import pytest
import torch

from rvc_optim.optim import _foreach
from rvc_optim.optim.dadapt import DAdaptAdaGrad, DAdaptAdam, DAdaptSGD
from tests.optim.parity import DTYPE, assert_close, batches, make_model, run_parity, two_groups

RTOL = 1e-9
ATOL = 0.0

ADAM_STATE = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "s": "s", "step": "step"}
ADAGRAD_STATE = {"alphak": "alphak", "sk": "sk", "x0": "x0"}
SGD_STATE = {"s": "s", "x0": "x0"}

ADAM_GROUP_KEYS = ("d", "k", "numerator_weighted")
ADAGRAD_GROUP_KEYS = ("d", "k", "gsq_weighted", "sksq_weighted", "skl1")
SGD_GROUP_KEYS = ("d", "k", "numerator_weighted", "g0_norm")

# The references allow one lr (Adam, SGD) or read group 0's (AdaGrad); the groups differ in weight
# decay and eps instead. DAdaptSGD's reference reads group 0's weight decay: both groups share it.
ADAM_GROUPS = [{"weight_decay": 0.01, "eps": 1e-8}, {"weight_decay": 0.0, "eps": 1e-6}]
ADAGRAD_GROUPS = [{"weight_decay": 0.01, "eps": 1e-6}, {"weight_decay": 0.0, "eps": 1e-8}]
SGD_GROUPS = [{"weight_decay": 0.01}, {"weight_decay": 0.01}]


def _number(value) -> float:
    return float(value) if isinstance(value, torch.Tensor) else value


def compare_groups(ours, ref, keys, when="") -> None:
    """Group values: ``k`` exactly, the floats (d and the running sums) to RTOL."""
    for i, (mine, theirs) in enumerate(zip(ours.param_groups, ref.param_groups)):
        for key in keys:
            if key not in theirs:  # DAdaptSGD's g0_norm appears after the first step
                continue
            a, b = _number(mine[key]), _number(theirs[key])
            if key == "k":
                assert a == b, f"{when} group {i} k: {a} vs reference {b}"
            else:
                assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL), f"{when} group {i} {key}: {a!r} vs {b!r}"


def parity(make_ours, make_ref, groups, state_keys, group_keys, steps=200, before_step=None):
    def check(ours, ref):
        compare_groups(ours, ref, group_keys, "before a step:")
        if before_step is not None:
            before_step(ours, ref)

    ours, ref, ours_model, ref_model = run_parity(
        make_ours, make_ref, groups, state_keys, steps=steps, rtol=RTOL, atol=ATOL, before_step=check
    )
    compare_groups(ours, ref, group_keys, "after the last step:")
    return ours, ref, ours_model, ref_model


def zero_grads_at(*steps):
    """A before_step hook that zeroes every gradient (both sides) at the given 1-based steps."""
    count = {"step": 0}

    def hook(ours, ref):
        count["step"] += 1
        if count["step"] in steps:
            for opt in (ours, ref):
                for group in opt.param_groups:
                    for p in group["params"]:
                        p.grad.zero_()

    return hook


@pytest.fixture(params=["per-tensor", "multi-tensor"])
def reduction_branch(request, monkeypatch):
    """The global sums both ways: one reduction per tensor (the CPU branch) and multi-tensor norms
    and products (the branch accelerators take, forced here on CPU tensors)."""
    if request.param == "multi-tensor":
        monkeypatch.setattr(_foreach, "_per_tensor", lambda tensors: False)
    return request.param


SUMS = {
    "foreach_dot": lambda a, b: _foreach.foreach_dot(a, b),
    "foreach_sum_": lambda a, b: _foreach.foreach_sum_([t.clone() for t in a]),
    "foreach_abs_sums": lambda a, b: _foreach.foreach_abs_sums(a),
    "foreach_sums_of_nonnegative": lambda a, b: _foreach.foreach_sums_of_nonnegative(b),
    "foreach_square_sum": lambda a, b: _foreach.foreach_square_sum(a),
    "foreach_l2_norms": lambda a, b: _foreach.foreach_l2_norms(a),
}


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("name", list(SUMS))
def test_reduction_branches_agree(name, dtype, rtol, monkeypatch):
    """Each shared sum gives the same number on the CPU branch and on the accelerator branch, to
    rounding: ``rtol`` times the sum of the summands' magnitudes (the signed sum on accelerators is
    a difference of two L1 norms, so its error scales with those, not with the result). The CPU's L2
    norms of tensors over ``DOT_NORM_NUMEL`` elements come from dot products: lowered here so that
    three of the five take that path (and a non-contiguous one does not)."""
    monkeypatch.setattr(_foreach, "DOT_NORM_NUMEL", 8)
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (5,), (4, 2, 3), (1,), (64, 9)]
    a = [torch.randn(shape, generator=gen, dtype=dtype) for shape in shapes]
    b = [torch.rand(shape, generator=gen, dtype=dtype) for shape in shapes]  # nonnegative
    a[-1], b[-1] = a[-1].t(), b[-1].t()  # [9, 64], non-contiguous
    magnitude = SUMS[name]([t.abs().double() for t in a], [t.double() for t in b])
    per_tensor = SUMS[name](a, b)
    monkeypatch.setattr(_foreach, "_per_tensor", lambda tensors: False)
    multi_tensor = SUMS[name](a, b)
    assert per_tensor.dtype == multi_tensor.dtype == dtype
    difference = (multi_tensor.double() - per_tensor.double()).abs()
    assert bool((difference <= rtol * magnitude).all()), (
        f"{name}, {dtype}: accelerator branch {multi_tensor.tolist()} vs CPU branch {per_tensor.tolist()}, "
        f"difference {difference.max().item():.3g} > {rtol} * {magnitude.max().item():.6g}"
    )


# --- DAdaptAdam -------------------------------------------------------------------------------------------


def test_adam_parity_defaults(reduction_branch):
    parity(
        lambda g: DAdaptAdam(g, lr=0.1), lambda g: dadaptation.DAdaptAdam(g, lr=0.1),
        ADAM_GROUPS, ADAM_STATE, ADAM_GROUP_KEYS,
    )


def test_adam_parity_decoupled_bias_corrected(reduction_branch):
    parity(
        lambda g: DAdaptAdam(g, decouple=True, use_bias_correction=True),
        lambda g: dadaptation.DAdaptAdam(g, decouple=True, use_bias_correction=True),
        ADAM_GROUPS, ADAM_STATE, ADAM_GROUP_KEYS,
    )


def recording_d(hook, ds):
    """``hook``, and before each step append our d to ``ds``."""

    def record(ours, ref):
        hook(ours, ref)
        ds.append(float(ours.param_groups[0]["d"]))

    return record


def assert_growth_binds(ds, growth_rate, at_least):
    """d never grows by more than growth_rate per step, and does grow by exactly that much (to
    rounding) on at least ``at_least`` steps: the cap binds while the estimate runs ahead of d."""
    factors = [b / a for a, b in zip(ds, ds[1:])]
    assert max(factors) <= growth_rate * (1 + 1e-12), f"d grew by {max(factors)!r} in one step (cap {growth_rate})"
    capped = sum(math.isclose(f, growth_rate, rel_tol=1e-12) for f in factors)
    assert capped >= at_least, f"d grew by exactly {growth_rate} on {capped} of {len(factors)} steps"


def test_adam_parity_growth_rate_d0_betas_layer_scale_and_a_zero_gradient_step():
    groups = [ADAM_GROUPS[0], {**ADAM_GROUPS[1], "layer_scale": 0.5}]
    # 1.02: the estimate outruns d by up to 4.8% a step here (1.05 would never bind)
    kwargs = dict(lr=0.1, betas=(0.8, 0.99), d0=1e-4, growth_rate=1.02)
    ds = []
    ours, _, _, _ = parity(
        lambda g: DAdaptAdam(g, **kwargs), lambda g: dadaptation.DAdaptAdam(g, **kwargs),
        groups, ADAM_STATE, ADAM_GROUP_KEYS, before_step=recording_d(zero_grads_at(30), ds),
    )
    ds.append(float(ours.param_groups[0]["d"]))
    # d waits at d0 for 17 steps, then grows by exactly 1.02 on every step but a few (measured: 183 of 200)
    assert ds[0] == 1e-4
    assert_growth_binds(ds, 1.02, at_least=150)


def test_adam_momentum_keeps_the_step_size_it_was_accumulated_with():
    """m adds r * dlr * (1 - beta1) * g with the dlr of its own step; a later, larger d does not
    rescale what is already in m. Three steps, equations written out."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE))
    beta1, d0 = 0.9, 1e-3
    opt = DAdaptAdam([p], betas=(beta1, 0.999), d0=d0)
    grads = [torch.tensor(g, dtype=DTYPE) for g in ([0.3, -0.1, 0.2], [0.2, -0.1, 0.4], [0.1, 0.3, -0.2])]
    d_at_start = []
    for g in grads:
        d_at_start.append(float(opt.param_groups[0]["d"]))
        p.grad = g.clone()
        opt.step()
    d1, d2, d3 = d_at_start
    assert d1 == d2 == d0 < d3  # the first numerator is 0; the second moves d
    expected = (1 - beta1) * (beta1**2 * d1 * grads[0] + beta1 * d2 * grads[1] + d3 * grads[2])
    torch.testing.assert_close(opt.state[p]["exp_avg"], expected, rtol=1e-14, atol=0)


# --- DAdaptAdaGrad ----------------------------------------------------------------------------------------


def test_adagrad_parity_defaults(reduction_branch):
    parity(DAdaptAdaGrad, dadaptation.DAdaptAdaGrad, ADAGRAD_GROUPS, ADAGRAD_STATE, ADAGRAD_GROUP_KEYS)


def test_adagrad_parity_momentum_growth_rate_d0_and_a_zero_gradient_step():
    kwargs = dict(momentum=0.9, growth_rate=1.05, d0=1e-4)
    ds = []
    ours, _, _, _ = parity(
        lambda g: DAdaptAdaGrad(g, **kwargs), lambda g: dadaptation.DAdaptAdaGrad(g, **kwargs),
        ADAGRAD_GROUPS, ADAGRAD_STATE, ADAGRAD_GROUP_KEYS, before_step=recording_d(zero_grads_at(30), ds),
    )
    ds.append(float(ours.param_groups[0]["d"]))
    assert_growth_binds(ds, 1.05, at_least=40)  # measured: 49 of 200 steps


# --- DAdaptSGD ---------------------------------------------------------------------------------------------


def test_sgd_parity_defaults(reduction_branch):
    ours, ref, ours_model, ref_model = parity(
        lambda g: DAdaptSGD(g, lr=0.3), lambda g: dadaptation.DAdaptSGD(g, lr=0.3),
        SGD_GROUPS, SGD_STATE, SGD_GROUP_KEYS,
    )
    # The reference also stores z = x0 - s; ours recomputes it.
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        z = ours.state[p]["x0"] - ours.state[p]["s"]
        assert_close(z, ref.state[q]["z"], "z", RTOL, ATOL)


def test_sgd_parity_momentum_growth_rate_d0_and_a_zero_gradient_step():
    kwargs = dict(momentum=0.9, growth_rate=1.05, d0=1e-4)
    ds = []
    ours, _, _, _ = parity(
        lambda g: DAdaptSGD(g, **kwargs), lambda g: dadaptation.DAdaptSGD(g, **kwargs),
        SGD_GROUPS, SGD_STATE, SGD_GROUP_KEYS, before_step=recording_d(zero_grads_at(30), ds),
    )
    ds.append(float(ours.param_groups[0]["d"]))
    assert_growth_binds(ds, 1.05, at_least=150)  # measured: 192 of 200 steps


# --- all-zero gradients ------------------------------------------------------------------------------------

WD_GROUPS = [{"weight_decay": 0.01}, {"weight_decay": 0.01}]
ZERO_CASES = {
    # decoupled decay on a skipped step would move the weights; momentum would round them. Coupled
    # decay makes a zero gradient non-zero (g + wd * p), except for DAdaptSGD's g0, taken without it.
    "DAdaptAdam": (lambda g: DAdaptAdam(g, decouple=True), dadaptation.DAdaptAdam, dict(decouple=True), WD_GROUPS),
    "DAdaptAdaGrad": (lambda g: DAdaptAdaGrad(g, momentum=0.9), dadaptation.DAdaptAdaGrad, dict(momentum=0.9),
                      [{"eps": 1e-6}, {"eps": 1e-8}]),
    "DAdaptSGD": (lambda g: DAdaptSGD(g, lr=0.3, momentum=0.9), dadaptation.DAdaptSGD, dict(lr=0.3, momentum=0.9),
                  WD_GROUPS),
}


def _zero_grads(model):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)


def _real_grads(model, tokens, target):
    for p in model.parameters():
        p.grad = None
    torch.mean((model(tokens) - target) ** 2).backward()


@pytest.mark.parametrize("name", list(ZERO_CASES))
def test_all_zero_gradients_change_nothing(name):
    make_ours, _, _, groups = ZERO_CASES[name]
    model = make_model()
    opt = make_ours(two_groups(model, groups))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        _zero_grads(model)
        opt.step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    for group in opt.param_groups:
        assert int(group["k"]) == 0 and float(group["d"]) == 1e-6
        sums = ("numerator_weighted", "gsq_weighted", "sksq_weighted", "skl1", "g0_norm")
        assert all(math.isfinite(_number(group[key])) for key in sums if key in group)
    tokens, target = batches(1)[0]
    _real_grads(model, tokens, target)
    opt.step()
    assert int(opt.param_groups[0]["k"]) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("name", ["DAdaptAdam", "DAdaptAdaGrad"])
def test_all_zero_first_gradients_match_the_reference(name):
    """The references return early while every gradient so far is zero; so does ours, exactly."""
    make_ours, reference, kwargs, groups = ZERO_CASES[name]
    keys = ADAM_GROUP_KEYS if name == "DAdaptAdam" else ADAGRAD_GROUP_KEYS
    parity(make_ours, lambda g: reference(g, **kwargs), groups, None, keys, steps=40,
           before_step=zero_grads_at(1, 2, 3))


def test_sgd_all_zero_first_gradients_wait_for_the_first_real_one():
    """The reference divides by the first gradient norm and raises; ours skips such steps, so after
    them it runs as the reference does from its first real gradient on."""
    make_ours, reference, kwargs, groups = ZERO_CASES["DAdaptSGD"]
    ref_model = make_model()
    ref = reference(two_groups(ref_model, groups), **kwargs)
    _zero_grads(ref_model)
    with pytest.raises(ZeroDivisionError):
        ref.step()

    ours_model, ref_model = make_model(), make_model()
    ours = make_ours(two_groups(ours_model, groups))
    ref = reference(two_groups(ref_model, groups), **kwargs)
    for _ in range(3):
        _zero_grads(ours_model)
        ours.step()
    for step, (tokens, target) in enumerate(batches(40), start=1):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            _real_grads(model, tokens, target)
            opt.step()
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            assert_close(p, q, f"step {step}", RTOL, ATOL)
    compare_groups(ours, ref, SGD_GROUP_KEYS)


# --- per-group values the references read from group 0 only: equations ------------------------------------


class AdaGradEquations(torch.optim.Optimizer):
    """D-Adapted AdaGrad dual averaging written out one tensor at a time, with each group's own lr
    and momentum, and the two running totals recomputed from scratch every step."""

    def __init__(self, groups, d0=1e-6, growth_rate=float("inf")):
        super().__init__(groups, dict(lr=1.0, momentum=0.0, weight_decay=0.0, eps=1e-6))
        self.d, self.d0, self.growth_rate, self.grad_sum = d0, d0, growth_rate, 0.0

    @torch.no_grad()
    def step(self):
        d = self.d
        for group in self.param_groups:
            step_size = d * group["lr"]
            for p in group["params"]:
                st = self.state[p]
                if not st:
                    st.update(alpha=torch.full_like(p, 1e-6), s=torch.zeros_like(p), x0=p.clone())
                g = p.grad + group["weight_decay"] * p
                st["alpha"] += g * g
                scale = st["alpha"].sqrt() + group["eps"]
                self.grad_sum += step_size**2 * float((g * g / scale).sum())
                st["s"] += step_size * g
        pairs = [(group, self.state[p]) for group in self.param_groups for p in group["params"]]
        s_sq = sum(float((st["s"] ** 2 / (st["alpha"].sqrt() + group["eps"])).sum()) for group, st in pairs)
        s_l1 = sum(float(st["s"].abs().sum()) for _, st in pairs)
        self.d = max(d, min((s_sq - self.grad_sum) / s_l1, d * self.growth_rate))
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                st = self.state[p]
                z = st["x0"] - st["s"] / (st["alpha"].sqrt() + group["eps"])
                p.copy_(mu * p + (1 - mu) * z)


class SGDEquations(torch.optim.Optimizer):
    """D-Adapted SGD dual averaging written out one tensor at a time, with each group's own weight
    decay and momentum; g0 is the norm of the first raw gradient."""

    def __init__(self, groups, lr=1.0, d0=1e-6, growth_rate=float("inf")):
        super().__init__(groups, dict(lr=lr, momentum=0.0, weight_decay=0.0))
        self.d, self.growth_rate, self.numerator, self.g0 = d0, growth_rate, 0.0, None

    @torch.no_grad()
    def step(self):
        params = [(group, p) for group in self.param_groups for p in group["params"]]
        if self.g0 is None:
            self.g0 = math.sqrt(sum(float((p.grad**2).sum()) for _, p in params))
        step_size = self.d * self.param_groups[0]["lr"] / self.g0
        for group, p in params:
            st = self.state[p]
            if not st:
                st.update(s=torch.zeros_like(p), x0=p.clone())
            g = p.grad + group["weight_decay"] * p
            self.numerator += step_size * float((g * st["s"]).sum())
            st["s"] += step_size * g
        s_norm = math.sqrt(sum(float((self.state[p]["s"] ** 2).sum()) for _, p in params))
        self.d = max(self.d, min(2 * self.numerator / s_norm, self.d * self.growth_rate))
        for group, p in params:
            mu, st = group["momentum"], self.state[p]
            p.copy_(mu * p + (1 - mu) * (st["x0"] - st["s"]))


def test_adagrad_honours_each_groups_lr_and_momentum():
    groups = [{"lr": 1.0, "momentum": 0.9, "weight_decay": 0.01}, {"lr": 0.5, "momentum": 0.0, "eps": 1e-8}]
    state_keys = {"alphak": "alpha", "sk": "s", "x0": "x0"}
    ours, equations, _, _ = run_parity(DAdaptAdaGrad, AdaGradEquations, groups, state_keys, steps=60, rtol=RTOL,
                                       atol=ATOL)
    assert math.isclose(float(ours.param_groups[0]["d"]), equations.d, rel_tol=RTOL)
    # The deviation is real: the reference steps group 1 with group 0's lr and momentum.
    with pytest.raises(AssertionError):
        run_parity(DAdaptAdaGrad, dadaptation.DAdaptAdaGrad, groups, steps=5, rtol=RTOL, atol=ATOL)


def test_sgd_honours_each_groups_weight_decay_and_momentum():
    groups = [{"weight_decay": 0.01, "momentum": 0.9}, {"weight_decay": 0.0, "momentum": 0.0}]
    ours, equations, _, _ = run_parity(lambda g: DAdaptSGD(g, lr=0.3), lambda g: SGDEquations(g, lr=0.3), groups,
                                       SGD_STATE, steps=60, rtol=RTOL, atol=ATOL)
    assert math.isclose(float(ours.param_groups[0]["d"]), equations.d, rel_tol=RTOL)
    assert math.isclose(float(ours.param_groups[0]["g0_norm"]), equations.g0, rel_tol=RTOL)
    # The deviation is real: the reference decays and averages group 1 with group 0's values.
    with pytest.raises(AssertionError):
        run_parity(lambda g: DAdaptSGD(g, lr=0.3), lambda g: dadaptation.DAdaptSGD(g, lr=0.3), groups, steps=5,
                   rtol=RTOL, atol=ATOL)


# --- groups, protocol and bookkeeping ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [DAdaptAdam, DAdaptSGD])
def test_one_lr_across_groups(cls):
    model = make_model()
    with pytest.raises(ValueError, match=r"\blr\b"):
        cls(two_groups(model, [{"lr": 1.0}, {"lr": 0.5}]))
    opt = cls(two_groups(model, [{"lr": 1.0}, {"lr": 1.0}]))
    opt.param_groups[1]["lr"] = 0.5  # e.g. a scheduler that treats groups differently
    tokens, target = batches(1)[0]
    _real_grads(model, tokens, target)
    with pytest.raises(ValueError, match=r"\blr\b"):
        opt.step()


@pytest.mark.parametrize("cls", [DAdaptAdam, DAdaptAdaGrad, DAdaptSGD])
def test_lr_zero_freezes_a_group(cls):
    model = make_model()
    kwargs = {"decouple": True} if cls is DAdaptAdam else {"momentum": 0.9}
    opt = cls(two_groups(model, [{"weight_decay": 0.01}, {"lr": 0.0, "weight_decay": 0.01}]), **kwargs)
    frozen = opt.param_groups[1]["params"]
    before = [p.detach().clone() for p in frozen]
    for tokens, target in batches(5):
        _real_grads(model, tokens, target)
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(frozen, before))
    assert all(not opt.state.get(p) for p in frozen)
    assert all(opt.state.get(p) for p in opt.param_groups[0]["params"])


def test_adam_reference_moves_a_frozen_group_with_decoupled_decay():
    """Why ours skips lr=0 groups entirely: the reference still applies decoupled decay to them."""
    model = make_model()
    ref = dadaptation.DAdaptAdam(two_groups(model, [{"weight_decay": 0.01}, {"lr": 0.0, "weight_decay": 0.01}]),
                                 decouple=True)
    frozen = ref.param_groups[1]["params"]
    before = [p.detach().clone() for p in frozen]
    for tokens, target in batches(5):
        _real_grads(model, tokens, target)
        ref.step()
    assert any(not torch.equal(p.detach(), b) for p, b in zip(frozen, before))


def test_log_every_logs_through_logging_and_never_prints(caplog, capsys):
    model = make_model()
    for opt in (DAdaptAdam(model.parameters(), log_every=2), DAdaptAdaGrad(model.parameters(), log_every=2),
                DAdaptSGD(model.parameters(), log_every=2)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rvc_optim.optim.dadapt"):
            for tokens, target in batches(4):
                _real_grads(model, tokens, target)
                opt.step()
        records = [r for r in caplog.records if r.name == "rvc_optim.optim.dadapt"]
        assert len(records) == 2 and " d " in records[0].getMessage()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("cls", [DAdaptAdam, DAdaptSGD])
def test_fsdp_in_use_sums_over_the_process_group(cls, tmp_path):
    """With one process the all-reduce is the identity: the same numbers as without it."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed gloo backend (missing capability)")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        results = []
        for how in ("off", "argument", "detected"):  # detected: FSDP marks its flat parameters
            model = make_model()
            if how == "detected":
                model.conv.weight._fsdp_flattened = True
            opt = cls(two_groups(model, SGD_GROUPS), lr=0.3, fsdp_in_use=how == "argument")
            for tokens, target in batches(10):
                _real_grads(model, tokens, target)
                opt.step()
            assert all(group["fsdp_in_use"] == (how != "off") for group in opt.param_groups)
            results.append([p.detach().clone() for p in model.parameters()])
        for a, b, c in zip(*results):
            assert torch.equal(a, b) and torch.equal(a, c)
    finally:
        dist.destroy_process_group()


def test_adagrad_rejects_sharded_parameters():
    model = make_model()
    model.conv.weight._fsdp_flattened = True
    opt = DAdaptAdaGrad(model.parameters())
    tokens, target = batches(1)[0]
    _real_grads(model, tokens, target)
    with pytest.raises(RuntimeError, match="FSDP"):
        opt.step()


@pytest.mark.parametrize(
    "ours_cls, ref_cls, kwargs, state_keys, group_keys",
    [
        (DAdaptAdam, dadaptation.DAdaptAdam, dict(lr=0.1), ADAM_STATE, ADAM_GROUP_KEYS),
        (DAdaptAdaGrad, dadaptation.DAdaptAdaGrad, {}, ADAGRAD_STATE, ADAGRAD_GROUP_KEYS),
        (DAdaptSGD, dadaptation.DAdaptSGD, dict(lr=0.3), SGD_STATE, SGD_GROUP_KEYS),
    ],
    ids=["DAdaptAdam", "DAdaptAdaGrad", "DAdaptSGD"],
)
def test_resumes_from_a_reference_state_dict(ours_cls, ref_cls, kwargs, state_keys, group_keys):
    """Switching by changing the import: a run saved by dadaptation (Python floats and ints for d, k,
    step) continues in ours as it would have continued in the reference."""
    data = batches(30)
    groups = ADAM_GROUPS if ours_cls is DAdaptAdam else ADAGRAD_GROUPS if ours_cls is DAdaptAdaGrad else SGD_GROUPS
    ref_model = make_model()
    ref = ref_cls(two_groups(ref_model, groups), **kwargs)
    for tokens, target in data[:10]:
        _real_grads(ref_model, tokens, target)
        ref.step()
    ours_model = make_model()
    ours_model.load_state_dict(ref_model.state_dict())
    ours = ours_cls(two_groups(ours_model, groups), **kwargs)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # as if saved: shares no tensor with ref
    for step, (tokens, target) in enumerate(data[10:], start=11):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            _real_grads(model, tokens, target)
            opt.step()
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            assert_close(p, q, f"step {step}", RTOL, ATOL)
    compare_groups(ours, ref, group_keys)


def _two_layouts(statistics, apply, n_read, options, apply_options):
    """Both passes over the same five lists (p, g, then state; the third non-negative: v or alpha),
    once storing the state in the first pass and once in the second; the first pass takes the first
    ``n_read`` lists. Returns each run's sums and lists."""
    shapes = [(5, 3), (7,), (2, 3, 4)]
    results = []
    for store in (True, False):
        g = torch.Generator().manual_seed(1)
        lists = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(5)]
        lists[2] = [x.abs() for x in lists[2]]
        sums = statistics(*lists[:n_read], **options, store=store)
        apply(*lists, **options, **apply_options, stored=store)
        results.append((sums, lists))
    return results


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("variant", ["adam", "adagrad"])
def test_passes_give_the_same_step_whichever_stores_the_state(variant, weight_decay):
    """The compiled path on a CPU stores the moments (DAdaptAdam) or alpha and s (DAdaptAdaGrad) in the
    second pass, the first only reading; every other path stores them in the first. Both layouts are
    the same ops in the same order: the sums, the state and the parameters agree bit for bit."""
    from rvc_optim.optim.dadapt import (dadapt_adagrad_apply, dadapt_adagrad_statistics, dadapt_adam_apply,
                                        dadapt_adam_statistics)

    one = torch.tensor(1.0, dtype=torch.float64)
    if variant == "adam":  # p, g, v, m, s
        rates = dict(exp_avg_rate=one * 0.03, s_rate=one * 0.002, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=weight_decay)
        results = _two_layouts(lambda p, g, v, m, s, **kw: dadapt_adam_statistics(p, g, m, v, s, **kw),
                               lambda p, g, v, m, s, **kw: dadapt_adam_apply(p, g, m, v, s, **kw), 5, rates,
                               dict(decay_factor=one, decoupled=False))
    else:  # p, g, alpha, s, x0
        rates = dict(dlr=one * 0.01, eps=1e-6, weight_decay=weight_decay)
        results = _two_layouts(dadapt_adagrad_statistics, dadapt_adagrad_apply, 4, rates,
                               dict(keep=one * 0.1, weight=one * 0.9, average=True))
    (sums_a, lists_a), (sums_b, lists_b) = results
    torch.testing.assert_close(sums_a, sums_b, rtol=0, atol=0)
    for a, b in zip(lists_a, lists_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
