"""Each record's protocol claims, read against its class: what a record says a trainer must do has to
be something the class can do (a ``train``/``eval`` pair, run-length arguments, a refresh method,
named parameters, the hyper-parameters it names).

Record-driven like the contract suite: every registered record is a case.
"""

from __future__ import annotations

import pytest
import torch

from rvc_optim.capabilities import constructor_parameters
from rvc_optim.driver import ProtocolDriver
from rvc_optim.records import OptimizerInfo
from tests.contract_models import loss_fn, make_task
from tests.test_contract import ALL, build

# Where an optimizer keeps the step size it finds itself, which lr only multiplies: d in its param
# groups (D-Adaptation, Prodigy), or a running average of its own updates in its state (Adadelta).
FOUND_STEP_SIZE = {"group": ("d",), "state": ("acc_delta",)}


def _one_step(record: OptimizerInfo, optimizer, model) -> None:
    tokens, target = make_task()[1:]
    driver = ProtocolDriver(optimizer, record)
    driver.train()
    optimizer.zero_grad()
    loss_fn(model, tokens, target).backward(**driver.backward_kwargs())
    driver.step()


def _finds_its_step_size(optimizer) -> bool:
    in_groups = any(key in group for group in optimizer.param_groups for key in FOUND_STEP_SIZE["group"])
    in_state = any(key in state for state in optimizer.state.values() for key in FOUND_STEP_SIZE["state"])
    return in_groups or in_state


@pytest.mark.parametrize("record", ALL)
def test_train_eval_iff_the_class_has_train_and_eval(record):
    has_both = all(callable(getattr(record.cls, method, None)) for method in ("train", "eval"))
    assert record.protocol.train_eval == has_both, (
        f"{record.name}: train_eval={record.protocol.train_eval}, but the class "
        f"{'has' if has_both else 'lacks'} train()/eval()"
    )


@pytest.mark.parametrize("record", ALL)
def test_run_length_arguments_are_constructor_arguments(record):
    accepted = constructor_parameters(record.cls)
    run_length = record.protocol.run_length
    for name in run_length.kwarg_names if run_length else ():
        assert name in accepted, f"{record.name}: run_length names {name!r}, not a constructor argument"


@pytest.mark.parametrize("record", ALL)
def test_lr_role_matches_who_finds_the_step_size(record):
    cls, role = record.cls, record.protocol.lr_role
    accepted = constructor_parameters(cls)
    assert ("lr" in accepted) == (role != "none"), f"{record.name}: lr_role {role!r}, lr accepted: {'lr' in accepted}"
    model = make_task()[0]
    optimizer = build(record, model)
    _one_step(record, optimizer, model)
    found = _finds_its_step_size(optimizer)
    assert (role == "multiplier") == found, (
        f"{record.name}: lr_role {role!r}, but the optimizer {'keeps' if found else 'keeps no'} a step size "
        f"it found itself ({FOUND_STEP_SIZE})"
    )
    if role == "multiplier":
        assert accepted["lr"].default == 1.0 and record.recommended.get("lr", 1.0) == 1.0, (
            f"{record.name}: lr multiplies a found step size, so it should default to (and be recommended at) 1.0"
        )


@pytest.mark.parametrize("record", ALL)
def test_curvature_refresh_method_exists(record):
    cls, refresh = record.cls, record.protocol.curvature_refresh
    if refresh is not None:
        assert callable(getattr(cls, refresh.method, None)), (
            f"{record.name}: curvature_refresh calls optimizer.{refresh.method}(), which the class lacks"
        )


@pytest.mark.parametrize("record", ALL)
def test_param_routing_with_names_accepts_named_parameters(record):
    cls, routing = record.cls, record.protocol.param_routing
    if routing is None or not routing.wants_names:
        return
    model = make_task()[0]
    optimizer = cls(list(model.named_parameters()))
    _one_step(record, optimizer, model)
    assert any(len(state) for state in optimizer.state.values()), f"{record.name}: named parameters, no state"


@pytest.mark.parametrize("record", ALL)
def test_single_group_hparams_are_hyperparameters(record):
    record.cls
    names = record.protocol.single_group_hparams
    if not names:
        return
    optimizer = build(record, make_task()[0])
    for name in names:
        assert name in optimizer.defaults, f"{record.name}: single_group_hparams names {name!r}, not in its defaults"


@pytest.mark.parametrize("record", ALL)
def test_single_lr_refuses_groups_with_different_lrs(record):
    record.cls
    if not record.protocol.single_lr:
        return
    params = list(make_task()[0].parameters())
    groups = [{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 0.5}]
    with pytest.raises((ValueError, RuntimeError), match="same lr"):  # Prodigy raises as its reference does
        optimizer = build(record, groups)
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()


@pytest.mark.parametrize("record", ALL)
def test_recommended_settings_are_constructor_arguments(record):
    accepted = constructor_parameters(record.cls)
    unknown = sorted(set(record.recommended) - set(accepted))
    assert not unknown, f"{record.name}: recommended {unknown} are not constructor arguments"
