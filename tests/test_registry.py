"""The registry: 43 records in the guide's order, lookup, capabilities, the factory's rules."""

from __future__ import annotations

import csv
import inspect
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import rvc_optim
from rvc_optim import create_optimizer, get_optimizer_class, list_optimizers, optimizer_info
from rvc_optim.capabilities import capabilities_of, constructor_parameters
from rvc_optim.catalog import GOALS, RECORDS
from rvc_optim.records import NotImplementedYet
from rvc_optim.registry import param_groups_weight_decay
from tests.contract_models import ContractNet

# The guide's table (rating, name, category, best for), extracted once from the guide the project is
# based on, so the records are checked against it in every clone.
GUIDE_TABLE = Path(__file__).resolve().parent / "data" / "guide_table.csv"
TORCH_TEN = ("AdamW", "Adam", "NAdam", "RAdam", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "ASGD")


def _guide_table() -> list[tuple[float, str, str, str]]:
    with GUIDE_TABLE.open(encoding="utf-8", newline="") as f:
        return [(float(row["rating"]), row["name"], row["category"], row["best_for"]) for row in csv.DictReader(f)]


def test_the_guide_table_has_all_43_rows():
    table = _guide_table()
    assert len(table) == 43 == len({name for _, name, _, _ in table})
    assert all(2.0 <= rating <= 5.0 and category and best_for for rating, _, category, best_for in table)


def test_forty_three_names_in_the_guides_order():
    names = list_optimizers()
    assert len(names) == 43 == len(set(names))
    table = _guide_table()
    assert [row[1] for row in table] == names
    for rating, name, category, best_for in table:
        record = optimizer_info(name)
        assert (record.rating, record.category, record.best_for) == (rating, category, best_for), name


def test_records_are_frozen_and_complete():
    for record in RECORDS:
        with pytest.raises(AttributeError):
            record.rating = 1.0  # type: ignore[misc]
        with pytest.raises(TypeError):
            record.recommended["lr"] = 1.0  # type: ignore[index]
        assert 2.0 <= record.rating <= 5.0
        assert record.source == ("torch" if record.name in TORCH_TEN else "rvc_optim")
        assert record.description and record.when_to_use and record.state and record.best_for
        assert record.paper.title and record.paper.authors and record.paper.year > 1900


def test_the_torch_ten_are_torchs_own_classes():
    for name in TORCH_TEN:
        assert get_optimizer_class(name) is getattr(torch.optim, name)
        assert getattr(rvc_optim, name) is getattr(torch.optim, name)


@pytest.mark.parametrize("spelling", ["adamw", "ADAMW", "adam_w", "Adam-W", "adam w"])
def test_names_match_loosely(spelling):
    assert optimizer_info(spelling).name == "AdamW"


def test_aliases_resolve():
    for record in RECORDS:
        for alias in record.aliases:
            assert optimizer_info(alias) is record
    assert optimizer_info("sophiag").name == "Sophia"
    assert optimizer_info("adafactor").name == "AdaFactor"
    assert optimizer_info("sf-adamw").name == "ScheduleFreeAdamW"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match="AdamW"):
        optimizer_info("adamww")
    with pytest.raises(ValueError, match="unknown optimizer"):
        create_optimizer("no-such-optimizer", [nn.Parameter(torch.zeros(1))])


def test_list_filters():
    assert set(list_optimizers(min_rating=5.0)) == {r.name for r in RECORDS if r.rating >= 5.0}
    lr_free = list_optimizers(category="lr-free")
    assert lr_free and all(optimizer_info(n).category == "LR-Free" for n in lr_free)


def test_capabilities_agree_with_the_class():
    for record in RECORDS:
        if not record.available:
            with pytest.raises(NotImplementedYet, match="not implemented yet"):
                record.cls
            continue
        caps = record.capabilities
        params = constructor_parameters(record.cls)
        for key in ("lr", "eps", "weight_decay", "momentum", "fused", "betas"):
            assert caps.accepts(key) == (key in params), (record.name, key)
        if caps.betas:
            assert caps.num_betas == len(params["betas"].default)
        for key in record.test_settings:
            assert key in params or key == "num_iterations", f"{record.name}: test setting {key}"


def test_probes_find_what_torch_documents():
    """The probes are the source of two capabilities: check them on classes whose answer is known."""
    for name in ("SGD", "Adagrad"):
        assert capabilities_of(getattr(torch.optim, name)).sparse_grad
    for name in ("AdamW", "Adam", "NAdam", "RMSprop"):
        assert not capabilities_of(getattr(torch.optim, name)).sparse_grad
    assert capabilities_of(torch.optim.Adagrad).state_before_step
    assert not capabilities_of(torch.optim.AdamW).state_before_step


def test_protocol_fields():
    for record in RECORDS:
        p = record.protocol
        if p.lr_role == "multiplier":
            assert record.recommended.get("lr", 1.0) == 1.0, record.name
        if p.host_syncs_per_step or p.host_syncs_per_param:
            assert p.host_sync_reason, record.name
        if p.owns_schedule:
            assert not p.wants_lr_scheduler
    assert optimizer_info("Ranger21").protocol.run_length is not None
    assert optimizer_info("ScheduleFreeAdamW").protocol.train_eval


def test_generic_hparams_dropped_with_one_warning():
    params = [nn.Parameter(torch.zeros(3))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = create_optimizer("SGD", params, lr=0.1, betas=(0.8, 0.99), eps=1e-9)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "betas" in messages[0] and "eps" in messages[0]
    assert isinstance(opt, torch.optim.SGD)


def test_wrong_length_betas_dropped():
    params = [nn.Parameter(torch.zeros(3))]
    with pytest.warns(UserWarning, match="betas"):
        opt = create_optimizer("Adam", params, betas=(0.9, 0.99, 0.999))
    assert opt.param_groups[0]["betas"] == optimizer_info("Adam").recommended.get("betas", (0.9, 0.999))


def test_unknown_argument_is_a_type_error_naming_the_accepted():
    with pytest.raises(TypeError, match=r"weight_decay"):
        create_optimizer("AdamW", [nn.Parameter(torch.zeros(3))], weight_decy=0.1)


def test_recommended_settings_fill_what_the_caller_leaves_out():
    record = optimizer_info("AdamW")
    opt = create_optimizer("AdamW", [nn.Parameter(torch.zeros(3))])
    for key, value in record.recommended.items():
        assert opt.param_groups[0][key] == value
    opt = create_optimizer("AdamW", [nn.Parameter(torch.zeros(3))], lr=3e-4)
    assert opt.param_groups[0]["lr"] == 3e-4


def test_module_weight_decay_goes_to_weights_only():
    model = ContractNet()
    groups = param_groups_weight_decay(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = sorted(names[i] for i in decayed)
    assert decayed_names == ["conv.parametrizations.weight.original1", "emb.weight", "head.weight", "up.weight"]
    opt = create_optimizer("AdamW", model, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_fused_where_supported_and_not_with_sparse_embeddings():
    opt = create_optimizer("AdamW", ContractNet())
    assert opt.defaults["fused"] is True
    opt = create_optimizer("AdamW", ContractNet(), fused=False)
    assert not opt.defaults["fused"]
    opt = create_optimizer("Adagrad", ContractNet(sparse_embedding=True))
    assert not opt.defaults["fused"]


def test_params_forms():
    model = ContractNet()
    for params in (model.parameters(), list(model.parameters()), [{"params": list(model.parameters())}], model):
        assert create_optimizer("Adam", params).param_groups
    with pytest.raises(ValueError, match="empty"):
        create_optimizer("Adam", [])


def test_not_implemented_yet_says_so():
    pending = [r for r in RECORDS if not r.available]
    for record in pending:
        with pytest.raises(NotImplementedYet, match="not implemented yet"):
            create_optimizer(record.name, [nn.Parameter(torch.zeros(2))])


def test_availability_is_per_class_not_per_module():
    """Records may share a module (AdaBelief and AdaBeliefV2): one class landing there must not make
    its sibling available, whose `.cls` would then be an AttributeError instead of NotImplementedYet."""
    from dataclasses import replace

    lion = optimizer_info("Lion")
    assert lion.available
    missing = replace(lion, name="NotLion", class_path="rvc_optim.optim.lion:NoSuchOptimizer")
    assert not missing.available
    with pytest.raises(NotImplementedYet, match="not implemented yet"):
        missing.cls


def test_a_module_that_fails_to_import_raises(tmp_path, monkeypatch):
    from dataclasses import replace

    (tmp_path / "rvc_optim_broken_module.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = replace(optimizer_info("Lion"), name="Broken", class_path="rvc_optim_broken_module:Lion")
    with pytest.raises(RuntimeError, match="broken on import"):
        broken.available


def test_goals_name_registered_optimizers():
    keys = [g.key for g in GOALS]
    assert keys == ["default", "drop-in", "fastest", "no-lr-tuning", "low-memory", "large-batch"]
    for goal in GOALS:
        for name in goal.names:
            assert optimizer_info(name).name == name


def test_every_class_importable_by_registry_name():
    for record in RECORDS:
        if record.available:
            assert getattr(rvc_optim, record.name) is record.cls
        else:
            with pytest.raises(NotImplementedYet):
                getattr(rvc_optim, record.name)
    assert inspect.isclass(rvc_optim.AdamW)


def test_register_and_unregister_an_optimizer_of_your_own():
    from dataclasses import replace

    from rvc_optim.registry import register, unregister

    record = replace(optimizer_info("SGD"), name="MySGD", aliases=("my-sgd-alias",))
    register(record)
    try:
        assert optimizer_info("mysgd") is record and optimizer_info("my sgd alias") is record
        assert list_optimizers()[-1] == "MySGD"
        assert isinstance(create_optimizer("MySGD", [nn.Parameter(torch.zeros(2))]), torch.optim.SGD)
        with pytest.raises(ValueError, match="already registered"):
            register(record)
    finally:
        unregister("MySGD")
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizer_info("MySGD")
    with pytest.raises(ValueError, match="catalog"):
        unregister("AdamW")
