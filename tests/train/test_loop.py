"""The training loop: one step with every available optimizer, a falling loss, the protocol hooks
(closure, curvature refresh with a kept graph, parameter routing, train/eval, run length, lr as a
multiplier) through a stand-in optimizer registered for the test, skipped non-finite steps, and the
mixed-precision paths.

Everything runs the ``tiny`` config on a 4-item synthetic data set, one CPU thread (the test machine
is shared; several threads on a loaded machine are slower than one).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import rvc_optim
from rvc_optim import registry
from rvc_optim.records import CurvatureRefresh, OptimizerInfo, Paper, ParamRouting, Protocol, RunLength
from rvc_optim.train import loop as loop_mod
from rvc_optim.train import optim_setup
from rvc_optim.train.checkpoint import load_checkpoint
from rvc_optim.train.config import get_config
from rvc_optim.train.loop import TrainConfig, TrainingStopped, train
from rvc_optim.train.model import build_discriminator, build_generator
from rvc_optim.train.weight_norm_keys import to_legacy_state_dict

AVAILABLE = rvc_optim.list_optimizers(available_only=True)


# ---------------------------------------------------------------------- shared helpers
def make_tc(data: Path, run_dir: Path, **changes) -> TrainConfig:
    """A quiet, small run: batch 1, no TensorBoard, no progress bar, log every step."""
    base = TrainConfig(
        data=str(data), run_dir=str(run_dir), model_config="tiny", steps=1, batch_size=1, seed=7,
        log_every=1, eval_every=0, save_every=0, keep_last=0, progress=False, tensorboard=False, device="cpu",
    )
    return replace(base, **changes)


def initial_state(cfg_name: str = "tiny", seed: int = 7) -> tuple[dict, dict]:
    """The legacy-named state dicts the trainer starts from (models are built right after seeding)."""
    loop_mod._seed_everything(seed)
    cfg = get_config(cfg_name)
    g = build_generator(cfg)
    d = build_discriminator(cfg)
    return to_legacy_state_dict(g.state_dict()), to_legacy_state_dict(d.state_dict())


def changed(before: dict, after: dict) -> int:
    return sum(not torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------- every optimizer, one step
@pytest.mark.parametrize("name", AVAILABLE)
def test_one_step_every_available_optimizer(name, experiment, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "dropped eps" for optimizers without one
        # two steps: an optimizer may spend its first call building its state (SOAP's first call computes
        # its eigenbases and moves no weight, as its authors' does)
        result = train(make_tc(experiment, tmp_path, optimizer=name, steps=2))
    assert result.step == 2 and result.skipped_steps == 0
    row = result.history[-1]
    for key in ("loss_d", "loss_g", "loss_mel", "loss_kl", "grad_norm_d", "grad_norm_g"):
        assert math.isfinite(row[key]), f"{name}: {key} = {row[key]}"
    g0, d0 = initial_state()
    ck_g, ck_d = load_checkpoint(tmp_path / "G_2.pth"), load_checkpoint(tmp_path / "D_2.pth")
    for what, ck, init in (("generator", ck_g, g0), ("discriminator", ck_d, d0)):
        weights = ck.get("model_train", ck["model"])
        assert ck["optimizer_name"] == name
        wants = rvc_optim.optimizer_info(name).protocol.wants_lr_scheduler
        assert (ck["scheduler"] is not None) == wants, f"{name}: LR scheduler where the protocol says {wants}"
        assert changed(init, weights) > 0, f"{name}: the {what} was not stepped"
        assert all(torch.isfinite(v).all() for v in weights.values()), f"{name}: non-finite {what} weights"


# ---------------------------------------------------------------------- the loss falls
def test_loss_falls_with_adamw(experiment, tmp_path):
    """12 steps at lr 1e-3 (AdamW's recommended 1e-4 needs ~100 steps for a clear fall): the mel loss
    of the last 3 steps is at least 5% below that of the first 3 (measured: 145 -> 105)."""
    result = train(make_tc(experiment, tmp_path, steps=12, log_every=3, lr=1e-3))
    first, last = result.loss_summary("loss_mel")
    first_g, last_g = result.loss_summary("loss_g")
    assert last < 0.95 * first, f"mel loss did not fall: {first:.3f} -> {last:.3f}"
    assert last_g < first_g, f"generator loss did not fall: {first_g:.3f} -> {last_g:.3f}"


# ---------------------------------------------------------------------- protocol hooks, via a stand-in
class StandIn(torch.optim.Optimizer):
    """SGD that records how the trainer drives it. It needs a closure, a run length
    (``total_steps``), a curvature refresh every 2 steps with a kept graph, names for routing, and
    has train/eval modes that move the parameters (so the trainer must restore them exactly)."""

    calls: list[tuple] = []

    def __init__(self, params, lr: float = 1.0, total_steps: int = 0, shift: float = 0.0):
        super().__init__(params, dict(lr=lr))
        self.total_steps = total_steps
        self.shift = shift
        self.training = False
        StandIn.calls.append(("init", total_steps))

    def train(self):
        StandIn.calls.append(("train",))
        if not self.training:
            self._move(-self.shift)
        self.training = True

    def eval(self):
        StandIn.calls.append(("eval",))
        if self.training:
            self._move(self.shift)
        self.training = False

    @torch.no_grad()
    def _move(self, delta: float) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(delta)

    def refresh(self):
        graphs = any(p.grad is not None and p.grad.requires_grad for g in self.param_groups for p in g["params"])
        StandIn.calls.append(("refresh", graphs))

    @torch.no_grad()
    def step(self, closure=None):
        assert self.training, "stepped in eval mode"
        if closure is None:
            raise TypeError("StandIn needs a closure")
        with torch.enable_grad():
            loss = closure()
        StandIn.calls.append(("step", bool(torch.isfinite(loss))))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * 1e-4)
        return loss


STAND_IN = OptimizerInfo(
    name="StandInTest",
    class_path=f"{__name__}:StandIn",
    rating=3.0,
    category="Test",
    best_for="testing the trainer's protocol hooks",
    paper=Paper("none", "nobody", 2024),
    source="rvc_optim",
    description="stand-in",
    when_to_use="never",
    state="none",
    recommended={"lr": 1.0, "shift": 1e-3},
    protocol=Protocol(
        lr_role="multiplier",
        owns_schedule=True,
        train_eval=True,
        run_length=RunLength(total_steps_kwarg="total_steps"),
        curvature_refresh=CurvatureRefresh(every=2, method="refresh", needs_create_graph=True),
        param_routing=ParamRouting(rule="by name", wants_names=True),
        needs_closure=True,
    ),
)


@pytest.fixture
def stand_in(monkeypatch):
    registry.register(STAND_IN)
    StandIn.calls = []
    given = []
    real = optim_setup.create_optimizer

    def spy(name, params, **kw):
        given.append((name, params, kw))
        return real(name, params, **kw)

    monkeypatch.setattr(optim_setup, "create_optimizer", spy)
    yield given
    registry.unregister(STAND_IN.name)


@pytest.mark.filterwarnings(r"ignore:Using backward\(\) with create_graph=True")
def test_protocol_hooks_with_a_stand_in_optimizer(stand_in, experiment, tmp_path):
    with pytest.warns(UserWarning, match="lr multiplies the step size"):
        result = train(make_tc(experiment, tmp_path, optimizer="StandInTest", steps=3, lr=1e-4, save_every=2))
    assert result.step == 3 and result.skipped_steps == 0
    # the module itself and the run length went to create_optimizer, for G and for D
    assert [type(p).__name__ for _, p, _ in stand_in] == ["SynthesizerTrnMs768NSFsid", "MultiPeriodDiscriminatorV2"]
    assert all(kw["num_iterations"] == 3 for _, _, kw in stand_in)
    assert StandIn.calls.count(("init", 3)) == 2
    # closures stepped both models every step; refreshes at steps 0 and 2, after a backward with a graph
    assert StandIn.calls.count(("step", True)) == 6
    assert StandIn.calls.count(("refresh", True)) == 4 and not any(c == ("refresh", False) for c in StandIn.calls)
    # train/eval around checkpoints; no LR scheduler for an optimizer that owns its schedule
    assert ("eval",) in StandIn.calls and StandIn.calls[-1] == ("train",)
    ck = load_checkpoint(tmp_path / "G_3.pth")
    assert ck["scheduler"] is None and "model_train" in ck
    # "model" holds the evaluation weights: the training weights moved by +shift (1e-3)
    key = next(k for k in ck["model"] if k.endswith("emb_g.weight"))
    assert torch.allclose(ck["model"][key], ck["model_train"][key] + 1e-3, atol=1e-6)


def test_saving_does_not_move_the_training_weights(stand_in, experiment, tmp_path):
    """Saving must not move the training weights: eval(); train() is restored exactly."""
    straight = train(make_tc(experiment, tmp_path / "a", optimizer="StandInTest", steps=2, save_every=0))
    saving = train(make_tc(experiment, tmp_path / "b", optimizer="StandInTest", steps=2, save_every=1))
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(saving.checkpoint)
    for k in a["model_train"]:
        assert torch.equal(a["model_train"][k], b["model_train"][k]), k


# ---------------------------------------------------------------------- non-finite steps
def test_non_finite_steps_are_skipped_then_training_stops(experiment, tmp_path, monkeypatch):
    real = loop_mod.discriminator_loss
    calls = {"n": 0}

    def poisoned(real_out, fake_out):
        calls["n"] += 1
        loss, r, g = real(real_out, fake_out)
        return (loss * math.nan if calls["n"] > 1 else loss), r, g

    monkeypatch.setattr(loop_mod, "discriminator_loss", poisoned)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        with pytest.raises(TrainingStopped, match="2 consecutive steps") as err:
            train(make_tc(experiment, tmp_path, steps=10, save_every=1, max_skipped=2))
    assert "G_" in str(err.value)
    # the good checkpoint of step 1 is intact; the skipped discriminator steps left D untouched
    one = load_checkpoint(tmp_path / "D_1.pth")
    two = load_checkpoint(tmp_path / "D_2.pth")
    assert all(torch.equal(one["model"][k], two["model"][k]) for k in one["model"])
    assert two["skipped_in_a_row"] == 1 and load_checkpoint(tmp_path / "G_1.pth")["skipped_in_a_row"] == 0
    assert not (tmp_path / "G_3.pth").exists()


# ---------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step(precision, experiment, tmp_path):
    """bf16: autocast without a scaler. fp16 on a CPU: autocast + GradScaler (slow on CPUs, but it
    runs; the scaler skips steps with inf/NaN gradients by itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(make_tc(experiment, tmp_path, precision=precision, steps=2, grad_clip=1.0))
    assert result.step == 2
    ck = load_checkpoint(tmp_path / "G_2.pth")
    if precision == "fp16":
        assert ck["scaler"] is not None and ck["scaler"]["scale"] > 0
    else:
        assert ck["scaler"] is None
        assert result.skipped_steps == 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
