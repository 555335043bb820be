"""Checkpoints: atomic writes, keep-last-K, resume lookup, RNG states, RVC-layout pretrained weights,
and exact resumption (N steps straight == N/2 + resume + N/2, bit for bit on a CPU)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rvc_optim.train import checkpoint as ckpt_mod
from rvc_optim.train.checkpoint import (
    atomic_save,
    capture_rng,
    checkpoint_pairs,
    latest_checkpoint,
    load_checkpoint,
    load_pretrained,
    prune_checkpoints,
    resolve_resume,
    restore_rng,
)
from rvc_optim.train.config import get_config
from rvc_optim.train.loop import ResumeError, train
from rvc_optim.train.model import build_discriminator, build_generator
from rvc_optim.train.weight_norm_keys import to_legacy_state_dict

from tests.train.test_loop import make_tc


# ---------------------------------------------------------------------- atomic writes, pruning, lookup
def test_atomic_save_failure_leaves_previous_file_and_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "G_10.pth"
    atomic_save({"model": {"w": torch.ones(3)}}, target)

    def broken_save(obj, f, *a, **kw):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"model": {"w": torch.zeros(3)}}, target)
    assert torch.equal(torch.load(target, weights_only=True)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["G_10.pth"], "a temp file was left behind"


def test_atomic_save_interrupted_by_keyboard(tmp_path, monkeypatch):
    def interrupted(obj, f, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"x": 1}, tmp_path / "D_1.pth")
    assert list(tmp_path.iterdir()) == []


def _touch_pairs(folder, steps, d_too=True):
    for s in steps:
        atomic_save({"model": {}}, folder / f"G_{s}.pth")
        if d_too:
            atomic_save({"model": {}}, folder / f"D_{s}.pth")


def test_keep_last_k_and_latest(tmp_path):
    _touch_pairs(tmp_path, [5, 10, 100, 20])
    (tmp_path / "G_2333333.txt").write_text("not a checkpoint")
    atomic_save({"model": {}}, tmp_path / "G_200.pth")  # G without its D: not a pair
    assert [s for s, _, _ in checkpoint_pairs(tmp_path)] == [5, 10, 20, 100]
    assert latest_checkpoint(tmp_path) == (tmp_path / "G_100.pth", tmp_path / "D_100.pth")
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["D_10.pth", "D_5.pth", "G_10.pth", "G_5.pth"]
    assert [s for s, _, _ in checkpoint_pairs(tmp_path)] == [20, 100]
    assert (tmp_path / "G_200.pth").exists() and (tmp_path / "G_2333333.txt").exists()
    assert prune_checkpoints(tmp_path, keep_last=0) == []


def test_resolve_resume(tmp_path):
    _touch_pairs(tmp_path, [3, 7])
    assert resolve_resume("latest", tmp_path) == (tmp_path / "G_7.pth", tmp_path / "D_7.pth")
    assert resolve_resume(str(tmp_path / "D_3.pth"), tmp_path / "elsewhere") == (tmp_path / "G_3.pth", tmp_path / "D_3.pth")
    assert resolve_resume(str(tmp_path), tmp_path / "elsewhere")[0].name == "G_7.pth"
    with pytest.raises(FileNotFoundError, match="no G_<step>.pth"):
        resolve_resume("latest", tmp_path / "empty")
    with pytest.raises(ValueError, match="expected 'latest'"):
        resolve_resume(str(tmp_path / "model.pth"), tmp_path)
    (tmp_path / "D_7.pth").unlink()
    with pytest.raises(FileNotFoundError, match="G and D are resumed together"):
        resolve_resume(str(tmp_path / "G_7.pth"), tmp_path)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    atomic_save({"model": {}, "rng": [capture_rng()]}, tmp_path / "G_1.pth")
    expected = (torch.rand(4), np.random.standard_normal(4), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng(load_checkpoint(tmp_path / "G_1.pth")["rng"][0])
    got = (torch.rand(4), np.random.standard_normal(4), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


# ---------------------------------------------------------------------- pretrained weights in RVC's layout
def _rvc_checkpoint(model: torch.nn.Module, path, legacy: bool = True) -> dict:
    sd = model.state_dict()
    ckpt = {
        "model": to_legacy_state_dict(sd) if legacy else sd,
        "iteration": 1,
        "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-4).state_dict(),
        "learning_rate": 1e-4,
    }
    torch.save(ckpt, path)
    return ckpt


@pytest.mark.parametrize("legacy", [True, False], ids=["weight_g/weight_v", "parametrizations"])
def test_pretrained_rvc_layout_loads_strictly(tmp_path, legacy):
    cfg = get_config("tiny")
    torch.manual_seed(1)
    src_g, src_d = build_generator(cfg), build_discriminator(cfg)
    _rvc_checkpoint(src_g, tmp_path / "f0G.pth", legacy)
    _rvc_checkpoint(src_d, tmp_path / "f0D.pth", legacy)
    torch.manual_seed(2)
    g, d = build_generator(cfg), build_discriminator(cfg)
    load_pretrained(g, tmp_path / "f0G.pth")
    load_pretrained(d, tmp_path / "f0D.pth")
    for src, dst in ((src_g, g), (src_d, d)):
        for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
            assert torch.equal(a, b), k


def test_pretrained_mismatch_is_a_clear_error(tmp_path):
    cfg = get_config("tiny")
    ckpt = _rvc_checkpoint(build_generator(cfg), tmp_path / "f0G.pth")
    del ckpt["model"]["emb_g.weight"]
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="(?s)do not fit this model.*emb_g.weight"):
        load_pretrained(build_generator(cfg), tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit this model"):
        load_pretrained(build_generator(get_config("32k")), tmp_path / "f0G.pth")


def test_training_from_pretrained(experiment, tmp_path):
    cfg = get_config("tiny")
    torch.manual_seed(1)
    _rvc_checkpoint(build_generator(cfg), tmp_path / "f0G.pth")
    _rvc_checkpoint(build_discriminator(cfg), tmp_path / "f0D.pth")
    result = train(make_tc(experiment, tmp_path / "run", pretrained_g=str(tmp_path / "f0G.pth"),
                           pretrained_d=str(tmp_path / "f0D.pth")))
    assert result.step == 1
    # RVC's tools read our checkpoint: its keys, legacy weight-norm names, a strict load
    ck = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert {"model", "iteration", "optimizer", "learning_rate"} <= set(ck)
    assert any(k.endswith("weight_g") for k in ck["model"]) and not any("parametrizations" in k for k in ck["model"])
    load_pretrained(build_generator(cfg), result.checkpoint)


# ---------------------------------------------------------------------- exact resume
RESUME_OPTIMIZERS = ["AdamW", "ScheduleFreeAdamW"]


@pytest.mark.parametrize("name", RESUME_OPTIMIZERS)
def test_resume_is_exact(name, experiment, tmp_path):
    """6 steps straight vs 3 + resume + 3: with batch 1 and 4 items (4 batches per epoch) the resume
    point is mid-epoch and the resumed half crosses an epoch boundary (scheduler step, new order)."""
    straight = train(make_tc(experiment, tmp_path / "straight", optimizer=name, steps=6))
    first = train(make_tc(experiment, tmp_path / "resumed", optimizer=name, steps=3, save_every=3))
    ck = load_checkpoint(first.checkpoint)
    assert (ck["step"], ck["iteration"], ck["data"]["finished_batches"]) == (3, 1, 3)
    resumed = train(make_tc(experiment, tmp_path / "resumed", optimizer=name, steps=6, resume="latest"))
    assert resumed.step == straight.step == 6 and resumed.epoch == straight.epoch == 2
    for prefix in ("G", "D"):
        a = load_checkpoint(tmp_path / "straight" / f"{prefix}_6.pth")
        b = load_checkpoint(tmp_path / "resumed" / f"{prefix}_6.pth")
        for entry in ("model", "model_train"):
            assert (entry in a) == (entry in b)
            for k in a.get(entry, {}):
                assert torch.equal(a[entry][k], b[entry][k]), (
                    f"{name} {prefix} {entry} {k}: max diff {(a[entry][k] - b[entry][k]).abs().max().item():.3g}"
                )
        assert a["scheduler"] == b["scheduler"]
        state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
        for i in state_a:
            for k, v in state_a[i].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(state_b[i][k])), f"{name} {prefix} state {i}.{k}"
    # the logged losses of the resumed half equal the straight run's
    tail = {row["step"]: row["loss_g"] for row in straight.history}
    assert [row["loss_g"] for row in resumed.history] == [tail[row["step"]] for row in resumed.history]


def test_resume_with_another_optimizer_needs_reset(experiment, tmp_path):
    train(make_tc(experiment, tmp_path, optimizer="AdamW", steps=1))
    with pytest.raises(ResumeError, match="already holds checkpoints.*--resume latest"):
        train(make_tc(experiment, tmp_path, optimizer="AdamW", steps=1))  # a fresh run over an old one
    with pytest.raises(ResumeError, match="--reset-optimizer"):
        train(make_tc(experiment, tmp_path, optimizer="Lion", steps=2, resume="latest"))
    result = train(make_tc(experiment, tmp_path, optimizer="Lion", steps=2, resume="latest", reset_optimizer=True))
    assert result.step == 2
    ck = load_checkpoint(tmp_path / "G_2.pth")
    assert ck["optimizer_name"] == "Lion"
    assert ck["data"]["finished_batches"] == 2 and ck["iteration"] == 1


def test_resume_from_rvc_own_checkpoints(experiment, tmp_path):
    """RVC's G_/D_ files (no position, no RNG, one AdamW param group): the optimizer state does not fit
    the registry's decay/no-decay groups, so --reset-optimizer is required; then training continues
    from their weights at RVC's position: the start of the saved epoch."""
    cfg = get_config("tiny")
    torch.manual_seed(1)
    g, d = build_generator(cfg), build_discriminator(cfg)
    for prefix, model in (("G", g), ("D", d)):
        ckpt = _rvc_checkpoint(model, tmp_path / f"{prefix}_8.pth")
        ckpt["iteration"] = 3
        torch.save(ckpt, tmp_path / f"{prefix}_8.pth")
    with pytest.raises(ResumeError, match="does not fit.*--reset-optimizer"):
        train(make_tc(experiment, tmp_path, steps=9, resume="latest"))
    result = train(make_tc(experiment, tmp_path, steps=9, resume="latest", reset_optimizer=True))
    # 4 batches per epoch: epoch 3 starts at step 8; one step taken
    assert (result.step, result.epoch) == (9, 3)
    assert load_checkpoint(tmp_path / "G_9.pth")["data"]["finished_batches"] == 1


def test_rvc_trainer_loads_our_adamw_state(experiment, tmp_path):
    """RVC resumes with ``torch.optim.AdamW(net.parameters(), lr, betas, eps)`` and
    ``load_state_dict(saved["optimizer"])``: our two-group state must arrive as its one group, in its
    parameter order (the order our models register parameters, RVC's: see data/rvc_v2_shapes.json)."""
    result = train(make_tc(experiment, tmp_path, steps=2))
    for prefix, build in (("G", build_generator), ("D", build_discriminator)):
        ck = load_checkpoint(tmp_path / f"{prefix}_2.pth")
        ours = ck["optimizer_groups"]
        assert len(ours["param_groups"]) == 2 and len(ck["optimizer"]["param_groups"]) == 1
        # RVC's model: legacy weight-norm parameters, registered in our order
        torch.manual_seed(0)
        names = list(to_legacy_state_dict(dict(build(get_config("tiny")).named_parameters())))
        params = [torch.nn.Parameter(ck["model"][n].clone()) for n in names]
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.8, 0.99), eps=1e-9)
        opt.load_state_dict(ck["optimizer"])  # RVC's bare try/except would restart from scratch otherwise
        scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.999875, last_epoch=ck["iteration"] - 2)
        for p, name in zip(params, names):
            assert opt.state[p]["exp_avg"].shape == p.shape, name
            p.grad = torch.ones_like(p)
        opt.step()
        scheduler.step()
        assert opt.param_groups[0]["weight_decay"] > 0
    assert result.step == 2
