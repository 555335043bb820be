"""ScheduleFreeAdamW, ScheduleFreeAdam and ScheduleFreeSGD against the authors' schedulefree 1.4.1.

* ScheduleFreeAdamW / ScheduleFreeSGD: parity with ``AdamWScheduleFree`` / ``SGDScheduleFree`` (the fast
  classes), parameters compared every step in train mode (y), after eval() (x) and after train() again
  (round trips every 50 steps and at the end), optimizer state (z, exp_avg_sq) and the group keys.
* ScheduleFreeAdam has no authors' class: (a) with weight_decay=0 it is AdamWScheduleFree(weight_decay=0)
  (and follows the paper's equations, below); (b) with decay it is AdamWScheduleFree(weight_decay=0)
  stepped on the gradient ``g + wd * y``, built here.
* The update equations written out in the paper's form (x, y, z all explicit): an oracle independent of
  both implementations. It, like the state comparison in the parity runs, fails for an update that
  forgets to move z.
* State dicts restore from either mode (and from the authors' classes), step() refuses eval mode.

Tolerance: rtol 1e-9 (the project's). Ours and the authors' differ only in rounding: the per-step factors
of ``y += lr_k (beta (1 - c) - 1) d`` and ``z -= lr_k d`` reach our update as 0-d tensors (a multiply,
then an add), where the authors' ``add_(alpha=float)`` is a fused multiply-add. Measured after 200
float64 steps: max |diff| / max |ref| per tensor about 1.5e-15; elementwise relative up to 4e-11, on
entries that pass near zero.
"""

from __future__ import annotations

import inspect
import io

import pytest
import schedulefree
import torch

from rvc_optim.optim.schedule_free import ScheduleFreeAdam, ScheduleFreeAdamW, ScheduleFreeSGD
from tests.optim.parity import DTYPE, assert_close, batches, make_model, run_parity, two_groups

RTOL = 1e-9
GROUP_KEYS = ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr")
ADAM_STATE = {"z": "z", "exp_avg_sq": "exp_avg_sq"}
SGD_STATE = {"z": "z"}

# Each configuration covers the switches: warmup_steps, r, weight_lr_power, weight_decay, betas / momentum,
# eps; two groups with different lr. beta1 = 0.5 (momentum 0.5) takes lerp's other rounding branch in train().
ADAMW_CONFIGS = {
    "defaults": [{}, {"lr": 1e-3, "weight_decay": 0.01}],
    "warmup-decay-betas-eps": [
        {"lr": 5e-3, "weight_decay": 0.05, "warmup_steps": 20},
        {"lr": 2e-3, "betas": (0.8, 0.99), "eps": 1e-9},
    ],
    "r-weight_lr_power": [
        {"lr": 4e-3, "r": 1.0, "weight_lr_power": 0.0, "warmup_steps": 50},
        {"lr": 1e-2, "weight_decay": 0.1, "r": 0.5, "weight_lr_power": 1.0, "betas": (0.5, 0.9)},
    ],
}
SGD_CONFIGS = {
    "warmup-decay-momentum": [
        {"lr": 5e-2, "weight_decay": 0.05, "warmup_steps": 20},
        {"lr": 2e-2, "momentum": 0.5},
    ],
    "r-weight_lr_power": [
        {"lr": 3e-2, "r": 1.0, "weight_lr_power": 0.0, "momentum": 0.8},
        {"lr": 1e-1, "weight_decay": 0.01, "r": 0.5, "weight_lr_power": 1.0, "warmup_steps": 50},
    ],
}
ADAM_DECAY_CONFIGS = {
    "decay-warmup": [
        {"lr": 5e-3, "weight_decay": 0.05, "warmup_steps": 20},
        {"lr": 2e-3, "weight_decay": 1e-3, "betas": (0.8, 0.99), "eps": 1e-9},
    ],
    "decay-r-weight_lr_power": [
        {"lr": 4e-3, "weight_decay": 0.1, "r": 1.0, "weight_lr_power": 0.0},
        {"lr": 1e-2, "r": 0.5, "weight_lr_power": 1.0, "betas": (0.5, 0.9), "warmup_steps": 50},
    ],
}


# --- helpers ---------------------------------------------------------------------------------------------


def in_train_mode(cls, **kwargs):
    def make(groups):
        optimizer = cls(groups, **kwargs)
        optimizer.train()
        return optimizer

    return make


def compare_params(ours, ref, when: str, rtol: float = RTOL) -> None:
    for i, (mine, theirs) in enumerate(zip(ours.param_groups, ref.param_groups)):
        for j, (p, q) in enumerate(zip(mine["params"], theirs["params"])):
            assert_close(p, q, f"{when}: group {i} parameter {j}", rtol, 0.0)


def compare_group_keys(ours, ref, when: str) -> None:
    for i, (mine, theirs) in enumerate(zip(ours.param_groups, ref.param_groups)):
        for key in GROUP_KEYS:
            assert mine[key] == theirs[key], f"{when}: group {i} {key}: {mine[key]!r} vs reference {theirs[key]!r}"


def round_trips(every: int = 50, rtol: float = RTOL, also=None):
    """A ``before_step`` hook: every ``every`` steps both sides go to eval (x compared) and back to
    train (y compared). ``also`` runs first (e.g. the reference construction's gradient change)."""
    count = [0]

    def hook(ours, ref):
        if also is not None:
            also(ours, ref)
        count[0] += 1
        if count[0] % every == 0:
            for mode in ("eval", "train"):
                getattr(ours, mode)()
                getattr(ref, mode)()
                compare_params(ours, ref, f"after {count[0] - 1} steps and {mode}()", rtol)
                compare_group_keys(ours, ref, f"after {count[0] - 1} steps and {mode}()")

    return hook


def finish(ours, ref, rtol: float = RTOL) -> None:
    compare_group_keys(ours, ref, "end")
    for mode in ("eval", "train", "eval"):
        getattr(ours, mode)()
        getattr(ref, mode)()
        compare_params(ours, ref, f"end, after {mode}()", rtol)
        compare_group_keys(ours, ref, f"end, after {mode}()")


# --- parity with the authors' classes --------------------------------------------------------------------


@pytest.mark.parametrize("groups", list(ADAMW_CONFIGS.values()), ids=list(ADAMW_CONFIGS))
def test_adamw_matches_authors(groups):
    ours, ref, _, _ = run_parity(
        in_train_mode(ScheduleFreeAdamW),
        in_train_mode(schedulefree.AdamWScheduleFree),
        groups,
        state_keys=ADAM_STATE,
        before_step=round_trips(),
        rtol=RTOL,
    )
    finish(ours, ref)


@pytest.mark.parametrize("groups", list(SGD_CONFIGS.values()), ids=list(SGD_CONFIGS))
def test_sgd_matches_authors(groups):
    ours, ref, _, _ = run_parity(
        in_train_mode(ScheduleFreeSGD),
        in_train_mode(schedulefree.SGDScheduleFree),
        groups,
        state_keys=SGD_STATE,
        before_step=round_trips(),
        rtol=RTOL,
    )
    finish(ours, ref)


NO_DECAY = [
    {"lr": 5e-3, "warmup_steps": 20, "r": 0.5},
    {"lr": 2e-3, "betas": (0.8, 0.99), "eps": 1e-9, "weight_lr_power": 1.0},
]


def test_adam_without_decay_is_authors_adamw():
    ours, ref, _, _ = run_parity(
        in_train_mode(ScheduleFreeAdam),
        in_train_mode(schedulefree.AdamWScheduleFree, weight_decay=0.0),
        NO_DECAY,
        state_keys=ADAM_STATE,
        before_step=round_trips(),
        rtol=RTOL,
    )
    finish(ours, ref)


def adamw_on_l2_gradient(groups):
    """The definition of schedule-free Adam: the authors' AdamW without decay, stepped on g + wd * y.

    Returns the reference factory and the hook that adds the L2 term (in train mode the parameters are y).
    """
    decays = [group.get("weight_decay", 0.0) for group in groups]

    def make(model_groups):
        stripped = [{k: v for k, v in g.items() if k != "weight_decay"} for g in model_groups]
        optimizer = schedulefree.AdamWScheduleFree(stripped, weight_decay=0.0)
        optimizer.train()
        return optimizer

    def add_l2(ours, ref):
        with torch.no_grad():
            for group, decay in zip(ref.param_groups, decays):
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.add_(p, alpha=decay)

    return make, add_l2


@pytest.mark.parametrize("groups", list(ADAM_DECAY_CONFIGS.values()), ids=list(ADAM_DECAY_CONFIGS))
def test_adam_with_decay_is_authors_adamw_on_l2_gradient(groups):
    make_reference, add_l2 = adamw_on_l2_gradient(groups)
    ours, ref, _, _ = run_parity(
        in_train_mode(ScheduleFreeAdam),
        make_reference,
        groups,
        state_keys=ADAM_STATE,
        before_step=round_trips(also=add_l2),
        rtol=RTOL,
    )
    finish(ours, ref)
    assert any(g["weight_decay"] > 0 for g in ours.param_groups)


# --- the equations, written out in the paper's form --------------------------------------------------------


def paper_iterates(kind, x0, grads, *, lr, beta, beta2, eps, weight_decay, warmup_steps, r, weight_lr_power):
    """Schedule-free steps with x, y and z explicit (The Road Less Scheduled, eqs. for x, y, z).

    Returns, after each step, (y, x, z): y the point the next gradient is taken at.
    """
    x, z = x0.clone(), x0.clone()
    v = torch.zeros_like(x0)
    lr_max, weight_sum, out = -1.0, 0.0, []
    for k, g in enumerate(grads):
        y = (1 - beta) * z + beta * x
        lr_k = lr * min(1.0, (k + 1) / warmup_steps) if warmup_steps else lr
        lr_max = max(lr_max, lr_k)
        weight = (k + 1) ** r * lr_max**weight_lr_power
        weight_sum += weight
        c = weight / weight_sum
        if kind == "sgd":
            d = g + weight_decay * y
        else:
            if kind == "adam":
                g = g + weight_decay * y
            v = beta2 * v + (1 - beta2) * g * g
            d = g / ((v / (1 - beta2 ** (k + 1))).sqrt() + eps)
            if kind == "adamw":
                d = d + weight_decay * y
        z = z - lr_k * d
        x = (1 - c) * x + c * z
        out.append(((1 - beta) * z + beta * x, x, z))
    return out


EQUATION_CASES = {
    "adamw": (ScheduleFreeAdamW, {"betas": (0.9, 0.99), "eps": 1e-6}),
    "adam": (ScheduleFreeAdam, {"betas": (0.9, 0.99), "eps": 1e-6}),
    # without decay, schedule-free Adam is schedule-free AdamW's update, checked here against the equations
    "adam-without-decay": (ScheduleFreeAdam, {"betas": (0.8, 0.99), "eps": 1e-9, "weight_decay": 0.0}),
    "sgd": (ScheduleFreeSGD, {"momentum": 0.8}),
}


@pytest.mark.parametrize("kind", list(EQUATION_CASES))
def test_update_follows_the_paper_equations(kind):
    cls, specific = EQUATION_CASES[kind]
    common = {"lr": 0.05, "weight_decay": 0.1, "warmup_steps": 3, "r": 0.5, "weight_lr_power": 1.5}
    settings = {**common, **specific}
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 4, generator=gen, dtype=DTYPE)
    grads = [torch.randn(5, 4, generator=gen, dtype=DTYPE) for _ in range(8)]
    beta = specific["betas"][0] if "betas" in specific else specific["momentum"]
    expected = paper_iterates(
        kind.split("-")[0], x0, grads, beta=beta, beta2=specific.get("betas", (0, 0.99))[1],
        eps=specific.get("eps", 0.0), **{key: settings[key] for key in common},
    )
    p = torch.nn.Parameter(x0.clone())
    optimizer = cls([p], **settings)
    optimizer.train()
    for k, (g, (y, x, z)) in enumerate(zip(grads, expected)):
        p.grad = g.clone()
        optimizer.step()
        assert_close(optimizer.state[p]["z"], z, f"{kind} step {k}: z (the base sequence must move)", 1e-12, 1e-15)
        assert_close(p, y, f"{kind} step {k}: y in train mode", 1e-12, 1e-15)
        optimizer.eval()
        assert_close(p, x, f"{kind} step {k}: x after eval()", 1e-12, 1e-15)
        optimizer.train()
        assert_close(p, y, f"{kind} step {k}: y after train()", 1e-12, 1e-15)
        assert not torch.equal(optimizer.state[p]["z"], x0)


# --- protocol ----------------------------------------------------------------------------------------------

CLASSES = {
    "ScheduleFreeAdamW": (ScheduleFreeAdamW, [{"lr": 5e-3, "warmup_steps": 4}, {"lr": 2e-3, "weight_decay": 0.1}]),
    "ScheduleFreeAdam": (ScheduleFreeAdam, [{"lr": 5e-3, "warmup_steps": 4}, {"lr": 2e-3, "weight_decay": 0.1}]),
    "ScheduleFreeSGD": (ScheduleFreeSGD, [{"lr": 5e-2, "warmup_steps": 4}, {"lr": 2e-2, "weight_decay": 0.1}]),
}
AUTHORS = {"ScheduleFreeAdamW": schedulefree.AdamWScheduleFree, "ScheduleFreeSGD": schedulefree.SGDScheduleFree}


def train_on(model, optimizer, data) -> None:
    for tokens, target in data:
        optimizer.zero_grad()
        torch.mean((model(tokens) - target) ** 2).backward()
        optimizer.step()


def saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("save_mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_state_dict_restores_from_either_mode(name, save_mode):
    cls, groups = CLASSES[name]
    data = batches(16)
    model = make_model()
    optimizer = cls(two_groups(model, groups))
    optimizer.train()
    train_on(model, optimizer, data[:8])
    if save_mode == "eval":
        optimizer.eval()
    saved_model, saved_optimizer = saved(model.state_dict()), saved(optimizer.state_dict())
    optimizer.train()
    train_on(model, optimizer, data[8:])
    optimizer.eval()

    resumed_model = make_model(seed=7)  # different weights: everything must come from the save
    resumed_model.load_state_dict(saved_model)
    resumed = cls(two_groups(resumed_model, groups))
    assert not any(g["train_mode"] for g in resumed.param_groups)
    resumed.load_state_dict(saved_optimizer)
    assert all(g["train_mode"] == (save_mode == "train") for g in resumed.param_groups)
    resumed.train()
    train_on(resumed_model, resumed, data[8:])
    resumed.eval()
    for (n, p), q in zip(resumed_model.named_parameters(), model.parameters()):
        assert torch.equal(p, q), f"{name}: {n} differs after resuming from {save_mode} mode"
    for mine, theirs in zip(resumed.param_groups, optimizer.param_groups):
        assert all(mine[key] == theirs[key] for key in GROUP_KEYS)


@pytest.mark.parametrize("name", list(AUTHORS))
def test_loads_the_authors_state_dict(name):
    """Drop-in: a checkpoint of the authors' class (saved in eval mode) continues identically in ours."""
    cls, groups = CLASSES[name]
    data = batches(16)
    model = make_model()
    authors = AUTHORS[name](two_groups(model, groups))
    authors.train()
    train_on(model, authors, data[:8])
    authors.eval()
    saved_model, saved_optimizer = saved(model.state_dict()), saved(authors.state_dict())
    authors.train()
    train_on(model, authors, data[8:])
    authors.eval()

    ours_model = make_model(seed=7)
    ours_model.load_state_dict(saved_model)
    ours = cls(two_groups(ours_model, groups))
    ours.load_state_dict(saved_optimizer)
    ours.train()
    train_on(ours_model, ours, data[8:])
    ours.eval()
    compare_params(ours, authors, "after resuming the authors' checkpoint")
    compare_group_keys(ours, authors, "after resuming the authors' checkpoint")


@pytest.mark.parametrize("name", list(CLASSES))
def test_starts_in_eval_mode_and_step_needs_train_mode(name):
    cls, _ = CLASSES[name]
    p = torch.nn.Parameter(torch.randn(3, dtype=DTYPE))
    optimizer = cls([p])
    assert {k: optimizer.param_groups[0][k] for k in GROUP_KEYS} == {
        "k": 0, "train_mode": False, "weight_sum": 0.0, "lr_max": -1.0, "scheduled_lr": 0.0,
    }
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match=r"train\(\)"):
        optimizer.step()
    optimizer.train()
    optimizer.step()
    optimizer.eval()
    with pytest.raises(RuntimeError, match=r"train\(\)"):
        optimizer.step()
    # a group added after train() is in eval mode: refuse rather than step it and skip it in eval()
    optimizer.train()
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.randn(2, dtype=DTYPE))]})
    with pytest.raises(RuntimeError, match=r"train\(\)"):
        optimizer.step()
    optimizer.train()
    optimizer.step()
    assert optimizer.param_groups[0]["k"] == 2 and optimizer.param_groups[1]["k"] == 1


@pytest.mark.parametrize("name", list(CLASSES))
def test_gradients_are_left_alone(name):
    cls, _ = CLASSES[name]
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=DTYPE))
    optimizer = cls([p], weight_decay=0.1)
    optimizer.train()
    for _ in range(3):
        g = torch.randn_like(p)
        p.grad = g.clone()
        optimizer.step()
        assert torch.equal(p.grad, g)


def test_swaps_are_noops_in_the_same_mode_and_skip_params_without_state():
    used, unused = torch.nn.Parameter(torch.randn(3, dtype=DTYPE)), torch.nn.Parameter(torch.randn(2, dtype=DTYPE))
    optimizer = ScheduleFreeAdamW([used, unused], lr=0.1)
    optimizer.train()
    for g in (torch.ones_like(used), -torch.ones_like(used)):  # after one step x = y = z: take two
        used.grad = g
        optimizer.step()
    before = used.detach().clone(), unused.detach().clone()
    optimizer.train()
    assert torch.equal(used, before[0])
    optimizer.eval()
    assert not torch.equal(used, before[0]) and torch.equal(unused, before[1])
    x = used.detach().clone()
    optimizer.eval()
    assert torch.equal(used, x)
    assert len(optimizer.state.get(unused, {})) == 0


# --- arguments ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(AUTHORS))
def test_signature_matches_the_authors(name):
    ours = inspect.signature(CLASSES[name][0].__init__).parameters
    theirs = inspect.signature(AUTHORS[name].__init__).parameters
    assert [n for n in ours if n != "compiled"] == list(theirs)
    assert ours["compiled"].kind is inspect.Parameter.KEYWORD_ONLY
    for n, parameter in theirs.items():
        if n not in ("self", "params", "foreach"):
            assert ours[n].default == parameter.default, n


def test_adam_signature_mirrors_adamw():
    assert inspect.signature(ScheduleFreeAdam.__init__) == inspect.signature(ScheduleFreeAdamW.__init__)


@pytest.mark.parametrize(
    "cls, kwargs, pattern",
    [
        (ScheduleFreeAdamW, {"betas": (0.0, 0.999)}, "beta"),
        (ScheduleFreeAdam, {"betas": (0.9, 1.0)}, "beta"),
        (ScheduleFreeAdamW, {"warmup_steps": -1}, "warmup_steps"),
        (ScheduleFreeAdamW, {"r": -1.0}, r"\br\b"),
        (ScheduleFreeAdamW, {"weight_lr_power": -2.0}, "weight_lr_power"),
        (ScheduleFreeSGD, {"momentum": 0.0}, "momentum"),
        (ScheduleFreeSGD, {"momentum": 1.0}, "momentum"),
        (ScheduleFreeSGD, {"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_invalid_arguments_are_named(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls([torch.nn.Parameter(torch.randn(2))], **kwargs)
