"""Linear and mel spectrograms as RVC computes them (``infer/lib/train/mel_processing.py``).

* :func:`spectrogram_torch`: reflect-pad ``(n_fft - hop) / 2`` on both sides, ``torch.stft`` with
  ``center=False`` and a periodic Hann window of ``win_length``, magnitude
  ``sqrt(re^2 + im^2 + 1e-6)``. ``N`` samples give ``N // hop`` frames.
* :func:`spec_to_mel`: a Slaney-scale, Slaney-normalised mel filterbank (librosa's defaults, which
  RVC uses through ``librosa.filters.mel``) times the magnitude, then ``log(clamp(x, 1e-5))``.
* :func:`mel_spectrogram`: the two together.

Difference from RVC: the filterbank is computed here with numpy (:func:`mel_filterbank`, the same
arithmetic as librosa) so librosa is not a runtime dependency; ``spectrogram_torch`` has no
``sampling_rate`` argument (RVC's ignores it). Windows and filterbanks are cached per (all
parameters, dtype, device); RVC keys its filterbank cache on fmax, dtype and device only, so two
configs with the same fmax in one process would share a filterbank there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "hz_to_mel",
    "mel_to_hz",
    "mel_frequencies",
    "mel_filterbank",
    "spectrogram_torch",
    "spec_to_mel",
    "mel_spectrogram",
    "dynamic_range_compression",
]

# Slaney's Auditory Toolbox mel scale: mel = f / (200/3) below 1 kHz (so 1 kHz is mel 15),
# logarithmic above with 27 mels per factor 6.4 in frequency.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(freqs: np.ndarray | float) -> np.ndarray:
    """Hz to mels on the Slaney scale (librosa ``hz_to_mel(htk=False)``)."""
    f = np.asanyarray(freqs, dtype=np.float64)
    mels = f / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log_part, mels)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Mels to Hz on the Slaney scale (inverse of :func:`hz_to_mel`)."""
    m = np.asanyarray(mels, dtype=np.float64)
    freqs = m * _F_SP
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log_part, freqs)


def mel_frequencies(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``n_mels`` frequencies (Hz) evenly spaced on the Slaney mel scale from ``fmin`` to ``fmax``."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels))


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Mel filterbank ``[n_mels, n_fft // 2 + 1]`` float32, equal to librosa's
    ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)``
    (Slaney scale, ``norm="slaney"``).

    Filter ``i`` is a triangle over the FFT bin frequencies rising from mel point ``i`` to a peak
    of 1 at point ``i + 1`` and falling to 0 at point ``i + 2`` (``n_mels + 2`` points evenly spaced
    in mels), then scaled by ``2 / (f[i + 2] - f[i])`` so every filter has (roughly) unit area.
    """
    if fmax is None:
        fmax = sample_rate / 2.0
    if not 0.0 <= fmin < fmax:
        raise ValueError(f"need 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_f = mel_frequencies(n_mels + 2, fmin, fmax)
    widths = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # librosa fills a float32 array and then scales it in place; doing the same keeps us bit-exact.
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    weights *= 2.0 / (mel_f[2:] - mel_f[:-2])[:, None]
    return weights


_hann_cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
_mel_cache: dict[tuple[int, int, int, float, float, torch.dtype, torch.device], torch.Tensor] = {}


def _hann_window(win_length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (win_length, dtype, device)
    window = _hann_cache.get(key)
    if window is None:
        window = torch.hann_window(win_length, dtype=dtype, device=device)
        _hann_cache[key] = window
    return window


def _mel_basis(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    fmax_hz = sample_rate / 2.0 if fmax is None else float(fmax)
    key = (sample_rate, n_fft, n_mels, float(fmin), fmax_hz, dtype, device)
    basis = _mel_cache.get(key)
    if basis is None:
        basis = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax_hz)).to(dtype=dtype, device=device)
        _mel_cache[key] = basis
    return basis


def spectrogram_torch(
    y: torch.Tensor, n_fft: int, hop_length: int, win_length: int, center: bool = False
) -> torch.Tensor:
    """Linear magnitude spectrogram ``[..., n_fft // 2 + 1, N // hop_length]`` of waveforms ``[..., N]``.

    ``y`` is ``[N]`` or ``[B, N]`` (any leading dims), float in [-1, 1].
    """
    if y.dim() == 0:
        raise ValueError("spectrogram_torch expects a waveform of shape [..., N], got a scalar")
    lead = y.shape[:-1]
    y = y.reshape(-1, y.shape[-1])
    pad = (n_fft - hop_length) // 2
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        y,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=_hann_window(win_length, y.dtype, y.device),
        center=center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-6)
    return spec.reshape(*lead, spec.shape[-2], spec.shape[-1])


def dynamic_range_compression(x: torch.Tensor, clip_val: float = 1e-5) -> torch.Tensor:
    """``log(clamp(x, min=clip_val))`` (RVC's ``dynamic_range_compression_torch`` with C = 1)."""
    return torch.log(torch.clamp(x, min=clip_val))


def spec_to_mel(
    spec: torch.Tensor, n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """Log-mel ``[..., n_mels, T]`` from a linear magnitude spectrogram ``[..., n_fft // 2 + 1, T]``.

    Argument order is RVC's ``spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax)``.
    """
    basis = _mel_basis(sample_rate, n_fft, n_mels, fmin, fmax, spec.dtype, spec.device)
    return dynamic_range_compression(torch.matmul(basis, spec))


def mel_spectrogram(
    y: torch.Tensor,
    n_fft: int,
    n_mels: int,
    sample_rate: int,
    hop_length: int,
    win_length: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    center: bool = False,
) -> torch.Tensor:
    """Log-mel spectrogram ``[..., n_mels, N // hop_length]`` of waveforms ``[..., N]``.

    Argument order is RVC's ``mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size,
    win_size, fmin, fmax, center=False)``.
    """
    spec = spectrogram_torch(y, n_fft, hop_length, win_length, center)
    return spec_to_mel(spec, n_fft, n_mels, sample_rate, fmin, fmax)
