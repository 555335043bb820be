"""f0 (pitch) estimation for RVC training data, the way RVC's and Applio's extractors do it.

Every estimator takes 16 kHz mono audio and returns f0 in Hz at RVC's 100 frames/s (hop 160
samples), ``len(audio) // 160 + 1`` frames (frame ``i`` centred on sample ``160 i``), float32,
0 for unvoiced frames. The search range is RVC's, 50..1100 Hz, for every method. Methods:

* ``pm``: Praat's autocorrelation pitch (praat-parselmouth), time step 10 ms, voicing threshold
  0.6; Praat's shorter output is centred in the frame grid with zeros, as RVC pads it (clips under
  60 ms, three periods of 50 Hz, which Praat refuses, are all unvoiced).
* ``harvest``, ``dio``: WORLD (pyworld), frame period 10 ms, each refined by ``stonemask``.
* ``crepe``, ``crepe-tiny``: torchcrepe's full/tiny model (weights inside the package), zero-padded
  frames, Viterbi decoding (without torchcrepe's random dither, so reruns agree), periodicity
  median-filtered and f0 mean-filtered over 3 frames, frames with periodicity < 0.1 unvoiced
  (Applio's settings); beyond Applio, frames quieter than -60 dB (A-weighted) are unvoiced too, as
  torchcrepe advises (its network, fed normalised frames, finds pitch in near-silent noise).
* ``fcpe``: torchfcpe's bundled model, local-argmax decoding, threshold 0.006 (Applio's settings).
* ``rmvpe``: RVC's RMVPE network (:mod:`.rmvpe`) from a weights file, salience threshold 0.03.

:func:`coarse_f0` turns Hz into RVC's 1..255 pitch classes (``2a_f0``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rvc_optim.prepare._batch import run_grouped
from rvc_optim.prepare._optional import require
from rvc_optim.train.demo_data import coarse_pitch

__all__ = ["F0_METHODS", "F0Estimator", "coarse_f0", "f0_frames", "make_f0_estimator"]

F0_METHODS: tuple[str, ...] = ("pm", "harvest", "dio", "crepe", "crepe-tiny", "fcpe", "rmvpe")
SAMPLE_RATE = 16000
HOP = 160  # 10 ms at 16 kHz: 100 frames/s
F0_MIN = 50.0
F0_MAX = 1100.0
_CREPE_PERIODICITY_MIN = 0.1
_CREPE_FRAMES_PER_CALL = 1024
_CREPE_SILENCE_DB = -60.0
CENTS_FIRST_BIN = 1997.3794084376191  # bin 0 of crepe's and RMVPE's 360 x 20-cent grid (re 10 Hz)
_FCPE_THRESHOLD = 0.006


def coarse_f0(f0_hz: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch: mel-scale quantisation of f0 into integers 1..255 (1 = unvoiced).

    ``mel = 1127 ln(1 + f0/700)``, mapped linearly from mel(50 Hz) -> 1 to mel(1100 Hz) -> 255, clipped
    and rounded (RVC's ``coarse_f0``; the same rule as the demo data's :func:`coarse_pitch`).
    """
    return coarse_pitch(f0_hz)


def f0_frames(n_samples: int) -> int:
    """RVC's f0 frame count for ``n_samples`` of 16 kHz audio: ``n_samples // 160 + 1``."""
    return n_samples // HOP + 1


def _fit(f0: np.ndarray, n: int, *, centre: bool = False) -> np.ndarray:
    """``f0`` cut or zero-padded to ``n`` frames, at the end or (``centre``) on both sides like RVC's pm."""
    f0 = np.asarray(f0, dtype=np.float64).reshape(-1)[:n]
    missing = n - len(f0)
    left = (missing + 1) // 2 if centre else 0
    return np.pad(f0, (left, missing - left)) if missing > 0 else f0


def _finish(f0: np.ndarray, n: int) -> np.ndarray:
    """Length ``n``, float32, 0 for unvoiced (below 50 Hz or not finite), capped at 1100 Hz."""
    f0 = _fit(f0, n)
    f0 = np.where(np.isfinite(f0) & (f0 >= F0_MIN), np.minimum(f0, F0_MAX), 0.0)
    return f0.astype(np.float32)


def _as_audio(audio16k: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio16k)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"f0 needs 1-D 16 kHz mono audio with samples, got an array of shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("f0 needs finite audio: this clip contains NaN or inf samples")
    return audio.astype(np.float32, copy=False)


class F0Estimator:
    """One f0 method: ``est(audio16k)`` -> f0 in Hz per 10 ms frame; ``est.batch(list)`` for many clips.

    Subclasses implement ``_estimate`` (one clip, any length near ``len // 160 + 1``); the model-based
    ones override ``_estimate_many`` to batch.
    """

    method: str = ""

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        return self.batch([audio16k])[0]

    def batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        clips = [_as_audio(a) for a in audios]
        raw = self._estimate_many(clips)
        return [_finish(f0, f0_frames(len(clip))) for f0, clip in zip(raw, clips)]

    def _estimate_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        return [self._estimate(clip) for clip in clips]

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"F0Estimator({self.method!r})"


class _Praat(F0Estimator):
    method = "pm"

    def __init__(self) -> None:
        self._parselmouth = require("parselmouth", "f0 method 'pm'")

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        if len(audio) < 3 * SAMPLE_RATE / F0_MIN:  # Praat needs 3 periods of the 50 Hz floor: all unvoiced
            return np.zeros(f0_frames(len(audio)))
        pitch = self._parselmouth.Sound(audio.astype(np.float64), SAMPLE_RATE).to_pitch_ac(
            time_step=HOP / SAMPLE_RATE, voicing_threshold=0.6, pitch_floor=F0_MIN, pitch_ceiling=F0_MAX
        )
        return _fit(pitch.selected_array["frequency"], f0_frames(len(audio)), centre=True)


class _World(F0Estimator):
    """WORLD's harvest or dio, then stonemask refinement (RVC's extract_f0_print)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self._pyworld = require("pyworld", f"f0 method {method!r}")

    def _estimate(self, audio: np.ndarray) -> np.ndarray:
        x = audio.astype(np.float64)
        track = getattr(self._pyworld, self.method)
        f0, t = track(x, fs=SAMPLE_RATE, f0_ceil=F0_MAX, f0_floor=F0_MIN, frame_period=1000 * HOP / SAMPLE_RATE)
        return self._pyworld.stonemask(x, f0, t, SAMPLE_RATE)


class _Crepe(F0Estimator):
    """torchcrepe: every clip's frames go through the network together, ``_CREPE_FRAMES_PER_CALL`` at a time."""

    def __init__(self, method: str, device: str) -> None:
        self.method = method
        self.model = "tiny" if method == "crepe-tiny" else "full"
        self.device = device
        self._torch = require("torch", f"f0 method {method!r}")
        self._crepe = require("torchcrepe", f"f0 method {method!r}")

    def _estimate_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        torch, crepe = self._torch, self._crepe
        with torch.no_grad():
            frames = [next(crepe.preprocess(torch.from_numpy(c)[None], SAMPLE_RATE, HOP, None, self.device, True))
                      for c in clips]
            joined = torch.cat(frames)
            probs = torch.cat([crepe.infer(chunk, self.model, self.device)
                               for chunk in joined.split(_CREPE_FRAMES_PER_CALL)])
            out = []
            for p, clip in zip(probs.split([len(f) for f in frames]), clips):
                f0, periodicity = crepe.postprocess(p.T[None], F0_MIN, F0_MAX, self._viterbi,
                                                    return_periodicity=True)
                periodicity = crepe.filter.median(periodicity, 3)
                periodicity = crepe.threshold.Silence(_CREPE_SILENCE_DB)(
                    periodicity, torch.from_numpy(clip)[None], SAMPLE_RATE, HOP)
                f0 = crepe.filter.mean(f0, 3)
                f0[periodicity < _CREPE_PERIODICITY_MIN] = 0
                out.append(f0[0].cpu().numpy())
        return out


    def _viterbi(self, logits):
        """torchcrepe's Viterbi decoding, minus its random dither of the bins' cents (deterministic f0)."""
        bins, _ = self._crepe.decode.viterbi(logits)
        cents = self._crepe.CENTS_PER_BIN * bins + CENTS_FIRST_BIN
        return bins, 10.0 * 2.0 ** (cents / 1200.0)


class _Fcpe(F0Estimator):
    """torchfcpe's bundled model; clips of equal length are batched (a conformer sees the whole clip)."""

    method = "fcpe"

    def __init__(self, device: str, max_batch: int) -> None:
        self._torch = require("torch", "f0 method 'fcpe'")
        fcpe = require("torchfcpe", "f0 method 'fcpe'")
        self.device = device
        self.max_batch = max_batch
        with contextlib.redirect_stdout(io.StringIO()):  # torchfcpe prints its settings while loading
            self.model = fcpe.spawn_bundled_infer_model(device=device)

    def _estimate_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        return run_grouped(clips, len, self._run, self.max_batch)

    def _run(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        wav = torch.from_numpy(np.stack(clips))[..., None].to(self.device)
        with torch.no_grad():
            f0 = self.model.infer(wav, sr=SAMPLE_RATE, decoder_mode="local_argmax", threshold=_FCPE_THRESHOLD,
                                  f0_min=F0_MIN, f0_max=F0_MAX, interp_uv=False,
                                  output_interp_target_length=f0_frames(len(clips[0])))
        return list(f0[..., 0].float().cpu().numpy())


def make_f0_estimator(method: str, *, weights: str | Path | None = None, device: str = "cpu",
                      max_batch: int = 16) -> F0Estimator:
    """The estimator for ``method`` (one of :data:`F0_METHODS`).

    ``weights`` is the RMVPE weights file (RVC's ``rmvpe.pt``), required for ``rmvpe`` and ignored
    otherwise; nothing is downloaded. ``device`` runs crepe/fcpe/rmvpe (the others are CPU-only);
    ``max_batch`` caps the clips per batched fcpe/rmvpe call. Raises ValueError (one line) for an
    unknown method or a missing or unreadable weights file.
    """
    if method in ("harvest", "dio"):
        return _World(method)
    if method == "pm":
        return _Praat()
    if method in ("crepe", "crepe-tiny"):
        return _Crepe(method, device)
    if method == "fcpe":
        return _Fcpe(device, max_batch)
    if method == "rmvpe":
        from rvc_optim.prepare.rmvpe import RmvpeEstimator

        return RmvpeEstimator.from_file(weights, device=device, max_batch=max_batch)
    raise ValueError(f"unknown f0 method {method!r}: choose one of {', '.join(F0_METHODS)}")
