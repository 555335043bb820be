"""A small synthetic voice data set in RVC's (or Applio's) experiment layout, made at run time.

Tests, smoke runs and benchmarks need training data without shipping audio or running HuBERT and an
f0 extractor. :func:`make_demo_experiment` writes what RVC's preprocessing and feature extraction
would have written for a few seconds of voice-like sound, with the same folders, file names, dtypes,
frame rates and filelist format, so the training code reads it exactly as it reads real data:

* audio: a harmonic source (harmonics 1/k up to 0.45 * sample rate) following a smooth f0 contour
  (a random base pitch, slow glides and vibrato), with voiced stretches separated by short unvoiced
  (noise) stretches, shaped by three formant resonators that move between vowel targets, plus a
  little noise; peak 0.5, float32. The same signal resampled to 16 kHz goes to ``1_16k_wavs``.
* f0 in Hz at 100 frames/s (0 when unvoiced), ``N16 // 160 + 1`` frames like RVC's extractors, and
  its coarse form with RVC's formula (:func:`coarse_pitch`).
* "content features" ``[T50, 768]`` at 50 frames/s, ``(N16 - 400) // 320 + 1`` frames like HuBERT:
  NOT HuBERT, but a fixed random projection of standardised log-mel frames of the 16 kHz audio, so
  they follow the audio deterministically and carry information a model can learn from.

Everything is deterministic in ``seed`` (the samples, arrays and filelist; not quite the bytes of a
float WAV, whose PEAK chunk from libsndfile carries a timestamp). scipy is not a dependency: the
formant filter is applied in the STFT domain with numpy (the magnitude response of 2-pole
resonators, frame by frame).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from rvc_optim.train.config import ModelConfig
from rvc_optim.train.data import Experiment, find_experiment
from rvc_optim.train.mel import mel_filterbank

__all__ = ["coarse_pitch", "make_demo_experiment", "synthesize_voice", "speech_with_pauses", "demo_features", "filelist_row",
           "filelist_text", "config_files", "LAYOUT_DIRS"]

#: RVC's coarse-pitch range: 1 (unvoiced / <= 50 Hz) .. 255 (>= 1100 Hz).
F0_MIN_HZ = 50.0
F0_MAX_HZ = 1100.0
F0_BINS = 256

# Vowel formant targets (F1, F2, F3) in Hz, roughly an adult voice.
_VOWELS = np.array(
    [
        (730.0, 1090.0, 2440.0),  # a
        (530.0, 1840.0, 2480.0),  # e
        (270.0, 2290.0, 3010.0),  # i
        (570.0, 840.0, 2410.0),  # o
        (300.0, 870.0, 2240.0),  # u
    ]
)
_BANDWIDTHS = np.array([80.0, 100.0, 140.0])
_FEATURE_PROJECTION_SEED = 20240604  # fixed: the "feature extractor" is the same for every data set
_N_MELS_FEATURE = 40


def _mel(f0_hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + f0_hz / 700.0)


def coarse_pitch(f0_hz: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch (``2a_f0``) from f0 in Hz: integers 1..255.

    ``mel = 1127 ln(1 + f0/700)``; voiced frames map linearly from mel(50 Hz) -> 1 to
    mel(1100 Hz) -> 255, i.e. ``(mel - mel(50)) * 254 / (mel(1100) - mel(50)) + 1``; everything is
    clipped to [1, 255] and rounded, so unvoiced frames (f0 = 0) are 1.
    """
    f0 = np.asarray(f0_hz, dtype=np.float64)
    mel = _mel(f0)
    lo, hi = _mel(np.float64(F0_MIN_HZ)), _mel(np.float64(F0_MAX_HZ))
    voiced = mel > 0
    mel = np.where(voiced, (mel - lo) * (F0_BINS - 2) / (hi - lo) + 1.0, mel)
    mel = np.clip(mel, 1.0, F0_BINS - 1)
    return np.rint(mel).astype(np.int64)


class _Contour:
    """f0 (Hz) and voicing as functions of time, so any frame rate can sample the same contour."""

    def __init__(self, rng: np.random.Generator, duration: float) -> None:
        self.base = rng.uniform(100.0, 220.0)
        self.glide_f = rng.uniform(0.2, 1.2, size=3)
        self.glide_a = rng.uniform(0.5, 2.0, size=3)  # semitones
        self.glide_p = rng.uniform(0, 2 * np.pi, size=3)
        self.vib_f = rng.uniform(4.5, 6.5)
        self.vib_a = rng.uniform(0.1, 0.4)
        # Alternate voiced (0.25-0.7 s) and unvoiced (0.05-0.15 s) stretches, voiced first.
        edges = [0.0]
        voiced = True
        while edges[-1] < duration:
            edges.append(edges[-1] + (rng.uniform(0.25, 0.7) if voiced else rng.uniform(0.05, 0.15)))
            voiced = not voiced
        self.edges = np.array(edges)

    def f0(self, t: np.ndarray) -> np.ndarray:
        glides = np.sin(2 * np.pi * self.glide_f[:, None] * t + self.glide_p[:, None])
        semis = (self.glide_a[:, None] * glides).sum(0)
        semis = semis + self.vib_a * np.sin(2 * np.pi * self.vib_f * t)
        return self.base * 2.0 ** (semis / 12.0)

    def voiced(self, t: np.ndarray) -> np.ndarray:
        # Stretch k spans [edges[k], edges[k+1]); even k are voiced.
        k = np.searchsorted(self.edges, t, side="right") - 1
        return (k % 2) == 0


def _smooth(mask: np.ndarray, width: int) -> np.ndarray:
    """Moving average: soft on/offsets (about ``width`` samples) for a 0/1 envelope."""
    if width <= 1:
        return mask.astype(np.float64)
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    return np.convolve(mask.astype(np.float64), kernel, mode="same")


def _resonator_gain(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray, sr: int) -> np.ndarray:
    """|H| of a cascade of 2-pole resonators, unit gain at DC.

    ``freqs`` [bins] Hz, ``formants`` [frames, R] Hz -> ``[frames, bins]``. A resonator with centre
    F and bandwidth B has poles at ``r e^{+-i theta}``, ``r = exp(-pi B / sr)``,
    ``theta = 2 pi F / sr``: ``H(z) = 1 / ((1 - r e^{i theta} z^-1)(1 - r e^{-i theta} z^-1))``.
    """
    z_inv = np.exp(-2j * np.pi * freqs / sr)[None, :, None]  # [1, bins, 1]
    r = np.exp(-np.pi * bandwidths / sr)[None, None, :]  # [1, 1, R]
    theta = 2 * np.pi * formants[:, None, :] / sr  # [frames, 1, R]
    pole = r * np.exp(1j * theta)
    den = (1 - pole * z_inv) * (1 - np.conj(pole) * z_inv)
    dc = np.abs((1 - pole) * (1 - np.conj(pole)))
    return np.prod(dc / np.abs(den), axis=-1)


def _formant_filter(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Filter ``x`` with three formant resonators that glide between vowel targets (STFT domain)."""
    n = int(2 ** round(np.log2(0.032 * sr)))
    hop = n // 4
    window = np.hanning(n + 1)[:-1]  # periodic Hann
    xp = np.pad(x, (n, n))
    n_frames = (len(xp) - n) // hop + 1
    frames = np.lib.stride_tricks.sliding_window_view(xp, n)[::hop][:n_frames] * window
    spectrum = np.fft.rfft(frames, axis=-1)

    times = (np.arange(n_frames) * hop + n / 2 - n) / sr
    duration = len(x) / sr
    n_targets = max(2, int(np.ceil(duration / 0.3)) + 1)
    target_t = np.linspace(0.0, duration, n_targets)
    targets = _VOWELS[rng.integers(0, len(_VOWELS), size=n_targets)]
    targets = targets * rng.uniform(0.9, 1.1, size=(n_targets, 1))  # speaker-ish scaling
    formants = np.stack([np.interp(times, target_t, targets[:, i]) for i in range(3)], axis=-1)
    gain = _resonator_gain(np.fft.rfftfreq(n, 1.0 / sr), formants, _BANDWIDTHS, sr)

    y_frames = np.fft.irfft(spectrum * gain, n=n, axis=-1) * window
    y = np.zeros(len(xp))
    norm = np.zeros(len(xp))
    for j in range(n_frames):  # a few hundred frames at most
        y[j * hop : j * hop + n] += y_frames[j]
        norm[j * hop : j * hop + n] += window**2
    return (y / np.maximum(norm, 1e-8))[n : n + len(x)]


def synthesize_voice(
    rng: np.random.Generator, n_samples: int, sr: int
) -> tuple[np.ndarray, _Contour]:
    """Voice-like float32 audio (peak 0.5) of ``n_samples`` at ``sr`` and the contour it follows."""
    duration = n_samples / sr
    contour = _Contour(rng, duration)
    t = np.arange(n_samples) / sr
    f0 = contour.f0(t)
    phase = 2 * np.pi * np.cumsum(f0 / sr)
    harmonic = np.zeros(n_samples)
    nyquist_guard = 0.45 * sr
    for k in range(1, int(nyquist_guard / f0.min()) + 1):
        harmonic += np.where(k * f0 < nyquist_guard, np.sin(k * phase) / k, 0.0)
    voiced_env = _smooth(contour.voiced(t), int(0.015 * sr))
    noise = rng.standard_normal(n_samples)
    source = harmonic * voiced_env + 0.25 * noise * (1.0 - voiced_env) + 0.01 * noise
    audio = _formant_filter(source, sr, rng) + 1e-3 * rng.standard_normal(n_samples)
    audio = 0.5 * audio / np.max(np.abs(audio))
    return audio.astype(np.float32), contour


def speech_with_pauses(seconds: float, sr: int, seed: int = 0, gaps: int = 2, pause: float = 0.8) -> np.ndarray:
    """A synthetic recording: ``gaps + 1`` stretches of :func:`synthesize_voice` (``seconds`` in all)
    with ``pause`` seconds of digital silence between them, float32, peak 0.5 (for prepare's tests
    and benchmark: RVC's slicer cuts at the pauses)."""
    rng = np.random.default_rng(seed)
    part = int(seconds * sr / (gaps + 1))
    silence = np.zeros(int(pause * sr), np.float32)
    pieces = []
    for k in range(gaps + 1):
        pieces += [synthesize_voice(rng, part, sr)[0]] + ([silence] if k < gaps else [])
    return np.concatenate(pieces)


def _resample_fft(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling by truncating (or zero-padding) the spectrum."""
    if sr_in == sr_out:
        return x.copy()
    m = int(round(len(x) * sr_out / sr_in))
    spectrum = np.fft.rfft(x.astype(np.float64))
    keep = min(len(spectrum), m // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n=m) * (m / len(x))
    return out.astype(np.float32)


def demo_features(audio_16k: np.ndarray, feature_dim: int = 768) -> np.ndarray:
    """Stand-in content features ``[T50, feature_dim]`` float32 for 16 kHz audio.

    Frames of 400 samples every 320 (HuBERT's frame count, ``(N - 400) // 320 + 1``); log-mel
    (40 bands) of each, standardised per band over the utterance, times a fixed random matrix, then
    ``tanh`` to keep values in a HuBERT-like range.
    """
    win, hop, n_fft = 400, 320, 512
    if len(audio_16k) < win:
        raise ValueError(f"need at least {win} samples at 16 kHz for one feature frame, got {len(audio_16k)}")
    frames = np.lib.stride_tricks.sliding_window_view(audio_16k.astype(np.float64), win)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(win + 1)[:-1], n=n_fft, axis=-1)) ** 2
    logmel = np.log(power @ mel_filterbank(16000, n_fft, _N_MELS_FEATURE).T.astype(np.float64) + 1e-6)
    logmel = (logmel - logmel.mean(0)) / (logmel.std(0) + 1e-5)
    proj = np.random.default_rng(_FEATURE_PROJECTION_SEED).standard_normal((_N_MELS_FEATURE, feature_dim))
    return np.tanh(logmel @ proj / np.sqrt(_N_MELS_FEATURE)).astype(np.float32)


#: Each layout's folders: training-rate wavs, 16 kHz wavs, coarse f0, f0 in Hz, features.
LAYOUT_DIRS = {
    "rvc": {
        "wav": "0_gt_wavs", "wav16k": "1_16k_wavs", "coarse": "2a_f0", "hz": "2b-f0nsf", "feat": "3_feature768",
    },
    "applio": {
        "wav": "sliced_audios", "wav16k": "sliced_audios_16k", "coarse": "f0", "hz": "f0_voiced", "feat": "extracted",
    },
}


def make_demo_experiment(
    root: str | os.PathLike[str],
    cfg: ModelConfig,
    n_items: int = 8,
    seconds: float | tuple[float, float] = (1.5, 2.0),
    seed: int = 0,
    layout: Literal["rvc", "applio"] = "rvc",
    speaker_id: int = 0,
) -> Experiment:
    """Write ``n_items`` synthetic slices as an RVC (or Applio) experiment folder at ``root``.

    ``seconds`` is one duration or a ``(low, high)`` range drawn per item. RVC layout: ``0_gt_wavs``
    (``0_<i>.wav`` at ``cfg.sample_rate``), ``1_16k_wavs``, ``2a_f0`` and ``2b-f0nsf``
    (``<name>.wav.npy``), ``3_feature768`` (``<name>.npy``), ``filelist.txt`` with absolute paths in
    shuffled order (as RVC writes it, without the mute rows: there is no ``logs/mute`` here) and
    ``config.json`` (``cfg.to_rvc_json()``, indent 4, sorted keys). Applio layout: ``sliced_audios``
    (``<sid>_0_<i>.wav``), ``sliced_audios_16k``, ``f0``, ``f0_voiced``, ``extracted``,
    ``model_info.json``, an Applio-flavoured ``config.json`` (``data.sample_rate``,
    ``model.text_enc_hidden_dim``) and a filelist with paths relative to ``root``'s grandparent
    (where Applio's ``logs/`` folder sits). ``root`` must not exist or be empty. Returns
    :func:`find_experiment` of the folder.
    """
    if layout not in LAYOUT_DIRS:
        raise ValueError(f"layout must be 'rvc' or 'applio', got {layout!r}")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    lo, hi = (seconds, seconds) if isinstance(seconds, (int, float)) else seconds
    if not 0 < lo <= hi:
        raise ValueError(f"seconds must be positive with low <= high, got {seconds}")
    min_frames = int(lo * 100) - 2
    if min_frames < cfg.segment_frames:
        raise ValueError(
            f"{lo} s gives about {min_frames} frames, fewer than one training segment "
            f"({cfg.segment_frames} frames): use longer items"
        )
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; make_demo_experiment writes a fresh folder")
    dirs = {key: root / name for key, name in LAYOUT_DIRS[layout].items()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    sr = cfg.sample_rate
    rows: list[str] = []
    total_seconds = 0.0
    for i in range(n_items):
        n_samples = int(round(rng.uniform(lo, hi) * sr))
        audio, contour = synthesize_voice(rng, n_samples, sr)
        audio16 = _resample_fft(audio, sr, 16000)
        n_f0 = len(audio16) // 160 + 1
        t = np.arange(n_f0) * 0.01
        f0 = np.where(contour.voiced(t), contour.f0(t), 0.0).astype(np.float32)
        feats = demo_features(audio16, cfg.feature_dim)

        name = f"0_{i}" if layout == "rvc" else f"{speaker_id}_0_{i}"
        paths = {
            "wav": dirs["wav"] / f"{name}.wav",
            "feat": dirs["feat"] / f"{name}.npy",
            "coarse": dirs["coarse"] / f"{name}.wav.npy",
            "hz": dirs["hz"] / f"{name}.wav.npy",
        }
        sf.write(paths["wav"], audio, sr, subtype="FLOAT")
        sf.write(dirs["wav16k"] / f"{name}.wav", audio16, 16000, subtype="FLOAT")
        np.save(paths["coarse"], coarse_pitch(f0))
        np.save(paths["hz"], f0)
        np.save(paths["feat"], feats)
        total_seconds += n_samples / sr

        rows.append(filelist_row([paths[k] for k in ("wav", "feat", "coarse", "hz")], root, layout, speaker_id))

    random.Random(seed).shuffle(rows)
    (root / "filelist.txt").write_text(filelist_text(rows, layout), encoding="utf-8")
    files = config_files(cfg, layout, embedder_model="demo (random projection of log-mel; not ContentVec)",
                         total_seconds=total_seconds)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return find_experiment(root)


def filelist_row(files: list[Path], root: Path, layout: str, speaker_id: int) -> str:
    """One filelist row ``wav|feature|f0coarse|f0hz|sid`` for the four ``files`` of a slice: absolute
    paths for RVC; for Applio relative to ``root``'s grandparent, the folder holding ``logs/``, with
    forward slashes, as Applio writes them."""
    files = [Path(f).resolve() for f in files]
    if layout == "rvc":
        cols = [str(f) for f in files]
    else:
        base = Path(root).resolve().parent.parent
        cols = [os.path.relpath(f, base).replace("\\", "/") for f in files]
    return "|".join([*cols, str(speaker_id)])


def filelist_text(rows: list[str], layout: str) -> str:
    """The text of ``filelist.txt``: RVC ends it with a newline, Applio does not."""
    return "\n".join(rows) + ("\n" if layout == "rvc" else "")


def config_files(cfg: ModelConfig, layout: str, *, embedder_model: str, total_seconds: float,
                 speakers: int = 1) -> dict[str, str]:
    """``{file name: text}``: ``config.json`` (``cfg.to_rvc_json()``, indent 4, sorted keys); for Applio
    its flavour of it (``data.sample_rate``, ``model.text_enc_hidden_dim``) and ``model_info.json``."""
    config = cfg.to_rvc_json()
    files = {}
    if layout == "applio":
        config["data"]["sample_rate"] = config["data"].pop("sampling_rate")
        config["model"]["text_enc_hidden_dim"] = cfg.feature_dim
        info = {"speakers_id": speakers, "embedder_model": embedder_model,
                "total_dataset_duration": round(total_seconds, 3)}
        files["model_info.json"] = json.dumps(info, indent=4)
    files["config.json"] = json.dumps(config, indent=4, sort_keys=True)
    return files
