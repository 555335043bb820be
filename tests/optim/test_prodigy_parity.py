"""Prodigy against the authors' ``prodigyopt`` 1.1.2 (``prodigyopt.Prodigy``), in float64.

Prodigy needs one lr for all groups, so the two groups differ in weight decay and eps instead.
Each parity run takes 200 steps and compares the parameters after every step, the group values
d, d_max, d_numerator, d_hat and k before every step and at the end, and every state tensor
(exp_avg, exp_avg_sq, s, p0, step) at the end.

Tolerances, and why 1e-9 relative cannot be met everywhere. The arithmetic differs at the last bit in
two places: the reference's fused ``add_(alpha=)`` and ``addcdiv_`` round once where the multi-tensor
ops with 0-d tensor scalars round twice, and the two global sums are added in another order. In the
first steps p0 - p is about d0 = 1e-6 of p, so one ulp of p is 1e-10 of <g, p0 - p>; the d that grows
out of those sums then differs by up to 5e-11 and every later step inherits it. Measured over the
configurations below (float64, CPU): parameters differ by at most 4e-11 absolute on weights of size
0.1-1 (element-wise relative up to 1e-5, on entries passing through zero); d and d_max by at most
5e-11 relative; d_numerator and d_hat by at most 1.3e-10 of their largest size so far (they change
sign, so a plain relative error means nothing near zero); state tensors by at most 9e-11 of their
largest entry. The reference disagrees with itself about as much: nudging its parameters by one ulp
after the first step moves its d by up to 4e-12, and in the coupled-decay runs its parameters by up
to 8e-10 absolute (ours stays within 5e-13 of it there). Hence: parameters rtol 1e-9 with atol 1e-9
(1e-9 of their scale), d and d_max rtol 1e-9, d_numerator and d_hat 1e-9 of their scale, state
tensors 1e-9 of their scale; p0 and step agree exactly, k exactly.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from rvc_optim.optim.prodigy import Prodigy
from tests.optim.parity import DTYPE, assert_close, batches, make_model, run_parity, two_groups

from prodigyopt import Prodigy as Reference  # noqa: E402  (a test dependency)

PARAM_RTOL, PARAM_ATOL = 1e-9, 1e-9
D_RTOL = 1e-9
SCALED_TOL = 1e-9  # d_numerator, d_hat and state tensors: relative to their largest size
GROUP_KEYS = ("d", "d_max", "d_numerator", "d_hat", "k")

# the two groups: weights with decay and the usual eps, the rest (biases, gains) with neither and a larger eps
GROUPS = [{"weight_decay": 0.01, "eps": 1e-8}, {"weight_decay": 0.0, "eps": 1e-6}]

CONFIGS = {
    "defaults": (GROUPS, {}),
    # coupled decay at the defaults drives d to 0.03, where the run is chaotic: the reference nudged by
    # one ulp drifts from itself by 4e-8 absolute; with bias correction and beta3 0.99, or d_coef 0.2,
    # it stays tame enough to compare
    "coupled_decay+bias_correction+beta3": (GROUPS, {"decouple": False, "use_bias_correction": True, "beta3": 0.99}),
    "coupled_decay+d_coef": (GROUPS, {"decouple": False, "d_coef": 0.2}),
    # lr 0.5 so that leaving lr out of s (safeguard_warmup) changes the result
    "safeguard_warmup+growth_rate+d_coef": (
        [{**g, "lr": 0.5} for g in GROUPS],
        {"safeguard_warmup": True, "growth_rate": 1.05, "d_coef": 2.0},
    ),
    "slice_p+beta1_zero": (GROUPS, {"slice_p": 3, "betas": (0.0, 0.999)}),
    # a group with lr 0 and no decay: the reference leaves it in place too (it steps by dlr * 0 / denom)
    "frozen_group": ([GROUPS[0], {**GROUPS[1], "lr": 0.0}], {}),
}


value = float  # our group values and step are 0-d tensors, the reference's Python numbers


class GroupChecker:
    """Compares the group values of both optimizers, d_numerator and d_hat against their scale so far."""

    def __init__(self) -> None:
        self.scale = {"d_numerator": 0.0, "d_hat": 0.0}

    def __call__(self, ours, ref) -> None:
        if "d_hat" not in ref.param_groups[0]:  # before the first step that got through
            return
        for i, (mine, theirs) in enumerate(zip(ours.param_groups, ref.param_groups)):
            assert value(mine["k"]) == theirs["k"], f"group {i}: k {value(mine['k'])} vs {theirs['k']}"
            for key in ("d", "d_max"):
                a, b = value(mine[key]), theirs[key]
                assert math.isclose(a, b, rel_tol=D_RTOL, abs_tol=0.0), f"group {i}: {key} {a!r} vs {b!r}"
            for key in ("d_numerator", "d_hat"):
                a, b = value(mine[key]), theirs[key]
                self.scale[key] = max(self.scale[key], abs(b))
                assert abs(a - b) <= SCALED_TOL * self.scale[key], (
                    f"group {i}: {key} {a!r} vs {b!r} (scale {self.scale[key]:.3g})"
                )


def compare_state(ours, ref, ours_model, ref_model) -> None:
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        mine, theirs = ours.state[p], ref.state[q]
        assert set(mine) == set(theirs), f"{name}: state keys {sorted(mine)} vs {sorted(theirs)}"
        assert value(mine["step"]) == theirs["step"], f"{name}: step {value(mine['step'])} vs {theirs['step']}"
        for key in ("s", "p0", "exp_avg", "exp_avg_sq"):
            if key not in theirs:
                continue
            a, b = mine[key], theirs[key]
            assert a.dtype == b.dtype, f"{name}: {key} dtype {a.dtype} vs {b.dtype}"
            if key == "p0":
                assert a.shape == b.shape and torch.equal(a, b), f"{name}: p0 differs"
                continue
            scale = b.abs().max().item() if b.numel() else 0.0
            assert_close(a, b, f"state {key} of {name}", rtol=0.0, atol=SCALED_TOL * scale)


def parity(group_options, steps: int = 200, before_step=None, **kwargs):
    check = GroupChecker()

    def before(ours, ref):
        if before_step is not None:
            before_step(ours, ref)
        check(ours, ref)

    ours, ref, ours_model, ref_model = run_parity(
        lambda groups: Prodigy(groups, compiled=False, **kwargs),
        lambda groups: Reference(groups, **kwargs),
        group_options,
        steps=steps,
        rtol=PARAM_RTOL,
        atol=PARAM_ATOL,
        before_step=before,
    )
    check(ours, ref)
    compare_state(ours, ref, ours_model, ref_model)
    return ours, ref, ours_model, ref_model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_prodigyopt(name):
    group_options, kwargs = CONFIGS[name]
    ours, ref, ours_model, _ = parity(group_options, **kwargs)
    d = value(ours.param_groups[0]["d"])
    assert d > 100 * kwargs.get("d0", 1e-6), f"d stayed near d0 ({d:.3g}): the run tests little"
    if name == "slice_p+beta1_zero":
        shapes = {tuple(ours.state[p]["s"].shape) for p in ours_model.parameters()}
        assert (math.ceil(ours_model.conv.weight.numel() / 3),) in shapes
        assert all("exp_avg" not in ours.state[p] for p in ours_model.parameters())


def test_zero_initialised_parameter_keeps_a_0d_p0():
    ours, _, model, _ = parity(GROUPS, steps=3)
    assert ours.state[model.head.bias]["p0"].shape == ()
    assert ours.state[model.head.weight]["p0"].shape == (model.head.weight.numel(),)


def test_all_zero_gradients_change_nothing_but_the_moments():
    """The reference's early return (sum ||s||_1 == 0): d, k, step and the parameters stay."""
    calls = {"n": 0}

    def zero_first_three(ours, ref):
        calls["n"] += 1
        if calls["n"] <= 3:
            for opt in (ours, ref):
                for group in opt.param_groups:
                    for p in group["params"]:
                        p.grad.zero_()
        if calls["n"] == 4:  # three steps went by without effect
            for opt in (ours, ref):
                group = opt.param_groups[0]
                assert value(group["d"]) == 1e-6 and value(group["k"]) == 0 and value(group["d_numerator"]) == 0.0
                assert all(value(opt.state[p]["step"]) == 0 for p in group["params"])

    ours, _, model, _ = parity(GROUPS, steps=40, before_step=zero_first_three)
    assert value(ours.param_groups[0]["k"]) == 37


def test_d_grows_from_d0_on_a_quadratic():
    torch.manual_seed(0)
    target = torch.randn(64, dtype=DTYPE)
    runs = {}
    for name, cls, extra in (("ours", Prodigy, {"compiled": False}), ("ref", Reference, {})):
        x = torch.nn.Parameter(torch.zeros(64, dtype=DTYPE))  # all zero: p0 is the 0-d zero
        opt = cls([x], **extra)
        losses, ds = [], []
        for _ in range(200):
            opt.zero_grad()
            loss = 0.5 * ((x - target) ** 2).sum()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            ds.append(value(opt.param_groups[0]["d"]))
        runs[name] = (x.detach().clone(), losses, ds)
    x, losses, ds = runs["ours"]
    assert ds[0] == 1e-6
    assert ds[30] > 1e4 * 1e-6, f"d after 30 steps: {ds[30]:.3g}"
    assert losses[-1] < 1e-6 * losses[0]
    assert math.isclose(ds[-1], runs["ref"][2][-1], rel_tol=D_RTOL)
    assert_close(x, runs["ref"][0], "x", rtol=PARAM_RTOL, atol=PARAM_ATOL)


def equations(x0: torch.Tensor, grads: list[torch.Tensor], lr=1.0, beta1=0.9, beta2=0.999, eps=0.1, wd=0.0, d0=1e-2,
              growth_rate=math.inf):
    """Prodigy written out for one tensor (decoupled decay, no bias correction, beta3 = sqrt(beta2))."""
    beta3 = math.sqrt(beta2)
    x, m, v, s = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0), torch.zeros_like(x0)
    d, d_max, r = d0, d0, 0.0
    for g in grads:
        dlr = d * lr
        r = beta3 * r + (d / d0) * dlr * float(g @ (x0 - x))
        m = beta1 * m + (1 - beta1) * d * g
        v = beta2 * v + (1 - beta2) * d * d * g * g
        s = beta3 * s + (d / d0) * dlr * g
        d_hat = r / float(s.abs().sum())
        new_d = max(d, d_hat) if d == d0 else d
        d_max = max(d_max, d_hat)
        new_d = min(d_max, new_d * growth_rate)  # growth_rate inf: d = d_max
        x = x - wd * dlr * x  # the old dlr ...
        x = x - dlr * m / (v.sqrt() + new_d * eps)  # ... and the new d
        d = new_d
    return x, d


def test_step_uses_the_new_d_in_the_denominator_and_the_old_dlr():
    torch.manual_seed(3)
    x0 = torch.randn(5, dtype=DTYPE)
    grads = [torch.randn(5, dtype=DTYPE) + 0.5 * i for i in range(6)]
    x = torch.nn.Parameter(x0.clone())
    opt = Prodigy([x], eps=0.1, weight_decay=0.3, d0=1e-2, compiled=False)
    for g in grads:
        x.grad = g.clone()
        opt.step()
    expected, d = equations(x0, grads, wd=0.3)
    assert d > 1e-2  # d moved, so old and new d differ
    assert_close(x, expected, "x", rtol=1e-12, atol=0.0)
    assert math.isclose(value(opt.param_groups[0]["d"]), d, rel_tol=1e-12)


def test_frozen_group_stays_where_the_reference_moves_it():
    """Deviation: lr 0 freezes a group; the reference decays it and, with beta1 = 0, steps it by dlr * g / eps."""
    torch.manual_seed(1)
    results = {}
    for name, cls, extra in (("ours", Prodigy, {"compiled": False}), ("ref", Reference, {})):
        moving = torch.nn.Parameter(torch.randn(6, dtype=DTYPE))
        frozen = torch.nn.Parameter(torch.randn(4, dtype=DTYPE))
        start = frozen.detach().clone()
        opt = cls([{"params": [moving]}, {"params": [frozen], "lr": 0.0, "weight_decay": 0.1}],
                  betas=(0.0, 0.999), d0=1e-3, **extra)
        for _ in range(5):
            opt.zero_grad()
            ((moving - 1.0) ** 2).sum().add((frozen**2).sum()).backward()
            opt.step()
        results[name] = (frozen.detach() - start).abs().max().item()
        assert value(opt.state[frozen]["step"]) == 5  # counted, like the reference
    assert results["ours"] == 0.0
    assert results["ref"] > 0.0  # if this fails, the reference was fixed: drop the deviation


def test_coupled_decay_leaves_grad_alone():
    p = torch.nn.Parameter(torch.randn(3, 4, dtype=DTYPE))
    opt = Prodigy([p], weight_decay=0.1, decouple=False, compiled=False)
    for _ in range(3):
        p.grad = torch.randn(3, 4, dtype=DTYPE)
        before = p.grad.clone()
        opt.step()
        assert torch.equal(p.grad, before)


def test_groups_must_share_one_lr():
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
    with pytest.raises(RuntimeError, match="lr"):
        Prodigy([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}])
    opt = Prodigy([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.0}])  # 0 freezes: allowed
    opt.param_groups[1]["lr"] = 0.3
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    with pytest.raises(RuntimeError, match="lr"):
        opt.step()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"d0": 0.0}, "d0"), ({"lr": 0.0}, "lr"), ({"eps": 0.0}, "eps"), ({"betas": (1.0, 0.999)}, "beta"),
        ({"weight_decay": -1.0}, "weight_decay"), ({"beta3": 1.5}, "beta3"), ({"slice_p": 0}, "slice_p"),
        ({"d_coef": 0.0}, "d_coef"), ({"growth_rate": 0.0}, "growth_rate"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Prodigy([torch.nn.Parameter(torch.randn(3))], **kwargs)


def test_state_dict_round_trip_keeps_group_values():
    model = make_model()
    opt = Prodigy(two_groups(model, GROUPS), d0=1e-4, compiled=False)
    data = batches(16)

    def train(opt, model, batches):
        for tokens, target in batches:
            opt.zero_grad()
            torch.mean((model(tokens) - target) ** 2).backward()
            opt.step()

    train(opt, model, data[:8])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    train(opt, model, data[8:])

    resumed_model = make_model(seed=7)
    resumed_model.load_state_dict(saved["model"])
    resumed = Prodigy(two_groups(resumed_model, GROUPS), d0=1e-4, compiled=False)
    resumed.load_state_dict(saved["opt"])
    for key in GROUP_KEYS:
        assert isinstance(resumed.param_groups[0][key], torch.Tensor)
    train(resumed, resumed_model, data[8:])
    for key in GROUP_KEYS + ("d_denom",):
        assert torch.equal(resumed.param_groups[0][key], opt.param_groups[0][key]), key
    for p, q in zip(resumed_model.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_loads_a_prodigyopt_state_dict():
    """A run saved by prodigyopt (floats and ints in the groups and state) continues in ours."""
    ours_model, ref_model = make_model(), make_model()
    ref = Reference(two_groups(ref_model, GROUPS), d0=1e-4)
    data = batches(40)
    for tokens, target in data[:20]:
        ref.zero_grad()
        torch.mean((ref_model(tokens) - target) ** 2).backward()
        ref.step()
    ours_model.load_state_dict(ref_model.state_dict())
    ours = Prodigy(two_groups(ours_model, GROUPS), d0=1e-4, compiled=False)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # state_dict() shares the live tensors
    check = GroupChecker()
    for tokens, target in data[20:]:
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            torch.mean((model(tokens) - target) ** 2).backward()
            opt.step()
        check(ours, ref)
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            assert_close(p, q, "parameter", PARAM_RTOL, PARAM_ATOL)
    compare_state(ours, ref, ours_model, ref_model)


def test_fsdp_in_use_all_reduces_the_two_sums(tmp_path):
    """With one process the all-reduce changes nothing; an all-zero first step still returns early."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("this torch build has no torch.distributed (missing capability), or a process group is already in use")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        results = []
        for fsdp in (False, True):
            model = make_model()
            opt = Prodigy(two_groups(model, GROUPS), d0=1e-4, fsdp_in_use=fsdp, compiled=False)
            for i, (tokens, target) in enumerate(batches(12)):
                opt.zero_grad()
                torch.mean((model(tokens) - target) ** 2).backward()
                if i == 0:
                    for p in model.parameters():
                        p.grad.zero_()
                opt.step()
            assert value(opt.param_groups[0]["k"]) == 11
            results.append([p.detach().clone() for p in model.parameters()])
        for a, b in zip(*results):
            assert torch.equal(a, b)
    finally:
        dist.destroy_process_group()
