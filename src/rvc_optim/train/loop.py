"""The RVC v2 training loop: one readable loop, settings as plain data, every side effect in sight.

:func:`train` does what RVC's ``infer/modules/train/train.py`` does per iteration (see the fact
sheet, section 5), with any optimizer of the registry:

1. generator forward under autocast: ``y_hat, ids_slice, ...``; ``y_mel`` = the full-utterance mel
   of the cached linear spectrogram sliced with ``ids_slice``; ``y_hat_mel`` from ``y_hat`` in
   float32; the real waveform sliced to the same segment;
2. discriminator step: LSGAN loss on ``(wave, y_hat.detach())``, backward, ``scaler.unscale_``,
   total grad norm (clipped with ``--grad-clip``), step;
3. generator step: adversarial + feature matching + ``c_mel`` x mel L1 + ``c_kl`` x KL, backward
   (into the generator only), unscale, norm, step; one ``scaler.update()`` per iteration;
4. log / evaluate / checkpoint on their intervals (rank 0), LR schedulers once per epoch.

Steps 1-3 are :func:`train_step` (what the benchmark and any harness call too); the parts around
it are :func:`setup_run` (data, models, optimizers, position: fresh or from a checkpoint),
:func:`save_checkpoint`, :func:`evaluate`, :class:`RunLog` (CSV, TensorBoard, progress) and the loop
itself, ``_train``, which reads top to bottom as step 4.

What the optimizer needs beyond ``backward(); step()`` comes from its record's protocol through
:class:`rvc_optim.driver.ProtocolDriver`: ``train()``/``eval()`` around evaluation and checkpoints,
``backward_kwargs()`` (a kept graph for curvature refreshes), ``step()`` (the refreshes themselves),
closures where required, an LR scheduler only where ``wants_lr_scheduler``. The loop never looks at
an optimizer's name.

Differences from RVC, and why:

* ``y_mel`` is computed in float32 even under fp16 (RVC computes it under autocast in half); it is
  data, not a model output.
* Each rank draws its own random slices and noise (torch's global RNG seeded from ``(seed, rank)``
  after the models are built from ``seed``); RVC seeds every rank identically.
* The generator's backward reaches only the generator's parameters (``backward(inputs=...)``), and
  the generator step runs the discriminator without its DDP wrapper: RVC also computes (and then
  discards) discriminator gradients there.
* A non-finite loss or gradient skips the step with a warning in every precision; ``max_skipped``
  consecutive skips stop training (:class:`TrainingStopped`), leaving the last checkpoint intact.
* Weight-norm weights of the discriminator are computed once per call for the real and the generated
  waveform (``torch.nn.utils.parametrize.cached``) instead of twice; the numbers are the same.
* Checkpoints are written every ``save_every`` optimizer steps (RVC: every N epochs) and hold the
  position within the epoch, so ``--resume`` continues exactly, mid-epoch included (RVC repeats the
  saved epoch).

Host reads per iteration (each one waits for the device to finish the work queued before it):

* two, by the loop: :func:`_all_finite` before the discriminator's step and before the generator's
  (one boolean each, all-reduced first under DDP). They cannot be merged into one without changing
  what is skipped: whether the discriminator steps must be known on the host before its ``step()``
  (an optimizer step is host-driven and cannot be undone), and the generator's loss is computed with
  the discriminator as that step left it, so the generator's check exists only afterwards;
* plus the optimizers' own (their record's ``host_syncs_per_step``: 0 for the ones this project
  writes) and, under fp16, one in each ``GradScaler.step`` (its found-inf check, unless the optimizer
  takes the scaler's state itself, as torch's fused ones do);
* plus, every ``log_every`` steps, one for the logged averages, and whatever evaluation and
  checkpoints read on their intervals;
* plus, under DDP when a stop can be requested (the CLI's SIGINT/SIGTERM handling), one all-reduce of
  the stop flag per iteration, so that every rank saves the same step.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from rvc_optim.driver import ProtocolDriver
from rvc_optim.registry import optimizer_info
from rvc_optim.train import distributed
from rvc_optim.train.checkpoint import (
    atomic_save,
    capture_rng,
    checkpoint_pairs,
    load_checkpoint,
    load_pretrained,
    prune_checkpoints,
    remove_orphaned_temp_files,
    resolve_resume,
    restore_rng,
    rvc_optimizer_state,
)
from rvc_optim.train.config import ModelConfig, get_config
from rvc_optim.train.data import (
    collate,
    find_experiment,
    infer_model_config,
    make_dataloader,
    mix_seed,
    read_filelist,
)
from rvc_optim.train.export import export_small_model
from rvc_optim.train.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
from rvc_optim.train.mel import mel_spectrogram, spec_to_mel
from rvc_optim.train.model import build_discriminator, build_generator, commons
from rvc_optim.train.optim_setup import RVC_LR_DECAY, build_optimizer, build_scheduler, routing_summary
from rvc_optim.train.weight_norm_keys import load_rvc_state_dict, to_legacy_state_dict

__all__ = ["TrainConfig", "TrainResult", "TrainingStopped", "ResumeError", "Interrupted", "StopRequest", "train",
           "StepParts", "StepResult", "train_step", "Run", "setup_run", "save_checkpoint", "evaluate",
           "validation_mel_l1", "RunLog",
           "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "bf16")
_AMP_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
_LOG_KEYS = ("loss_d", "loss_g", "loss_gen", "loss_fm", "loss_mel", "loss_kl", "grad_norm_d", "grad_norm_g")


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (too many consecutive non-finite steps)."""


class ResumeError(ValueError):
    """A checkpoint cannot be resumed as asked (other optimizer, other data, ...)."""


class StopRequest:
    """Set by a signal handler (see ``rvc_optim.train.cli``): ``signum`` of the first signal, or None.

    The loop sets ``armed`` while it runs; it then checks ``signum`` after every iteration, and on a
    request saves the current step and raises :class:`Interrupted`.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False


class Interrupted(Exception):
    """Training stopped on a signal after saving step ``step`` (``checkpoint``; None on other ranks)."""

    def __init__(self, step: int, checkpoint: Path | None, run_dir: Path, signum: int) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.run_dir, self.signum = step, checkpoint, run_dir, signum


@dataclass
class TrainConfig:
    """Everything a training run needs, as plain data (the CLI fills it from its flags).

    ``steps`` or ``epochs`` sets the run length (``steps`` wins; both None: 20 epochs). ``lr``,
    ``betas``, ``eps`` of None keep each optimizer's recommended values. ``optimizer_d`` None: the
    generator's optimizer; ``optim_args_d`` None: ``optim_args`` when the two optimizers are the
    same, else nothing. Intervals of 0 turn the action off (the final checkpoint and export are
    always written).
    """

    data: str
    run_dir: str
    model_config: str | None = None
    optimizer: str = "AdamW"
    optimizer_d: str | None = None
    optim_args: dict[str, Any] = field(default_factory=dict)
    optim_args_d: dict[str, Any] | None = None
    lr: float | None = None
    betas: tuple[float, ...] | None = None
    eps: float | None = None
    lr_decay: float = RVC_LR_DECAY
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 4
    seed: int = 1234
    num_workers: int = 0
    log_every: int = 50
    eval_every: int = 500
    save_every: int = 1000
    keep_last: int = 2
    resume: str | None = None
    reset_optimizer: bool = False
    pretrained_g: str | None = None
    pretrained_d: str | None = None
    precision: str = "fp32"
    grad_clip: float | None = None
    max_skipped: int = 20
    device: str | None = None
    export_name: str | None = None
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.max_skipped < 1:
            raise ValueError(f"max_skipped must be >= 1, got {self.max_skipped}")
        for name in ("log_every", "eval_every", "save_every", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TrainResult:
    """Where a run ended: ``step`` optimizer steps, in ``epoch`` (1-based; RVC's "iteration"),
    ``epochs_done`` epochs completed (fractional mid-epoch). ``history`` holds one row per log."""

    step: int
    epoch: int
    epochs_done: float
    run_dir: Path
    checkpoint: Path | None
    export: Path | None
    history: list[dict[str, float]]
    skipped_steps: int
    seconds_per_step: float

    def loss_summary(self, key: str = "loss_mel") -> tuple[float, float]:
        """Average of ``key`` over the first and the last third of the logged windows."""
        values = [row[key] for row in self.history if key in row]
        if not values:
            return math.nan, math.nan
        k = max(1, len(values) // 3)
        return float(np.mean(values[:k])), float(np.mean(values[-k:]))

    def trend(self, key: str = "loss_mel", min_points: int = 6) -> str:
        """``"first third a -> last third b (fell)"``, judged on means over windows of logged rows;
        with fewer than ``min_points`` logged rows, says so instead of judging."""
        n = sum(key in row for row in self.history)
        first, last = self.loss_summary(key)
        if n < min_points:
            return f"first {first:.3f} -> last {last:.3f} (too few logged points to judge: {n})"
        verdict = "fell" if last < first else "did not fall"
        return f"first third {first:.3f} -> last third {last:.3f} (means of {n // 3} logs each; {verdict})"


class GenOut(NamedTuple):
    y_hat: torch.Tensor
    ids_slice: torch.Tensor
    z_mask: torch.Tensor
    stats: tuple[torch.Tensor, ...]  # (z, z_p, m_p, logs_p, m_q, logs_q)
    y_mel: torch.Tensor
    y_hat_mel: torch.Tensor
    wave: torch.Tensor  # the real waveform, sliced like y_hat


# --------------------------------------------------------------------------------------------------
# The pieces of one iteration (also used by closures, which must re-evaluate them)
# --------------------------------------------------------------------------------------------------


def generator_forward(net_g: nn.Module, batch: Sequence[torch.Tensor], cfg: ModelConfig, amp) -> GenOut:
    """RVC steps 1-3: generator forward, the two mels, the real waveform sliced to the segment."""
    phone, phone_lengths, pitch, pitchf, spec, spec_lengths, wave, _wave_lengths, sid = batch
    with amp():
        y_hat, ids_slice, _x_mask, z_mask, stats = net_g(phone, phone_lengths, pitch, pitchf, spec, spec_lengths, sid)
    mel = spec_to_mel(spec.float(), cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate, cfg.mel_fmin, cfg.mel_fmax)
    y_mel = commons.slice_segments(mel, ids_slice, cfg.segment_frames)
    y_hat_mel = mel_spectrogram(
        y_hat.float().squeeze(1), cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate,
        cfg.hop_length, cfg.win_length, cfg.mel_fmin, cfg.mel_fmax,
    )
    wave = commons.slice_segments(wave, ids_slice * cfg.hop_length, cfg.segment_size)
    return GenOut(y_hat, ids_slice, z_mask, tuple(stats), y_mel, y_hat_mel, wave)


def discriminator_pass(net_d: nn.Module, wave: torch.Tensor, y_hat: torch.Tensor, amp):
    """``net_d(wave, y_hat)`` with each weight-normed weight computed once for both inputs."""
    with amp(), parametrize.cached():
        return net_d(wave, y_hat)


def generator_losses(d_module: nn.Module, out: GenOut, cfg: ModelConfig, amp) -> dict[str, torch.Tensor]:
    """RVC's generator objective: ``loss_gen + loss_fm + c_mel * L1(mel) + c_kl * KL`` (float32)."""
    _, y_d_hat_g, fmap_r, fmap_g = discriminator_pass(d_module, out.wave, out.y_hat, amp)
    z, z_p, m_p, logs_p, m_q, logs_q = out.stats
    loss_mel = F.l1_loss(out.y_mel, out.y_hat_mel) * cfg.c_mel
    loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, out.z_mask) * cfg.c_kl
    loss_fm = feature_loss(fmap_r, fmap_g)
    loss_gen, _ = generator_loss(y_d_hat_g)
    total = loss_gen + loss_fm + loss_mel + loss_kl
    return {"loss_g": total, "loss_gen": loss_gen, "loss_fm": loss_fm, "loss_mel": loss_mel, "loss_kl": loss_kl}


def grad_norm(params: Sequence[torch.Tensor], clip: float | None) -> torch.Tensor:
    """Total L2 norm of the gradients as a device tensor (no host sync); clips to ``clip`` if given."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if clip is not None:
        torch.nn.utils.clip_grads_with_norm_(params, clip, norm, foreach=True)
    return norm


@contextlib.contextmanager
def evaluation_weights(pairs: Sequence[tuple[nn.Module, ProtocolDriver]]) -> Iterator[dict[int, dict]]:
    """Inside: every optimizer in eval mode (schedule-free: parameters at the averaged point x).

    After: train mode again, with the training-mode parameters restored exactly from a copy taken
    before (``eval(); train()`` is a round trip only up to rounding, which would make a run that
    saves differ from one that does not). Yields ``{id(module): training-mode state dict}`` for the
    modules whose optimizer has train/eval modes (the checkpoint stores it as ``model_train``).
    Optimizers without train/eval modes cost nothing here.
    """
    saved: dict[int, dict] = {}
    for module, driver in pairs:
        if driver.protocol.train_eval:
            saved[id(module)] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for _, driver in pairs:
        driver.eval()
    try:
        yield saved
    finally:
        for module, driver in pairs:
            driver.train()
            if id(module) in saved:
                module.load_state_dict(saved[id(module)])


def _mel_image(mel: torch.Tensor) -> torch.Tensor:
    """``[n_mels, T]`` log-mel -> ``[1, n_mels, T]`` in [0, 1], low frequencies at the bottom."""
    m = mel.detach().float().cpu()
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-5)
    return m.flip(0).unsqueeze(0)


def _resolve_device(spec: str | None, info: distributed.DistInfo) -> torch.device:
    if spec is None:
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return device


def model_config_for(name: str | None, data: str | Path, announce: bool = False) -> tuple[ModelConfig, str | None]:
    """The model config: ``name`` if given, else the experiment's ``config.json``, else inferred from
    its data (printed when ``announce``). Returns the config and the name to record (None: the JSON)."""
    if name is not None:
        return get_config(name), name
    exp = find_experiment(data)
    if exp.config is not None:
        return ModelConfig.from_rvc_json(exp.config), None
    name, source = infer_model_config(data)
    if announce:
        print(f"{data} has no config.json (RVC writes it when its training starts): inferred the {name} config "
              f"from {source}", flush=True)
    return get_config(name), name


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def train(tc: TrainConfig, stop: StopRequest | None = None) -> TrainResult:
    """Train a generator/discriminator pair as configured by ``tc``; see the module docstring.

    ``stop``: set by a signal handler; the loop then saves the current step and raises
    :class:`Interrupted` (see :class:`StopRequest`)."""
    info = distributed.env_dist_info()
    device = _resolve_device(tc.device, info)
    owns_group = info.enabled and not torch.distributed.is_initialized()
    info = distributed.setup(device, info)
    try:
        return _train(tc, info, device, stop)
    finally:
        if owns_group:
            distributed.teardown()


# --------------------------------------------------------------------------------------------------
# One training iteration (the loop, the benchmark and any harness call this)
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class StepParts:
    """What one iteration needs: the models, their optimizers with protocol drivers, the GradScaler
    (disabled outside fp16), the autocast dtype, the config. ``ddp_g`` / ``ddp_d`` are the models as
    called for the forward passes (DDP wrappers, or the models themselves by default); the
    generator step runs the plain ``net_d``."""

    cfg: ModelConfig
    net_g: nn.Module
    net_d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    drv_g: ProtocolDriver
    drv_d: ProtocolDriver
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    info: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    ddp_g: nn.Module | None = None
    ddp_d: nn.Module | None = None

    def __post_init__(self) -> None:
        self.ddp_g = self.net_g if self.ddp_g is None else self.ddp_g
        self.ddp_d = self.net_d if self.ddp_d is None else self.ddp_d
        self.g_params = [p for p in self.net_g.parameters() if p.requires_grad]
        self.d_params = [p for p in self.net_d.parameters() if p.requires_grad]
        self.fork_devices = [self.device] if self.device.type == "cuda" else []

    def amp(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    @property
    def pairs(self) -> list[tuple[nn.Module, ProtocolDriver]]:
        return [(self.net_g, self.drv_g), (self.net_d, self.drv_d)]


class StepResult(NamedTuple):
    """What one iteration did: whether each model stepped (False: non-finite loss or gradient,
    skipped) and its losses and gradient norms as device tensors (reading them is a host sync)."""

    ok_d: bool
    ok_g: bool
    loss_d: torch.Tensor
    norm_d: torch.Tensor
    norm_g: torch.Tensor
    losses_g: dict[str, torch.Tensor]

    def logged(self) -> dict[str, torch.Tensor]:
        return {"loss_d": self.loss_d, "grad_norm_d": self.norm_d, "grad_norm_g": self.norm_g, **self.losses_g}


def train_step(p: StepParts, batch: Sequence[torch.Tensor]) -> StepResult:
    """One iteration on ``batch`` (on the device), RVC's order, every optimizer call through its
    protocol driver (closures where required, kept graphs for refreshes, the scaler under fp16)."""
    rng_at_forward = torch.get_rng_state()  # for closures, which re-run the forward

    # 1. generator forward
    out = generator_forward(p.ddp_g, batch, p.cfg, p.amp)

    # 2. discriminator step
    y_d_hat_r, y_d_hat_g, _, _ = discriminator_pass(p.ddp_d, out.wave, out.y_hat.detach(), p.amp)
    loss_d, _, _ = discriminator_loss(y_d_hat_r, y_d_hat_g)
    p.opt_d.zero_grad(set_to_none=True)
    p.scaler.scale(loss_d).backward(**p.drv_d.backward_kwargs())
    p.scaler.unscale_(p.opt_d)
    norm_d = grad_norm(p.d_params, p.grad_clip)
    ok_d = _all_finite(loss_d, norm_d, p.info)  # one host sync
    if ok_d:
        def closure_d() -> torch.Tensor:
            p.opt_d.zero_grad(set_to_none=True)
            r, g, _, _ = discriminator_pass(p.ddp_d, out.wave, out.y_hat.detach(), p.amp)
            loss = discriminator_loss(r, g)[0]
            loss.backward()
            grad_norm(p.d_params, p.grad_clip)
            return loss

        _step(p.drv_d, p.opt_d, p.scaler, closure_d)

    # 3. generator step (the discriminator without its DDP wrapper: no D gradients wanted)
    losses_g = generator_losses(p.net_d, out, p.cfg, p.amp)
    p.opt_g.zero_grad(set_to_none=True)
    p.scaler.scale(losses_g["loss_g"]).backward(inputs=p.g_params, **p.drv_g.backward_kwargs())
    p.scaler.unscale_(p.opt_g)
    norm_g = grad_norm(p.g_params, p.grad_clip)
    ok_g = _all_finite(losses_g["loss_g"], norm_g, p.info)
    if ok_g:
        def closure_g() -> torch.Tensor:
            p.opt_g.zero_grad(set_to_none=True)
            with torch.random.fork_rng(devices=p.fork_devices):
                torch.set_rng_state(rng_at_forward)
                again = generator_forward(p.ddp_g, batch, p.cfg, p.amp)
            loss = generator_losses(p.net_d, again, p.cfg, p.amp)["loss_g"]
            loss.backward(inputs=p.g_params)
            grad_norm(p.g_params, p.grad_clip)
            return loss

        _step(p.drv_g, p.opt_g, p.scaler, closure_g)
    p.scaler.update()
    return StepResult(ok_d, ok_g, loss_d, norm_d, norm_g, losses_g)


def _step(driver: ProtocolDriver, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, closure) -> None:
    """One optimizer step through the protocol driver: with a closure where the optimizer needs one,
    through the GradScaler under fp16 (it skips the step itself if it found inf/NaN)."""
    if driver.protocol.needs_closure:
        driver.step(closure=closure)
    elif scaler.is_enabled():
        # the scale as a device tensor (get_scale() would read it back): a curvature refresh divides by it
        driver.step(step_fn=lambda: scaler.step(optimizer), loss_scale=scaler._get_scale_async())
    else:
        driver.step()


# --------------------------------------------------------------------------------------------------
# Run setup and resume
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Run:
    """A run set up to train: the step parts, the data, the position (``epoch`` 1-based, RVC's
    "iteration"; ``finished`` batches of it; ``step`` optimizer steps) and the schedules."""

    tc: TrainConfig
    info: distributed.DistInfo
    run_dir: Path
    parts: StepParts
    loader: Any
    batches_per_epoch: int
    total_steps: int
    sched_g: Any
    sched_d: Any
    initial_lr: tuple[float, float]
    resumed_from: Path | None
    epoch: int = 1
    finished: int = 0
    step: int = 0
    skipped_in_a_row: int = 0

    @property
    def epochs_done(self) -> float:
        return self.epoch - 1 + self.finished / self.batches_per_epoch


def _resume_source(tc: TrainConfig, run_dir: Path, names: tuple[str, str]):
    """``(ck_g, ck_d, g_path, d_path)`` of the checkpoint to resume (Nones for a fresh run); refuses another
    optimizer without --reset-optimizer, and a fresh run over an old one."""
    if not tc.resume:
        if checkpoint_pairs(run_dir):
            # A fresh run would mix its checkpoints with the old ones (and keep-last prunes by step).
            found = ", ".join(p.name for _, p, _ in checkpoint_pairs(run_dir)[-2:])
            raise ResumeError(
                f"{run_dir} already holds checkpoints ({found}): pass --resume latest to continue that run, "
                "or choose another --out"
            )
        return None, None, None, None
    g_path, d_path = resolve_resume(tc.resume, run_dir)
    ck_g, ck_d = load_checkpoint(g_path), load_checkpoint(d_path)
    for ck, name, path, flag in ((ck_g, names[0], g_path, "--optimizer"), (ck_d, names[1], d_path, "--optimizer-d")):
        saved = ck.get("optimizer_name", "AdamW")  # RVC's own checkpoints hold AdamW state
        if saved != name and not tc.reset_optimizer:
            raise ResumeError(
                f"{path} was trained with {saved}, but this run asks for {name}. Pass {flag} {saved} "
                f"to continue it, or --reset-optimizer to start {name} with fresh state from these weights."
            )
    return ck_g, ck_d, g_path, d_path


def _restore_optimizers(run: Run, ck_g: dict, ck_d: dict, paths: tuple[Path, Path]) -> None:
    """Optimizer, scheduler, driver and scaler state from the checkpoint (unless --reset-optimizer)."""
    p, tc = run.parts, run.tc
    if not tc.reset_optimizer:
        for opt, ck, path in ((p.opt_g, ck_g, paths[0]), (p.opt_d, ck_d, paths[1])):
            try:
                opt.load_state_dict(ck.get("optimizer_groups", ck["optimizer"]))
            except (ValueError, KeyError) as e:
                # e.g. RVC's own checkpoints: one AdamW group, where ours split decay / no decay
                raise ResumeError(
                    f"{path}: its optimizer state does not fit this optimizer's parameter groups ({e}); "
                    "pass --reset-optimizer to continue from its weights with fresh optimizer state"
                ) from e
        for sched, ck in ((run.sched_g, ck_g), (run.sched_d, ck_d)):
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
        p.drv_g.steps_taken = int(ck_g.get("driver_steps", run.step))
        p.drv_d.steps_taken = int(ck_d.get("driver_steps", run.step))
    if p.scaler.is_enabled() and ck_g.get("scaler"):
        p.scaler.load_state_dict(ck_g["scaler"])


def _restore_or_seed_rng(run: Run, ck_g: dict | None) -> None:
    """RNG for the model's own draws (slices, posterior noise, sine phases): per rank."""
    info = run.info
    saved_rng = ck_g.get("rng") if ck_g is not None else None
    if saved_rng is not None and len(saved_rng) == info.world_size:
        restore_rng(saved_rng[info.rank])
        return
    if saved_rng is not None and info.is_main:
        warnings.warn(
            f"the checkpoint holds RNG states of {len(saved_rng)} processes, this run has "
            f"{info.world_size}: random draws are re-seeded, so the run continues, but not exactly",
            RuntimeWarning,
        )
    _seed_everything(mix_seed(run.tc.seed, info.rank, run.step))


def setup_run(tc: TrainConfig, info: distributed.DistInfo, device: torch.device) -> Run:
    """Data, models, optimizers, schedulers and position: fresh, or as the checkpoint left them."""
    main = info.is_main
    run_dir = Path(tc.run_dir)
    if main:
        for path in remove_orphaned_temp_files(run_dir):
            print(f"removed {path}, left by an interrupted write", flush=True)

    # ---- data and model config
    exp = find_experiment(tc.data)
    cfg, _ = model_config_for(tc.model_config, tc.data)
    rows = read_filelist(exp.filelist, layout=exp.layout)
    if not info.enabled:  # under DDP another rank may be writing a cache right now
        for folder in {row.wav.parent for row in rows}:
            remove_orphaned_temp_files(folder, "*.spec.pt.*.tmp")

    # ---- what to resume from (read before anything is built: it decides epoch, position, weights)
    rec_g = optimizer_info(tc.optimizer)
    rec_d = optimizer_info(tc.optimizer_d or tc.optimizer)
    ck_g, ck_d, g_path, d_path = _resume_source(tc, run_dir, (rec_g.name, rec_d.name))

    # ---- models (built from `seed` on every rank; DDP broadcasts rank 0's anyway)
    _seed_everything(tc.seed)
    net_g = build_generator(cfg)
    net_d = build_discriminator(cfg)
    if ck_g is not None:
        # Training-mode weights where the optimizer has train/eval modes, unless it is being replaced.
        fresh = tc.reset_optimizer
        load_rvc_state_dict(net_g, ck_g["model"] if fresh or "model_train" not in ck_g else ck_g["model_train"])
        load_rvc_state_dict(net_d, ck_d["model"] if fresh or "model_train" not in ck_d else ck_d["model_train"])
    else:
        if tc.pretrained_g:
            load_pretrained(net_g, tc.pretrained_g)
        if tc.pretrained_d:
            load_pretrained(net_d, tc.pretrained_d)
    net_g.to(device)
    net_d.to(device)

    # ---- position: epoch (1-based, RVC's "iteration"), batches finished in it, optimizer steps
    epoch, finished, step, skipped_in_a_row = 1, 0, 0, 0
    data_state = ck_g.get("data") if ck_g is not None else None
    if ck_g is not None:
        epoch = int(ck_g["iteration"])
        finished = int(data_state["finished_batches"]) if data_state else 0
        skipped_in_a_row = int(ck_g.get("skipped_in_a_row", 0))
    loader = make_dataloader(
        rows, cfg, tc.batch_size, tc.seed, epoch, tc.num_workers, info.rank, info.world_size, finished,
        pin_memory=device.type == "cuda",
    )
    batches_per_epoch = loader.batch_sampler.batches_per_epoch
    if ck_g is not None:
        if data_state and int(data_state["batches_per_epoch"]) != batches_per_epoch:
            raise ResumeError(
                f"the checkpoint saw {data_state['batches_per_epoch']} batches per epoch, this run makes "
                f"{batches_per_epoch}: data, --batch-size or the number of processes changed"
            )
        step = int(ck_g["step"]) if "step" in ck_g else (epoch - 1) * batches_per_epoch
    total_steps = tc.steps if tc.steps is not None else (tc.epochs or 20) * batches_per_epoch
    if main and ck_g is not None:
        print(f"resumed from step {step} of {total_steps} in {run_dir}", flush=True)

    # ---- optimizers from the registry, schedulers only where the protocol wants one
    args_d = tc.optim_args_d if tc.optim_args_d is not None else (
        tc.optim_args if rec_d.name == rec_g.name else {}
    )
    opt_g, drv_g = build_optimizer(
        rec_g.name, net_g, total_steps, lr=tc.lr, betas=tc.betas, eps=tc.eps, extra=tc.optim_args,
        who="generator",
    )
    opt_d, drv_d = build_optimizer(
        rec_d.name, net_d, total_steps, lr=tc.lr, betas=tc.betas, eps=tc.eps, extra=args_d,
        who="discriminator", flag="--optim-arg-d",
    )
    initial_lr = (float(opt_g.param_groups[0].get("lr", 0.0)), float(opt_d.param_groups[0].get("lr", 0.0)))
    if main:
        for who, drv in (("generator", drv_g), ("discriminator", drv_d)):
            print(f"{who} optimizer {drv.info.name}: {'; '.join(drv.protocol.lines())}", flush=True)
            routing = routing_summary(drv)
            if routing:
                print(f"{who} parameter routing: {routing}", flush=True)
    use_scaler = tc.precision == "fp16"
    for drv in (drv_g, drv_d):
        if drv.protocol.needs_closure and use_scaler:
            raise ValueError(
                f"{drv.info.name} needs a closure for step(), which GradScaler does not support: "
                "use --precision bf16 or fp32"
            )
    parts = StepParts(
        cfg, net_g, net_d, opt_g, opt_d, drv_g, drv_d, torch.amp.GradScaler(device.type, enabled=use_scaler),
        device, _AMP_DTYPES[tc.precision], tc.grad_clip, info,
    )
    run = Run(
        tc, info, run_dir, parts, loader, batches_per_epoch, total_steps,
        build_scheduler(opt_g, drv_g, tc.lr_decay), build_scheduler(opt_d, drv_d, tc.lr_decay),
        initial_lr, g_path, epoch, finished, step, skipped_in_a_row,
    )
    if ck_g is not None:
        _restore_optimizers(run, ck_g, ck_d, (g_path, d_path))
    _restore_or_seed_rng(run, ck_g)

    # ---- DDP (after the weights are loaded; the optimizers hold the same parameters)
    parts.ddp_g = distributed.wrap(net_g, device, info)
    parts.ddp_d = distributed.wrap(net_d, device, info)
    return run


# --------------------------------------------------------------------------------------------------
# Checkpoints, evaluation, logging
# --------------------------------------------------------------------------------------------------


def save_checkpoint(run: Run) -> Path | None:
    """``G_<step>.pth`` / ``D_<step>.pth`` (rank 0; every rank must call: the RNG states are gathered)."""
    p, tc = run.parts, run.tc
    rng = distributed.gather_objects(capture_rng(), run.info)  # every rank takes part
    if not run.info.is_main:
        return None
    common = {
        "iteration": run.epoch,
        "step": run.step,
        "data": {"epoch": run.epoch, "finished_batches": run.finished, "seed": tc.seed,
                 "batches_per_epoch": run.batches_per_epoch},
        "skipped_in_a_row": run.skipped_in_a_row,
        "scaler": p.scaler.state_dict() if p.scaler.is_enabled() else None,
        "config": p.cfg.to_dict(),
        "train_config": _plain(asdict(tc)),
    }
    sides = ((p.net_g, p.opt_g, p.drv_g, run.sched_g, run.initial_lr[0], "G"),
             (p.net_d, p.opt_d, p.drv_d, run.sched_d, run.initial_lr[1], "D"))
    opt_sds = [opt.state_dict() for _, opt, *_ in sides]  # in training mode, with model_train
    rvc_sds = [rvc_optimizer_state(opt, net) for net, opt, *_ in sides]
    with evaluation_weights(p.pairs) as train_sds:
        for (net, _opt, drv, sched, lr0, prefix), opt_sd, rvc_sd in zip(sides, opt_sds, rvc_sds):
            ckpt = {
                "model": to_legacy_state_dict(net.state_dict()),
                # RVC's trainer loads "optimizer" into its one-group AdamW: that layout where it
                # exists, ours (the registry's groups) beside it
                "optimizer": opt_sd if rvc_sd is None else rvc_sd,
                **({} if rvc_sd is None else {"optimizer_groups": opt_sd}),
                "learning_rate": lr0,
                "optimizer_name": drv.info.name,
                "scheduler": sched.state_dict() if sched is not None else None,
                "driver_steps": drv.steps_taken,
                **common,
            }
            if id(net) in train_sds:
                ckpt["model_train"] = to_legacy_state_dict(train_sds[id(net)])
            if prefix == "G":
                ckpt["rng"] = rng
            atomic_save(ckpt, run.run_dir / f"{prefix}_{run.step}.pth")
    prune_checkpoints(run.run_dir, tc.keep_last)
    return run.run_dir / f"G_{run.step}.pth"


class RunLog:
    """Rank 0's logs: ``config.json``, ``train_log.csv`` (cut at the resume step), TensorBoard (purged
    from it), the progress bar, and the running sums of the logged values (device tensors: read only
    on logging steps)."""

    def __init__(self, run: Run) -> None:
        tc, main = run.tc, run.info.is_main
        self.run = run
        self.history: list[dict[str, float]] = []
        self.skipped_total = 0
        self._refreshes_logged: dict[str, int] = {}
        self.writer = self.csv_file = self.csv_writer = None
        if main:
            run.run_dir.mkdir(parents=True, exist_ok=True)  # only now: every check of the input has passed
            _write_json(run.run_dir / "config.json", run.parts.cfg.to_rvc_json({
                "batch_size": tc.batch_size, "seed": tc.seed, "fp16_run": tc.precision == "fp16",
                "precision": tc.precision, "steps": run.total_steps,
                "epochs": math.ceil(run.total_steps / run.batches_per_epoch),
            }))
            if tc.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=run.step or None)
            self.csv_file, self.csv_writer = _open_csv_log(run.run_dir / "train_log.csv", run.step)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=run.total_steps, initial=run.step, disable=not (main and tc.progress), unit="step",
                        dynamic_ncols=True)
        self._reset_window()

    def _reset_window(self) -> None:
        self.sums = {k: torch.zeros((), device=self.run.parts.device) for k in _LOG_KEYS}
        self.n_logged, self.window_start = 0, time.perf_counter()

    def add(self, result: StepResult) -> None:
        for k, v in result.logged().items():
            self.sums[k] += v.detach().float()
        self.n_logged += 1

    def due(self) -> bool:
        run = self.run
        every = run.tc.log_every
        return run.info.is_main and bool(every) and self.n_logged > 0 and (
            run.step % every == 0 or run.step == run.total_steps)

    def write(self) -> None:
        """One row: averages over the window (the log's host sync), the applied step sizes."""
        run, p = self.run, self.run.parts
        now = time.perf_counter()
        values = torch.stack([self.sums[k] for k in _LOG_KEYS]).div(self.n_logged).tolist()  # the log's sync
        row = {"step": run.step, "epoch": run.epoch, **applied_lr(p.opt_g, p.drv_g, "_g"),
               **applied_lr(p.opt_d, p.drv_d, "_d"), **dict(zip(_LOG_KEYS, values)),
               "skipped": self.skipped_total, "sec_per_step": (now - self.window_start) / max(1, self.n_logged),
               **self._refreshes()}
        self.history.append(row)
        self.csv_writer.writerow(row)
        self.csv_file.flush()
        if self.writer is not None:
            for k in ("lr_g", "lr_d", "d_g", "d_d", *_LOG_KEYS, "sec_per_step"):
                if row.get(k) is not None:
                    self.writer.add_scalar(f"train/{k}", row[k], run.step)
            if p.scaler.is_enabled():
                self.writer.add_scalar("train/grad_scale", p.scaler.get_scale(), run.step)
        self.bar.set_postfix(loss_g=f"{row['loss_g']:.3f}", mel=f"{row['loss_mel']:.3f}",
                             loss_d=f"{row['loss_d']:.3f}", s_step=f"{row['sec_per_step']:.2f}")
        self._reset_window()

    def _refreshes(self) -> dict[str, int | None]:
        """Curvature refreshes in the window, per network (no column value where the optimizer makes none)."""
        out = {}
        for drv, key in ((self.run.parts.drv_g, "refreshes_g"), (self.run.parts.drv_d, "refreshes_d")):
            if drv.protocol.curvature_refresh is not None:
                out[key] = drv.refreshes - self._refreshes_logged.get(key, 0)
                self._refreshes_logged[key] = drv.refreshes
        return out

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.csv_file is not None:
            self.csv_file.close()


def evaluate(run: Run, log: RunLog, val_batch: Sequence[torch.Tensor]) -> None:
    """Synthesise the validation item at the evaluation weights; log its mel L1 and mel images."""
    val_l1, gen, ref = validation_mel_l1(run.parts, run.tc.seed, val_batch)
    if log.writer is not None:
        log.writer.add_scalar("val/mel_l1", val_l1, run.step)
        log.writer.add_image("val/mel_generated", _mel_image(gen), run.step, dataformats="CHW")
        log.writer.add_image("val/mel_reference", _mel_image(ref), run.step, dataformats="CHW")
    log.bar.write(f"step {run.step}: validation mel L1 {val_l1:.4f}")


def validation_mel_l1(p: StepParts, seed: int, val_batch: Sequence[torch.Tensor]):
    """``(mel L1, generated mel, reference mel)`` of the first item of ``val_batch``, synthesised at the
    evaluation weights from the prior sampled with ``seed`` (what :func:`evaluate` logs; the
    convergence benchmark calls it on held-out clips)."""
    cfg = p.cfg
    with torch.no_grad(), evaluation_weights(p.pairs), torch.random.fork_rng(devices=p.fork_devices):
        torch.manual_seed(seed)  # the same prior sample every time
        p.net_g.eval()
        phone, phone_lengths, pitch, pitchf, spec, *_rest, sid = val_batch
        o = p.net_g.infer(phone, phone_lengths, pitch, pitchf, sid)[0]
        gen = mel_spectrogram(o.float().squeeze(1), cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate,
                              cfg.hop_length, cfg.win_length, cfg.mel_fmin, cfg.mel_fmax)[0]
        ref = spec_to_mel(spec.float(), cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate,
                          cfg.mel_fmin, cfg.mel_fmax)[0]
        n = min(gen.shape[-1], ref.shape[-1])
        val_l1 = F.l1_loss(gen[:, :n], ref[:, :n]).item()
        p.net_g.train()
    return val_l1, gen, ref


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _train(tc: TrainConfig, info: distributed.DistInfo, device: torch.device, stop: StopRequest | None) -> TrainResult:
    run = setup_run(tc, info, device)
    p, main = run.parts, info.is_main
    log = RunLog(run)
    val_batch = [t.to(device) for t in collate([run.loader.dataset[0]])]
    run_start, run_start_step = time.perf_counter(), run.step
    last_ckpt: Path | None = run.resumed_from
    last_saved_step = run.step if run.resumed_from is not None else -1
    p.net_g.train()
    p.net_d.train()
    p.drv_g.train()
    p.drv_d.train()
    if stop is not None:
        stop.armed = True  # from here a signal saves the current step instead of interrupting
    sampler = run.loader.batch_sampler
    try:
        while run.step < run.total_steps:
            sampler.set_epoch(run.epoch)  # same epoch as the loader was built for: keeps the position
            run.loader.generator.manual_seed(mix_seed(tc.seed, run.epoch))
            for batch in run.loader:
                result = train_step(p, [t.to(device, non_blocking=True) for t in batch])
                run.step += 1
                run.finished += 1
                log.bar.update(1)
                _count_skips(run, log, result, last_ckpt)

                # log, evaluate, save; stop on a signal
                if log.due():
                    log.write()
                if main and tc.eval_every and run.step % tc.eval_every == 0:
                    evaluate(run, log, val_batch)
                if tc.save_every and run.step % tc.save_every == 0:
                    last_ckpt = save_checkpoint(run) or last_ckpt
                    last_saved_step = run.step
                if stop is not None and _stop_requested(stop, info, device):
                    if last_saved_step != run.step:
                        last_ckpt = save_checkpoint(run) or last_ckpt
                    raise Interrupted(run.step, last_ckpt if main else None, run.run_dir,
                                      stop.signum or signal.SIGTERM)
                if run.step >= run.total_steps:
                    break
            if run.finished >= run.batches_per_epoch:  # end of the epoch: RVC's schedulers step once per epoch
                for sched in (run.sched_g, run.sched_d):
                    if sched is not None:
                        sched.step()
                run.epoch += 1
                run.finished = 0

        # ---- the end: a final checkpoint (unless just written) and the small model for inference
        if last_saved_step != run.step:
            last_ckpt = save_checkpoint(run) or last_ckpt
        export_path = None
        if main:
            export_path = run.run_dir / f"{tc.export_name or run.run_dir.name}.pth"
            with evaluation_weights(p.pairs):
                export_small_model(p.net_g, p.cfg, export_path,
                                   max(1, run.epoch - 1 if run.finished == 0 else run.epoch))
        distributed.barrier(info)
    finally:
        log.close()
    elapsed = time.perf_counter() - run_start
    return TrainResult(
        step=run.step, epoch=run.epoch, epochs_done=run.epochs_done, run_dir=run.run_dir,
        checkpoint=last_ckpt, export=export_path, history=log.history, skipped_steps=log.skipped_total,
        seconds_per_step=elapsed / max(1, run.step - run_start_step),
    )


def _count_skips(run: Run, log: RunLog, result: StepResult, last_ckpt: Path | None) -> None:
    """Add a good step to the log's sums; warn about a skipped one and stop after max_skipped in a row."""
    if result.ok_d and result.ok_g:
        run.skipped_in_a_row = 0
        log.add(result)
        return
    run.skipped_in_a_row += 1
    log.skipped_total += 1
    which = " and ".join(n for n, ok in (("discriminator", result.ok_d), ("generator", result.ok_g)) if not ok)
    if run.info.is_main:
        warnings.warn(
            f"step {run.step}: non-finite loss or gradient in the {which}; step skipped "
            f"({run.skipped_in_a_row} in a row, stopping at {run.tc.max_skipped})",
            RuntimeWarning,
        )
    if run.skipped_in_a_row >= run.tc.max_skipped:
        raise TrainingStopped(
            f"training stopped at step {run.step}: {run.skipped_in_a_row} consecutive steps had a "
            f"non-finite loss or gradient. The last checkpoint ({_describe(last_ckpt, run.run_dir)}) is "
            "intact. Try a lower --lr, --grad-clip 1.0, or --precision fp32."
        )


def _all_finite(loss: torch.Tensor, norm: torch.Tensor, info: distributed.DistInfo) -> bool:
    """Whether the loss and total grad norm are finite, on every rank (so all ranks skip together).

    One host read: both values are checked on the device and read back as one boolean.
    """
    ok = (torch.isfinite(loss.detach()) & torch.isfinite(norm.to(loss.device))).to(torch.int32)
    if info.enabled:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


def _stop_requested(stop: StopRequest, info: distributed.DistInfo, device: torch.device) -> bool:
    """Whether a signal asked to stop, on any rank (under DDP one all-reduce: all ranks stop together)."""
    flag = stop.signum is not None
    if info.enabled:
        t = torch.tensor(int(flag), device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        flag = bool(t.item())
    return flag


def applied_lr(optimizer: torch.optim.Optimizer, driver: ProtocolDriver, suffix: str) -> dict[str, float | None]:
    """The step size the first param group actually applies, read as the record's protocol says:
    ``lr_role == "multiplier"``: the group's ``d`` (a 0-d tensor for Prodigy / D-Adapt) times lr,
    and ``d`` itself; ``owns_schedule``: the group's ``scheduled_lr`` (e.g. schedule-free warm-up)
    where it keeps one; else ``lr``. Reading a device tensor is a host sync: call on logging steps only.
    """
    group = optimizer.param_groups[0]
    lr = float(group.get("lr", 0.0))
    d = None
    protocol = driver.protocol
    if protocol.lr_role == "multiplier" and group.get("d") is not None:
        d = float(group["d"])
        lr = d * lr
    elif protocol.owns_schedule and group.get("scheduled_lr") is not None:
        lr = float(group["scheduled_lr"])
    return {f"lr{suffix}": lr, f"d{suffix}": d}


_CSV_FIELDS = ["step", "epoch", "lr_g", "lr_d", "d_g", "d_d", *_LOG_KEYS, "skipped", "sec_per_step",
               "refreshes_g", "refreshes_d"]


def _open_csv_log(path: Path, step: int):
    """``train_log.csv`` for appending, cut at ``step`` (rows logged after the checkpoint being resumed
    belong to a future that is now rewritten, like the TensorBoard log's purge_step)."""
    kept: list[dict[str, str]] = []
    if step and path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            kept = [row for row in csv.DictReader(f) if row.get("step", "").isdigit() and int(row["step"]) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
    tmp.replace(path)
    csv_file = open(path, "a", newline="", encoding="utf-8")
    return csv_file, csv.DictWriter(csv_file, fieldnames=_CSV_FIELDS, extrasaction="ignore")


def _describe(path: Path | None, run_dir: Path) -> str:
    return str(path) if path is not None else f"none written yet in {run_dir}"


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, and nothing but plain data (for weights_only loading)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=4, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
