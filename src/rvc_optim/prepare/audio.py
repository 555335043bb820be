"""Audio side of RVC's preprocessing (``infer/modules/train/preprocess.py``): read, filter, slice.

For one recording RVC does, and so do we:

1. read it as mono at the training sample rate (RVC: ffmpeg; here: any file ``soundfile`` reads,
   channels averaged, resampled with soxr at its very-high-quality setting);
2. high-pass it at 48 Hz with a 5th-order Butterworth filter, run forwards only (``lfilter``: RVC
   switched from ``filtfilt`` because the zero-phase version rings before transients);
3. cut it at silences with RVC's slicer (``infer/lib/slicer2.py``; RVC's settings: threshold -42 dB,
   pieces at least 1500 ms, silences at least 400 ms, 15 ms hop, at most 500 ms of silence kept);
4. cut every piece into 3.7 s chunks that overlap by 0.3 s (a piece up to 4.0 s stays whole; the
   last chunk is the remainder, up to 4.0 s);
5. normalise every chunk: ``x / peak * (0.9 * 0.75) + 0.25 * x``; a chunk whose peak exceeds 2.5
   (clipped or broken after filtering) is dropped, as RVC drops it. We also drop chunks that are
   digitally silent (RVC would divide by zero) and the 16 kHz copy is made with soxr, not librosa.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AudioError", "SlicerSettings", "RVC_SLICER", "HIGHPASS_HZ", "HIGHPASS_ORDER", "CHUNK_SECONDS",
    "OVERLAP_SECONDS", "NORM_MAX", "NORM_ALPHA", "CLIP_PEAK", "load_audio", "resample", "highpass",
    "slice_at_silences", "chunks", "normalize",
]

HIGHPASS_HZ = 48.0
HIGHPASS_ORDER = 5
CHUNK_SECONDS = 3.7
OVERLAP_SECONDS = 0.3
NORM_MAX = 0.9
NORM_ALPHA = 0.75
CLIP_PEAK = 2.5


class AudioError(ValueError):
    """A recording that cannot be used; the message is one line naming the reason."""


@dataclass(frozen=True)
class SlicerSettings:
    """The silence slicer's settings, in dB and milliseconds (RVC's values by default)."""

    threshold_db: float = -42.0
    min_length_ms: float = 1500.0
    min_interval_ms: float = 400.0
    hop_ms: float = 15.0
    max_sil_kept_ms: float = 500.0


RVC_SLICER = SlicerSettings()


def _soundfile():
    try:
        import soundfile
    except ImportError:  # a core dependency, but say what is missing rather than fail deep inside
        raise ImportError("soundfile is missing: pip install soundfile") from None
    return soundfile


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """``audio`` (1-d) from ``sr_in`` to ``sr_out`` Hz with soxr (very high quality), float64."""
    if sr_in == sr_out:
        return np.asarray(audio, dtype=np.float64)
    try:
        import soxr
    except ImportError:
        raise ImportError("soxr is missing: pip install 'rvc-optim[prepare]'") from None
    return soxr.resample(np.asarray(audio, dtype=np.float64), sr_in, sr_out, quality="VHQ")


def load_audio(path: str | os.PathLike[str], sr: int) -> np.ndarray:
    """The recording at ``path`` as mono float64 at ``sr`` Hz; :class:`AudioError` if unusable."""
    sf = _soundfile()
    try:
        data, sr_in = sf.read(os.fspath(path), dtype="float64", always_2d=True)
    except Exception as err:  # libsndfile's errors: unknown format, truncated header, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = re.sub(r"^Error opening .*?: ", "", reason)  # libsndfile repeats the path
        raise AudioError(f"not a readable audio file ({reason})") from None
    if data.shape[0] == 0:
        raise AudioError("empty (no samples)")
    if not np.all(np.isfinite(data)):
        raise AudioError("holds NaN or infinite samples")
    return resample(data.mean(axis=1), sr_in, sr)


def highpass(audio: np.ndarray, sr: int) -> np.ndarray:
    """RVC's 48 Hz, 5th-order Butterworth high-pass, applied forwards (``scipy.signal.lfilter``)."""
    try:
        from scipy import signal
    except ImportError:
        raise ImportError("scipy is missing: pip install 'rvc-optim[prepare]'") from None
    b, a = signal.butter(N=HIGHPASS_ORDER, Wn=HIGHPASS_HZ, btype="high", fs=sr)
    return signal.lfilter(b, a, audio)


def _frame_rms(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    """RMS of frames of ``win`` samples every ``hop``, the signal zero-padded by ``win // 2`` each side."""
    padded = np.pad(x, (win // 2, win // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop]
    return np.sqrt(np.mean(frames**2, axis=-1))


def _cut(rms: np.ndarray, start: int, end: int, keep: int) -> tuple[int, int]:
    """The frames to remove from the silence ``start..end`` (frames), keeping up to ``keep`` frames of
    it next to the sound on each side, cutting at the quietest frames."""

    def quietest(a: int, b: int) -> int:
        return a + int(np.argmin(rms[a : b + 1]))

    length = end - start
    if length <= keep:
        pos = quietest(start, end)
        return (0, pos) if start == 0 else (pos, pos)
    left, right = quietest(start, start + keep), quietest(end - keep, end)
    if length <= 2 * keep:
        mid = quietest(end - keep, start + keep)
        return (0, right) if start == 0 else (min(left, mid), max(right, mid))
    return (0, right) if start == 0 else (left, right)


def _silences(rms: np.ndarray, threshold: float, min_length: int, min_interval: int, keep: int) -> list[tuple[int, int]]:
    """Frame ranges to cut out, by slicer2's rule: a silence (frames under ``threshold``) is cut when it
    is at least ``min_interval`` frames long and the piece before it at least ``min_length`` frames,
    or when it is leading silence longer than ``keep``; trailing silence is cut when long enough."""
    cuts: list[tuple[int, int]] = []
    silence_start: int | None = None
    piece_start = 0
    for i, level in enumerate(rms):
        if level < threshold:
            silence_start = i if silence_start is None else silence_start
            continue
        if silence_start is None:
            continue
        leading = silence_start == 0 and i > keep
        middle = i - silence_start >= min_interval and i - piece_start >= min_length
        if leading or middle:
            cuts.append(_cut(rms, silence_start, i, keep))
            piece_start = cuts[-1][1]
        silence_start = None
    total = len(rms)
    if silence_start is not None and total - silence_start >= min_interval:
        end = min(total, silence_start + keep)
        cuts.append((silence_start + int(np.argmin(rms[silence_start : end + 1])), total + 1))
    return cuts


def slice_at_silences(audio: np.ndarray, sr: int, settings: SlicerSettings = RVC_SLICER) -> list[np.ndarray]:
    """The pieces of ``audio`` between silences (RVC's slicer2 with ``settings``); empty pieces dropped."""
    hop = round(sr * settings.hop_ms / 1000)
    interval = sr * settings.min_interval_ms / 1000
    win = min(round(interval), 4 * hop)
    rms = _frame_rms(np.asarray(audio, dtype=np.float64), win, hop)
    cuts = _silences(
        rms, 10 ** (settings.threshold_db / 20), min_length=round(sr * settings.min_length_ms / 1000 / hop),
        min_interval=round(interval / hop), keep=round(sr * settings.max_sil_kept_ms / 1000 / hop),
    )
    if not cuts:
        return [audio] if len(audio) else []
    bounds = [(0, cuts[0][0])] if cuts[0][0] > 0 else []
    bounds += [(a[1], b[0]) for a, b in zip(cuts, cuts[1:])]
    if cuts[-1][1] < len(rms):
        bounds.append((cuts[-1][1], len(rms)))
    pieces = [audio[a * hop : min(len(audio), b * hop)] for a, b in bounds]
    return [p for p in pieces if len(p)]


def chunks(piece: np.ndarray, sr: int, seconds: float = CHUNK_SECONDS, overlap: float = OVERLAP_SECONDS) -> list[np.ndarray]:
    """RVC's chunks of a piece: ``seconds`` long, starting every ``seconds - overlap``, while more than
    ``seconds + overlap`` remains; then the remainder (so a piece up to 4.0 s stays whole)."""
    out = []
    i = 0
    while True:
        start = int(sr * (seconds - overlap) * i)
        i += 1
        if len(piece) - start > (seconds + overlap) * sr:
            out.append(piece[start : start + int(seconds * sr)])
        else:
            out.append(piece[start:])
            return out


def normalize(chunk: np.ndarray) -> np.ndarray | None:
    """RVC's per-chunk normalisation ``x / peak * 0.9 * 0.75 + 0.25 * x`` (float32); None for a chunk
    RVC drops (peak above 2.5) or a digitally silent one."""
    peak = float(np.max(np.abs(chunk))) if len(chunk) else 0.0
    if peak > CLIP_PEAK or peak <= 1e-8:
        return None
    return (chunk / peak * (NORM_MAX * NORM_ALPHA) + (1 - NORM_ALPHA) * chunk).astype(np.float32)
