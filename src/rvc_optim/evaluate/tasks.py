"""The two tasks of the convergence benchmark, and the measured run they share.

1. ``rvc``: RVC v2 training as ``rvc-optim train --demo`` does it: the engine's ``tiny`` config on the
   built-in synthetic voice data, generator and discriminator both using the optimizer under test,
   every iteration the engine's own :func:`rvc_optim.train.loop.train_step` (a Run made by
   :func:`~rvc_optim.train.loop.setup_run`, no run folder written). The metric is the validation mel
   L1 the engine logs (:func:`~rvc_optim.train.loop.validation_mel_l1`: synthesis from the prior at
   the evaluation weights), averaged over held-out clips that training never sees.
2. ``vocoder``: the same generator's NSF-HiFiGAN decoder alone, trained as a mel vocoder (a 1x1
   convolution from the log-mel to the decoder's input channels, the decoder's own harmonic source
   driven by the true f0) with mel L1 (x RVC's ``c_mel``) + a multi-resolution STFT loss
   (spectral convergence + log magnitude at three resolutions), on the same clips. Why this task:
   it is the part of RVC that turns features into sound and costs most of its compute, it has the
   same weight-normed convolutions, upsampling layers and loss scale as the RVC task, but no
   discriminator, no prior sampling and no KL term, so a poor result here is the optimizer's own and
   not GAN instability. A conv classifier on synthesised audio would be cheaper still, but would
   measure how fast a toy problem saturates rather than anything an RVC user trains. The metric is
   the mel L1 (without ``c_mel``) of fixed held-out segments vocoded from their true mel and f0.

Both tasks start every optimizer from the same initial weights (built from the run's seed) and feed
it the same batches in the same order; different seeds change both. A run is *diverged* when its
validation loss is not finite or exceeds :data:`BLOWUP` times its value at step 0, or when
:data:`MAX_SKIPPED` steps in a row had a non-finite loss or gradient; it stops there and is
recorded as such (:class:`RunOutcome`), never dropped.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TASKS", "BLOWUP", "MAX_SKIPPED", "RunOutcome", "Point", "make_task", "demo_datasets"]

#: A validation loss above this multiple of the step-0 value counts as a blow-up (divergence).
BLOWUP = 3.0
#: Consecutive steps with a non-finite loss or gradient that count as divergence.
MAX_SKIPPED = 5
BATCH_SIZE = 4
TRAIN_ITEMS, HELDOUT_ITEMS = 8, 3  # the demo's 8 training clips; 3 more, from another seed, held out
CONFIG = "tiny"
TASKS = ("rvc", "vocoder")


@dataclass
class Point:
    """One validation: after ``step`` optimizer steps and ``seconds`` of training (evaluation excluded)."""

    step: int
    seconds: float
    loss: float


@dataclass
class RunOutcome:
    """What one run measured. ``diverged_at`` is the step where divergence was detected (None: not)."""

    points: list[Point] = field(default_factory=list)
    diverged_at: int | None = None
    step_seconds: float = math.nan
    state_bytes: int = 0

    @property
    def final_loss(self) -> float:
        return math.nan if self.diverged_at is not None or not self.points else self.points[-1].loss


def demo_datasets(folder: Path) -> tuple[Path, Path]:
    """The training and held-out demo experiments under ``folder`` (made once, then reused)."""
    from rvc_optim.train.config import get_config
    from rvc_optim.train.demo_data import make_demo_experiment

    made = []
    for name, items, seed in (("train", TRAIN_ITEMS, 0), ("heldout", HELDOUT_ITEMS, 1)):
        path = folder / name
        if not (path / "config.json").exists():  # config.json is written last: a complete data set
            if path.exists():
                import shutil

                shutil.rmtree(path)
            make_demo_experiment(path, get_config(CONFIG), n_items=items, seconds=(1.5, 2.0), seed=seed)
        made.append(path)
    return made[0], made[1]


def _dataset_items(experiment: Path):
    """Every item of an experiment, as the engine's data set loads it (spectrograms cached)."""
    from rvc_optim.train.config import get_config
    from rvc_optim.train.data import RVCDataset, find_experiment, read_filelist

    exp = find_experiment(experiment)
    dataset = RVCDataset(read_filelist(exp.filelist, layout=exp.layout), get_config(CONFIG))
    return [dataset[i] for i in range(len(dataset))]


def _state_bytes(optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Bytes of every tensor in the optimizers' state (per-parameter and global)."""
    total = 0
    for opt in optimizers:
        for state in opt.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    total += value.numel() * value.element_size()
    return total


def measure(session, steps: int, eval_every: int, on_step: Callable[[], None] = lambda: None) -> RunOutcome:
    """Train ``session`` for ``steps`` steps, validating at step 0, every ``eval_every`` steps and at the
    end; stop at divergence. ``session`` has ``step() -> bool`` (False: a non-finite step was
    skipped), ``validate() -> float`` and ``optimizers``."""
    out = RunOutcome()
    trained, step_times, skipped = 0.0, [], 0

    def validate(step: int) -> bool:
        loss = session.validate()
        out.points.append(Point(step, trained, loss))
        return math.isfinite(loss) and loss <= BLOWUP * out.points[0].loss

    if not validate(0):
        out.diverged_at = 0
    for step in range(1, steps + 1):
        if out.diverged_at is not None:
            break
        t0 = time.perf_counter()
        ok = session.step()
        step_times.append(time.perf_counter() - t0)
        trained += step_times[-1]
        on_step()
        skipped = 0 if ok else skipped + 1
        if skipped >= MAX_SKIPPED:
            out.diverged_at = step
        elif (step % eval_every == 0 or step == steps) and not validate(step):
            out.diverged_at = step
    timed = step_times[1:] or step_times  # the first step allocates the state: not timed where others are
    out.step_seconds = sum(timed) / len(timed) if timed else math.nan
    out.state_bytes = _state_bytes(session.optimizers)
    return out


@contextlib.contextmanager
def _quiet():
    """The engine's announcements and the registry's notes about dropped arguments, silenced."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------------
# Task 1: RVC, through the engine
# --------------------------------------------------------------------------------------------------


class RVCSession:
    """One RVC run: the engine's Run (``tiny``, demo data, no run folder) stepped with ``train_step``."""

    def __init__(self, data: Path, heldout: Sequence, optimizer: str, settings: Mapping[str, Any],
                 seed: int, steps: int) -> None:
        from rvc_optim.train import distributed
        from rvc_optim.train.data import collate
        from rvc_optim.train.loop import TrainConfig, setup_run

        settings = dict(settings)
        tc = TrainConfig(data=str(data), run_dir=str(data.parent / "no-run-folder"), model_config=CONFIG,
                         optimizer=optimizer, lr=settings.pop("lr", None), optim_args=settings, steps=steps,
                         batch_size=BATCH_SIZE, seed=seed, progress=False, tensorboard=False)
        with _quiet():
            self.run = setup_run(tc, distributed.DistInfo(), torch.device("cpu"))
        self.parts = self.run.parts
        self.optimizers = [self.parts.opt_g, self.parts.opt_d]
        self.heldout = [collate([item]) for item in heldout]
        self.batches = self._batches()
        for module, driver in self.parts.pairs:
            module.train()
            driver.train()

    def _batches(self) -> Iterator:
        """The engine's batches in its order: the sampler's epoch and the loader's seed set per epoch,
        RVC's per-epoch LR decay where the protocol wants a scheduler."""
        from rvc_optim.train.data import mix_seed

        run = self.run
        while True:
            run.loader.batch_sampler.set_epoch(run.epoch)
            run.loader.generator.manual_seed(mix_seed(run.tc.seed, run.epoch))
            yield from run.loader
            for sched in (run.sched_g, run.sched_d):
                if sched is not None:
                    sched.step()
            run.epoch += 1

    def step(self) -> bool:
        """One engine iteration on the next batch; False where a model's step was skipped (non-finite)."""
        from rvc_optim.train.loop import train_step

        with _quiet():
            result = train_step(self.parts, next(self.batches))
        return result.ok_d and result.ok_g

    def validate(self) -> float:
        """The engine's validation mel L1, averaged over the held-out clips."""
        from rvc_optim.train.loop import validation_mel_l1

        losses = [validation_mel_l1(self.parts, self.run.tc.seed, batch)[0] for batch in self.heldout]
        return sum(losses) / len(losses)


# --------------------------------------------------------------------------------------------------
# Task 2: the generator's decoder alone, as a mel vocoder
# --------------------------------------------------------------------------------------------------

#: (n_fft, hop) of the multi-resolution STFT loss (Hann windows of n_fft samples).
STFT_RESOLUTIONS = ((128, 32), (256, 64), (512, 128))
HELDOUT_SEGMENTS_PER_CLIP = 4


class MelVocoder(nn.Module):
    """RVC's NSF-HiFiGAN decoder (of the ``tiny`` generator) fed a log-mel through a 1x1 convolution."""

    def __init__(self, cfg) -> None:
        super().__init__()
        from rvc_optim.train.model import build_generator

        self.pre = nn.Conv1d(cfg.n_mel_channels, cfg.inter_channels, 1)
        self.dec = build_generator(cfg).dec

    def forward(self, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        return self.dec(self.pre(mel), f0)


def _clip_tensors(items, cfg) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(log-mel [M, L], wave [L*hop], f0 [L])`` of each data set item."""
    from rvc_optim.train.mel import spec_to_mel

    out = []
    for spec, wav, _phone, _pitch, pitchf, _sid in items:
        mel = spec_to_mel(spec.unsqueeze(0).float(), cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate,
                          cfg.mel_fmin, cfg.mel_fmax)[0]
        out.append((mel, wav[0], pitchf.float()))
    return out


def _segments(clips, starts: Sequence[tuple[int, int]], frames: int, hop: int):
    """Batched ``(mel, wave, f0)`` segments of ``frames`` frames from ``(clip index, start frame)``."""
    mels, waves, f0s = [], [], []
    for i, s in starts:
        mel, wav, f0 = clips[i]
        mels.append(mel[:, s:s + frames])
        waves.append(wav[s * hop:(s + frames) * hop])
        f0s.append(f0[s:s + frames])
    return torch.stack(mels), torch.stack(waves), torch.stack(f0s)


def stft_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + L1 of log magnitudes, averaged over
    :data:`STFT_RESOLUTIONS`."""
    total = y.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=y.device)
        s_hat, s = (torch.stft(v, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-7)
                    for v in (y_hat, y))
        total = total + torch.linalg.norm(s - s_hat) / torch.linalg.norm(s) + F.l1_loss(s_hat.log(), s.log())
    return total / len(STFT_RESOLUTIONS)


def _mel_l1(y_hat: torch.Tensor, mel: torch.Tensor, cfg) -> torch.Tensor:
    """L1 between the log-mel of the waveform ``y_hat [B, T]`` and ``mel [B, M, L]`` (over common frames)."""
    from rvc_optim.train.mel import mel_spectrogram

    gen = mel_spectrogram(y_hat, cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate, cfg.hop_length, cfg.win_length,
                          cfg.mel_fmin, cfg.mel_fmax)
    n = min(gen.shape[-1], mel.shape[-1])
    return F.l1_loss(gen[..., :n], mel[..., :n])


class VocoderSession:
    """One vocoder run: :class:`MelVocoder` from ``seed``, batches of random segments drawn from a
    generator seeded with ``seed``, the optimizer through its protocol driver."""

    def __init__(self, clips, heldout, optimizer: str, settings: Mapping[str, Any], seed: int, steps: int) -> None:
        from rvc_optim.train.config import get_config
        from rvc_optim.train.optim_setup import build_optimizer

        settings = dict(settings)
        self.cfg, self.clips, self.heldout, self.seed = get_config(CONFIG), clips, heldout, seed
        torch.manual_seed(seed)
        self.model = MelVocoder(self.cfg)
        with _quiet():
            self.opt, self.driver = build_optimizer(optimizer, self.model, steps, lr=settings.pop("lr", None),
                                                    extra=settings)
        self.optimizers = [self.opt]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.draws = torch.Generator().manual_seed(seed)
        self.model.train()
        self.driver.train()

    def _batch(self):
        """``BATCH_SIZE`` random training segments (clip and start drawn from the run's generator)."""
        frames = self.cfg.segment_frames
        starts = []
        for _ in range(BATCH_SIZE):
            i = int(torch.randint(len(self.clips), (1,), generator=self.draws))
            length = self.clips[i][0].shape[-1]
            starts.append((i, int(torch.randint(length - frames + 1, (1,), generator=self.draws))))
        return _segments(self.clips, starts, frames, self.cfg.hop_length)

    def _loss(self, mel, wave, f0) -> torch.Tensor:
        """``c_mel`` x mel L1 + multi-resolution STFT loss of the vocoded segments."""
        y_hat = self.model(mel, f0).squeeze(1)
        return self.cfg.c_mel * _mel_l1(y_hat, mel, self.cfg) + stft_loss(y_hat, wave)

    def step(self) -> bool:
        """One step on a fresh batch; False (no step) where the loss or a gradient is not finite."""
        from rvc_optim.train.loop import grad_norm

        mel, wave, f0 = self._batch()
        rng = torch.get_rng_state()  # the source's noise: a closure must draw the same
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(mel, wave, f0)
        loss.backward(**self.driver.backward_kwargs())
        if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm(self.params, None))):
            return False

        def closure() -> torch.Tensor:
            self.opt.zero_grad(set_to_none=True)
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)
                again = self._loss(mel, wave, f0)
            again.backward()
            return again

        with _quiet():
            self.driver.step(closure=closure if self.driver.protocol.needs_closure else None)
        return True

    def validate(self) -> float:
        """Mel L1 of the held-out segments, vocoded at the evaluation weights with fixed source noise."""
        from rvc_optim.train.loop import evaluation_weights

        mel, _wave, f0 = self.heldout
        with torch.no_grad(), evaluation_weights([(self.model, self.driver)]), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model.eval()
            y_hat = self.model(mel, f0).squeeze(1)
            self.model.train()
        return _mel_l1(y_hat, mel, self.cfg).item()


def _heldout_segments(clips, cfg):
    """Fixed held-out segments: :data:`HELDOUT_SEGMENTS_PER_CLIP` of twice the training length from
    each held-out clip, evenly spaced, batched."""
    frames = 2 * cfg.segment_frames
    starts = []
    for i, (mel, _wav, _f0) in enumerate(clips):
        room = mel.shape[-1] - frames
        starts += [(i, room * k // max(1, HELDOUT_SEGMENTS_PER_CLIP - 1)) for k in range(HELDOUT_SEGMENTS_PER_CLIP)]
    return _segments(clips, starts, frames, cfg.hop_length)


class Task:
    """A task with its data loaded once: ``session(optimizer, settings, seed, steps)`` makes a run."""

    def __init__(self, name: str, data_folder: Path) -> None:
        from rvc_optim.train.config import get_config

        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
        self.name = name
        self.train_data, heldout_data = demo_datasets(data_folder)
        heldout = _dataset_items(heldout_data)
        cfg = get_config(CONFIG)
        if name == "rvc":
            self._heldout = heldout
        else:
            self._clips = _clip_tensors(_dataset_items(self.train_data), cfg)
            self._heldout = _heldout_segments(_clip_tensors(heldout, cfg), cfg)

    def session(self, optimizer: str, settings: Mapping[str, Any], seed: int, steps: int):
        """A fresh run of ``optimizer`` with ``settings`` (keyword arguments) from ``seed``, ``steps`` long."""
        if self.name == "rvc":
            return RVCSession(self.train_data, self._heldout, optimizer, settings, seed, steps)
        return VocoderSession(self._clips, self._heldout, optimizer, settings, seed, steps)


def make_task(name: str, data_folder: Path) -> Task:
    """The task ``name`` (one of :data:`TASKS`) with its demo data under ``data_folder``."""
    return Task(name, data_folder)
