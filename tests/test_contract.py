"""The contract every registered optimizer keeps. An optimizer is tested by being registered.

Expectations come from its record (settings, protocol, capabilities), never from a list of names.
Every registered record has its class (all 43): a record registered before its class exists fails here.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from rvc_optim import create_optimizer
from rvc_optim.catalog import RECORDS
from rvc_optim.driver import ProtocolDriver
from rvc_optim.records import OptimizerInfo
from tests.contract_models import ContractNet, loss_fn, make_task

ALL = [pytest.param(r, id=r.name) for r in RECORDS]


def build(record: OptimizerInfo, params, **overrides):
    settings = {**record.test_settings, **overrides}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_optimizer(record.name, params, **settings)


def train(record: OptimizerInfo, model, optimizer, tokens, target, steps: int, start: int = 0) -> list[float]:
    driver = ProtocolDriver(optimizer, record)
    driver.steps_taken = start  # a resumed trainer restores its driver's count (the engine checkpoints it)
    driver.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model, tokens, target)
        loss.backward(**driver.backward_kwargs())
        driver.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("record", ALL)
def test_reduces_loss_in_50_steps(record):
    model, tokens, target = make_task()
    optimizer = build(record, model)
    losses = train(record, model, optimizer, tokens, target, 50)
    with torch.no_grad():
        ProtocolDriver(optimizer, record).eval()
        final = loss_fn(model, tokens, target).item()
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert final <= 0.8 * losses[0], f"{record.name}: loss {losses[0]:.4g} -> {final:.4g} in 50 steps"


def _save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("record", ALL)
def test_state_dict_resume_is_bit_identical(record):
    model, tokens, target = make_task()
    straight = build(record, model)
    train(record, model, straight, tokens, target, 12)
    reference = [p.detach().clone() for p in model.parameters()]

    model, tokens, target = make_task()
    first = build(record, model)
    train(record, model, first, tokens, target, 6)
    saved_model = _save_load(model.state_dict())
    saved_optimizer = _save_load(first.state_dict())

    resumed_model, _, _ = make_task(seed=5)  # different initial weights: everything must come from the save
    resumed_model.load_state_dict(saved_model)
    resumed = build(record, resumed_model)
    resumed.load_state_dict(saved_optimizer)
    train(record, resumed_model, resumed, tokens, target, 6, start=6)  # curvature refreshes stay on schedule
    for (name, p), ref in zip(resumed_model.named_parameters(), reference):
        assert torch.equal(p.detach(), ref), f"{record.name}: {name} differs after resume by {(p - ref).abs().max():.3g}"


INVALID = {
    "lr": (-1e-3, r"(?i)(lr|learning.rate)"),
    "eps": (-1e-8, r"(?i)eps"),
    "weight_decay": (-0.1, r"(?i)weight.decay"),
}


def _takes_checked_hyperparameters(record: OptimizerInfo) -> bool:
    return bool(record.capabilities.betas) or any(record.capabilities.accepts(key) for key in INVALID)


@pytest.mark.parametrize("record", [r for r in ALL if _takes_checked_hyperparameters(r.values[0])])
def test_invalid_hyperparameters_name_the_argument(record):
    record.cls
    caps = record.capabilities
    model = ContractNet()
    checked = 0
    for key, (bad, pattern) in INVALID.items():
        if caps.accepts(key):
            with pytest.raises(ValueError, match=pattern):
                build(record, model.parameters(), **{key: bad})
            checked += 1
    if caps.betas:
        good = record.recommended.get("betas") or (0.9,) * caps.num_betas
        for i in range(caps.num_betas):
            for bad in (1.0, -0.1):
                betas = tuple(bad if j == i else b for j, b in enumerate(good))
                with pytest.raises(ValueError, match=r"(?i)beta"):
                    build(record, model.parameters(), betas=betas)
        checked += 1
    assert checked


@pytest.mark.parametrize("record", ALL)
def test_sparse_gradients(record):
    model, tokens, target = make_task()
    sparse_model = ContractNet(sparse_embedding=True)
    sparse_model.load_state_dict(model.state_dict())
    caps = record.capabilities
    optimizer = build(record, sparse_model)
    driver = ProtocolDriver(optimizer, record)
    driver.train()
    loss_fn(sparse_model, tokens, target).backward()
    assert sparse_model.emb.weight.grad.is_sparse
    before = sparse_model.emb.weight.detach().clone()
    if caps.sparse_grad:
        driver.step()
        assert not torch.equal(before, sparse_model.emb.weight.detach())
    else:
        with pytest.raises((RuntimeError, ValueError), match=r"(?i)sparse"):
            driver.step()


@pytest.mark.parametrize("record", ALL)
def test_params_without_grad_untouched(record):
    used = torch.nn.Parameter(torch.randn(4, 3))
    unused = torch.nn.Parameter(torch.randn(5))
    optimizer = build(record, [used, unused])
    before = unused.detach().clone()
    driver = ProtocolDriver(optimizer, record)
    driver.train()
    for _ in range(3):
        optimizer.zero_grad()
        (used**2).sum().backward()
        driver.step()
    assert unused.grad is None
    assert torch.equal(unused.detach(), before)
    if not record.capabilities.state_before_step:
        assert len(optimizer.state.get(unused, {})) == 0, f"{record.name} made state for a parameter with no grad"


@pytest.mark.parametrize("record", [r for r in ALL if r.values[0].protocol.lr_role != "none"])
def test_param_groups_lr(record):
    """Optimizers that take a learning rate (A2Grad takes none: its step comes from lips and beta)."""
    record.cls  # a registered but unwritten optimizer fails here
    model, tokens, target = make_task()
    lr = record.test_settings.get("lr", record.recommended.get("lr", 1e-3))
    frozen = [model.head.weight, model.head.bias]
    moving = [p for p in model.parameters() if all(p is not q for q in frozen)]
    if record.protocol.single_lr:
        with pytest.raises((ValueError, RuntimeError), match=r"(?i)lr|learning rate"):
            build(record, [{"params": moving, "lr": lr}, {"params": frozen, "lr": lr * 0.5}])
    # Every optimizer honours a group whose lr is 0 (frozen) next to one that moves.
    optimizer = build(record, [{"params": moving, "lr": lr}, {"params": frozen, "lr": 0.0}])
    before_frozen = [p.detach().clone() for p in frozen]
    before_moving = [p.detach().clone() for p in moving]
    train(record, model, optimizer, tokens, target, 5)
    ProtocolDriver(optimizer, record).eval()
    assert all(torch.equal(p.detach(), b) for p, b in zip(frozen, before_frozen)), f"{record.name}: lr=0 group moved"
    assert any(not torch.equal(p.detach(), b) for p, b in zip(moving, before_moving)), f"{record.name}: nothing moved"
    if record.protocol.single_lr:
        return
    # A second group's own lr is used: halving it changes where that group ends up.
    ends = []
    for head_lr in (lr, lr * 0.5):
        model, tokens, target = make_task()
        frozen = [model.head.weight, model.head.bias]
        moving = [p for p in model.parameters() if all(p is not q for q in frozen)]
        optimizer = build(record, [{"params": moving, "lr": lr}, {"params": frozen, "lr": head_lr}])
        train(record, model, optimizer, tokens, target, 5)
        ends.append(model.head.weight.detach().clone())
    assert not torch.equal(*ends), f"{record.name}: the second group's lr was ignored"


@pytest.mark.parametrize("record", ALL)
def test_closure_loss_returned(record):
    model, tokens, target = make_task()
    optimizer = build(record, model)
    driver = ProtocolDriver(optimizer, record)
    driver.train()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model, tokens, target)
        loss.backward()
        return loss

    loss = driver.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("record", ALL)
def test_bf16_parameters_step_and_stay_finite(record):
    model, tokens, target = make_task(dtype=torch.bfloat16)
    optimizer = build(record, model)
    train(record, model, optimizer, tokens, target, 5)
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all(), f"{record.name}: {name} not finite in bf16"


@pytest.mark.parametrize("record", ALL)
def test_zero_grad(record):
    model, tokens, target = make_task()
    optimizer = build(record, model)
    loss_fn(model, tokens, target).backward()
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("record", ALL)
def test_rvc_default_arguments_never_crash(record):
    """What RVC's trainer passes every optimizer: create_optimizer must adapt, not crash."""
    model, tokens, target = make_task()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = create_optimizer(
            record.name, model, lr=1e-4, betas=(0.8, 0.99), eps=1e-9, weight_decay=0, num_iterations=100
        )
    train(record, model, optimizer, tokens, target, 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
