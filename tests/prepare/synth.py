"""Synthetic voiced test audio with a known f0: a harmonic tone with a pitch glide, between silences."""

from __future__ import annotations

import numpy as np

SR = 16000

#: (start s, end s, f0 at start Hz, f0 at end Hz); silence elsewhere.
SEGMENTS = ((0.25, 1.25, 140.0, 280.0), (1.55, 2.05, 220.0, 180.0))
DURATION = 2.3


def true_f0(t: np.ndarray) -> np.ndarray:
    """The f0 (Hz) at times ``t`` (s): exponential glides inside :data:`SEGMENTS`, 0 outside."""
    f0 = np.zeros_like(t, dtype=np.float64)
    for start, end, f_a, f_b in SEGMENTS:
        inside = (t >= start) & (t < end)
        f0[inside] = f_a * (f_b / f_a) ** ((t[inside] - start) / (end - start))
    return f0


def glide(duration: float = DURATION, seed: int = 0) -> np.ndarray:
    """16 kHz float32 audio: harmonics 1/k up to 4 kHz following :func:`true_f0`, 10 ms fades, faint noise."""
    t = np.arange(int(duration * SR)) / SR
    f0 = true_f0(t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = np.zeros_like(t)
    for k in range(1, 30):
        x += np.where(k * f0 < 4000, np.sin(k * phase) / k, 0.0)
    envelope = np.convolve((f0 > 0).astype(float), np.hanning(160) / np.hanning(160).sum(), mode="same")
    noise = np.random.default_rng(seed).normal(0, 1e-4, len(t))
    return (0.3 * x * envelope / np.abs(x).max() + noise).astype(np.float32)


def frame_truth(n_frames: int, margin: float = 0.03) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 10 ms frame: true f0, and masks of frames clearly voiced / clearly unvoiced (``margin`` s
    away from every on- or offset, where the frame's 1024-sample analysis windows straddle both)."""
    t = np.arange(n_frames) * 0.01
    f0 = true_f0(t)
    edges = np.array([e for seg in SEGMENTS for e in seg[:2]])
    clear = np.abs(t[:, None] - edges[None]).min(1) > margin
    return f0, clear & (f0 > 0), clear & (f0 == 0)


def cents_error(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|1200 log2(estimate / truth)| where both are voiced."""
    both = (estimate > 0) & (truth > 0)
    return np.abs(1200 * np.log2(estimate[both] / truth[both]))
