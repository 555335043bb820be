"""Spectrograms as RVC computes them: frame counts, magnitude, and the Slaney mel filterbank
(exactly librosa's when librosa is installed; its documented properties otherwise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rvc_optim.train import mel as melmod
from rvc_optim.train.config import get_config
from rvc_optim.train.mel import (
    hz_to_mel,
    mel_filterbank,
    mel_frequencies,
    mel_spectrogram,
    mel_to_hz,
    spec_to_mel,
    spectrogram_torch,
)

# (sample rate, n_fft, n_mels): RVC v2's three configs and the tiny one.
FILTERBANKS = [(32000, 1024, 80), (40000, 2048, 125), (48000, 2048, 128), (16000, 512, 40)]


@pytest.mark.parametrize("sr, n_fft, n_mels", FILTERBANKS)
def test_filterbank_equals_librosa(sr: int, n_fft: int, n_mels: int) -> None:
    import librosa  # a test dependency (the `test` extra)

    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=None)
    ours = mel_filterbank(sr, n_fft, n_mels, 0.0, None)
    assert ours.dtype == ref.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)  # same arithmetic, same float32 rounding


def test_filterbank_equals_librosa_with_band_limits() -> None:
    import librosa

    ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=64, fmin=55.0, fmax=7600.0)
    np.testing.assert_allclose(mel_filterbank(22050, 1024, 64, 55.0, 7600.0), ref, rtol=1e-6, atol=1e-9)


def test_slaney_scale_is_linear_below_1khz_and_log_above() -> None:
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(200.0 / 3.0) == pytest.approx(1.0)
    # 27 mels per factor 6.4 above 1 kHz
    assert hz_to_mel(6400.0) - hz_to_mel(1000.0) == pytest.approx(27.0)
    f = np.array([0.0, 100.0, 999.0, 1000.0, 4000.0, 20000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("sr, n_fft, n_mels", FILTERBANKS)
def test_filterbank_triangles_peak_at_mel_centres_with_slaney_area(sr: int, n_fft: int, n_mels: int) -> None:
    fb = mel_filterbank(sr, n_fft, n_mels).astype(np.float64)
    assert fb.shape == (n_mels, n_fft // 2 + 1) and (fb >= 0).all()
    edges = mel_frequencies(n_mels + 2, 0.0, sr / 2)
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    scale = 2.0 / (edges[2:] - edges[:-2])  # Slaney normalisation: peak height = 2 / (f[i+2] − f[i])
    for i in range(n_mels):
        lo, centre, hi = edges[i], edges[i + 1], edges[i + 2]
        outside = (freqs <= lo) | (freqs >= hi)
        assert (fb[i, outside] == 0).all(), f"filter {i} non-zero outside ({lo:.1f}, {hi:.1f}) Hz"
        # The unnormalised triangle, evaluated at the bins, equals the filter / scale.
        tri = np.clip(np.minimum((freqs - lo) / (centre - lo), (hi - freqs) / (hi - centre)), 0, None)
        np.testing.assert_allclose(fb[i] / scale[i], tri, atol=1e-6, err_msg=f"filter {i}")
        # The peak sits in the bin nearest the centre (the value there is ≤ the normalised height).
        assert fb[i].max() <= scale[i] * (1 + 1e-6)
        if (freqs > lo).sum() and hi - lo > 4 * sr / n_fft:
            assert abs(freqs[np.argmax(fb[i])] - centre) <= sr / n_fft
    # Filters wide compared to the bin spacing integrate (trapezoid over frequency) to ~1.
    widths = edges[2:] - edges[:-2]
    wide = widths > 20 * sr / n_fft
    area = fb[wide].sum(axis=1) * sr / n_fft
    np.testing.assert_allclose(area, 1.0, rtol=0.02)


def test_mel_frequencies_are_even_in_mels() -> None:
    f = mel_frequencies(10, 0.0, 8000.0)
    assert f[0] == pytest.approx(0.0) and f[-1] == pytest.approx(8000.0)
    np.testing.assert_allclose(np.diff(hz_to_mel(f)), np.diff(hz_to_mel(f))[0], rtol=1e-9)


@pytest.mark.parametrize("n", [3200, 3201, 3359, 4000])
def test_spectrogram_frame_count_is_floor_n_over_hop(n: int) -> None:
    cfg = get_config("tiny")
    y = torch.randn(2, n) * 0.1
    spec = spectrogram_torch(y, cfg.n_fft, cfg.hop_length, cfg.win_length)
    assert spec.shape == (2, cfg.n_fft // 2 + 1, n // cfg.hop_length)
    single = spectrogram_torch(y[0], cfg.n_fft, cfg.hop_length, cfg.win_length)
    torch.testing.assert_close(single, spec[0])


def test_spectrogram_matches_explicit_dft() -> None:
    n_fft, hop, win = 64, 16, 64
    y = torch.randn(1, 256, dtype=torch.float64)
    spec = spectrogram_torch(y, n_fft, hop, win)
    pad = (n_fft - hop) // 2
    padded = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect")[0, 0]
    window = torch.hann_window(win, dtype=torch.float64)
    frame = 3
    seg = padded[frame * hop : frame * hop + n_fft] * window
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    t = torch.arange(n_fft, dtype=torch.float64)[None, :]
    re = (seg * torch.cos(2 * math.pi * k * t / n_fft)).sum(1)
    im = (seg * torch.sin(2 * math.pi * k * t / n_fft)).sum(1)
    torch.testing.assert_close(spec[0, :, frame], torch.sqrt(re**2 + im**2 + 1e-6))


def test_silence_gives_the_floor_values() -> None:
    cfg = get_config("tiny")
    y = torch.zeros(1, 1600)
    spec = spectrogram_torch(y, cfg.n_fft, cfg.hop_length, cfg.win_length)
    torch.testing.assert_close(spec, torch.full_like(spec, 1e-3))  # sqrt(1e-6)
    mel = spec_to_mel(spec, cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate)
    fb = torch.from_numpy(mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mel_channels))
    expected = torch.log(torch.clamp(fb.sum(1) * 1e-3, min=1e-5))
    torch.testing.assert_close(mel[0], expected[:, None].expand_as(mel[0]))
    zero = spec_to_mel(torch.zeros_like(spec), cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate)
    torch.testing.assert_close(zero, torch.full_like(zero, math.log(1e-5)))  # log(clamp(0, 1e-5))


def test_mel_spectrogram_is_spec_then_mel_and_peaks_at_the_tone() -> None:
    cfg = get_config("tiny")
    t = torch.arange(cfg.sample_rate // 2) / cfg.sample_rate
    y = (0.5 * torch.sin(2 * math.pi * 1000.0 * t)).unsqueeze(0)
    args = (cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate, cfg.hop_length, cfg.win_length, cfg.mel_fmin, cfg.mel_fmax)
    mel = mel_spectrogram(y, *args)
    spec = spectrogram_torch(y, cfg.n_fft, cfg.hop_length, cfg.win_length)
    torch.testing.assert_close(mel, spec_to_mel(spec, cfg.n_fft, cfg.n_mel_channels, cfg.sample_rate, 0.0, None))
    assert mel.shape == (1, cfg.n_mel_channels, y.shape[-1] // cfg.hop_length)
    centres = mel_frequencies(cfg.n_mel_channels + 2, 0.0, cfg.sample_rate / 2)[1:-1]
    peak = int(mel[0, :, 10].argmax())
    assert abs(centres[peak] - 1000.0) < 150.0, f"peak at mel band {peak} ({centres[peak]:.0f} Hz)"


def test_filterbank_and_window_are_cached_per_dtype() -> None:
    spec = torch.rand(1, 257, 4)
    spec_to_mel(spec, 512, 40, 16000)
    spec_to_mel(spec.double(), 512, 40, 16000)
    keys = [k for k in melmod._mel_cache if k[:3] == (16000, 512, 40)]
    assert {k[-2] for k in keys} >= {torch.float32, torch.float64}
    out = spec_to_mel(spec.double(), 512, 40, 16000)
    assert out.dtype == torch.float64
