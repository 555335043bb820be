"""RMVPE (Wei et al., 2023), the f0 network RVC ships as ``rmvpe.pt``, and its f0 estimator.

The network is written from the published architecture with the module names of RVC's checkpoint,
so its state_dict loads as is (``E2E(n_blocks=4, n_gru=1, kernel_size=(2, 2))``):

* input: log-mel spectrogram of 16 kHz audio, 128 bands 30..8000 Hz (HTK mel), window/FFT 1024,
  hop 160 (centred frames), ``log(max(mel, 1e-5))``; frames zero-padded to a multiple of 32;
* ``unet``: a deep U-Net over (time, mel): input BatchNorm, 5 encoder stages (16, 32, 64, 128, 256
  channels, 4 residual conv blocks each, 2x2 average pooling), 4 intermediate stages (512 channels),
  5 decoder stages (2x2 transposed conv, concatenated skip, 4 residual blocks);
* ``cnn``: 3x3 conv to 3 channels, flattened per frame to 3 x 128 = 384 features;
* ``fc``: bidirectional GRU (256 per direction), linear 512 -> 360, dropout, sigmoid: a salience per
  20-cent bin from 1997.38 cents (~31.7 Hz, relative to 10 Hz).

Decoding (RVC's ``to_local_average_cents``): the salience-weighted mean of the cents of the 9 bins
around the peak; frames whose peak salience is <= 0.03 are unvoiced (0 Hz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from rvc_optim.prepare._batch import run_grouped
from rvc_optim.prepare._optional import require
from rvc_optim.prepare.f0 import CENTS_FIRST_BIN, HOP, SAMPLE_RATE, F0Estimator, f0_frames

__all__ = ["E2E", "RmvpeEstimator", "decode_salience", "log_mel"]

N_BINS = 360
N_MELS = 128
CENTS_PER_BIN = 20.0
THRESHOLD = 0.03
_WINDOW = 1024
_FRAME_MULTIPLE = 32  # 5 poolings by 2 along time
_MIN_SAMPLES = _WINDOW // 2 + 1  # the centred STFT's reflect padding needs more than half a window
_BN_MOMENTUM = 0.01


class _ConvBlockRes(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU, plus the input (through a 1x1 conv when channels change)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=_BN_MOMENTUM), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=_BN_MOMENTUM), nn.ReLU(),
        )
        if cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + (self.shortcut(x) if hasattr(self, "shortcut") else x)


def _through(modules: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def _blocks(cin: int, cout: int, n: int) -> nn.ModuleList:
    return nn.ModuleList([_ConvBlockRes(cin if i == 0 else cout, cout) for i in range(n)])


class _ResStage(nn.Module):
    """``n`` residual blocks; with a pool size, also returns the pooled output (encoder stage)."""

    def __init__(self, cin: int, cout: int, pool: tuple[int, int] | None, n: int) -> None:
        super().__init__()
        self.conv = _blocks(cin, cout, n)
        if pool is not None:
            self.pool = nn.AvgPool2d(pool)

    def forward(self, x: torch.Tensor):
        x = _through(self.conv, x)
        return (x, self.pool(x)) if hasattr(self, "pool") else x


class _Encoder(nn.Module):
    def __init__(self, stages: int, pool: tuple[int, int], n_blocks: int, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=_BN_MOMENTUM)
        widths = [1] + [channels * 2**i for i in range(stages)]
        self.layers = nn.ModuleList([_ResStage(a, b, pool, n_blocks) for a, b in zip(widths, widths[1:])])

    def forward(self, x: torch.Tensor):
        skips = []
        x = self.bn(x)
        for stage in self.layers:
            skip, x = stage(x)
            skips.append(skip)
        return x, skips


class _Intermediate(nn.Module):
    def __init__(self, cin: int, cout: int, stages: int, n_blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_ResStage(cin if i == 0 else cout, cout, None, n_blocks) for i in range(stages)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _through(self.layers, x)


class _DecoderStage(nn.Module):
    def __init__(self, cin: int, cout: int, stride: tuple[int, int], n_blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 3, stride=stride, padding=1, output_padding=(1, 1), bias=False),
            nn.BatchNorm2d(cout, momentum=_BN_MOMENTUM), nn.ReLU(),
        )
        self.conv2 = _blocks(2 * cout, cout, n_blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return _through(self.conv2, torch.cat((self.conv1(x), skip), dim=1))


class _Decoder(nn.Module):
    def __init__(self, cin: int, stages: int, stride: tuple[int, int], n_blocks: int) -> None:
        super().__init__()
        widths = [cin // 2**i for i in range(stages + 1)]
        self.layers = nn.ModuleList([_DecoderStage(a, b, stride, n_blocks) for a, b in zip(widths, widths[1:])])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.layers, reversed(skips)):
            x = stage(x, skip)
        return x


class _DeepUnet(nn.Module):
    def __init__(self, pool: tuple[int, int], n_blocks: int, stages: int = 5, inter: int = 4, channels: int = 16):
        super().__init__()
        bottom = channels * 2**stages
        self.encoder = _Encoder(stages, pool, n_blocks, channels)
        self.intermediate = _Intermediate(bottom // 2, bottom, inter, n_blocks)
        self.decoder = _Decoder(bottom, stages, pool, n_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class _BiGRU(nn.Module):
    def __init__(self, n_in: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, num_layers=layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class E2E(nn.Module):
    """RMVPE: log-mel ``[B, 128, T]`` -> salience ``[B, T, 360]`` (RVC's ``E2E(4, 1, (2, 2))``)."""

    def __init__(self, n_blocks: int = 4, n_gru: int = 1, pool: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.unet = _DeepUnet(pool, n_blocks)
        self.cnn = nn.Conv2d(16, 3, 3, padding=1)
        self.fc = nn.Sequential(_BiGRU(3 * N_MELS, 256, n_gru), nn.Linear(512, N_BINS), nn.Dropout(0.25), nn.Sigmoid())

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.cnn(self.unet(mel.transpose(-1, -2).unsqueeze(1)))  # [B, 3, T, 128]
        return self.fc(x.transpose(1, 2).flatten(-2))


def decode_salience(salience: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """f0 in Hz per frame from salience ``[T, 360]``: local weighted average of 9 bins around the peak."""
    salience = np.asarray(salience, dtype=np.float64)
    centre = salience.argmax(axis=1) + 4
    padded = np.pad(salience, ((0, 0), (4, 4)))
    cents = np.pad(CENTS_FIRST_BIN + CENTS_PER_BIN * np.arange(N_BINS), (4, 4))
    window = centre[:, None] + np.arange(-4, 5)
    weights = np.take_along_axis(padded, window, axis=1)
    local = (weights * cents[window]).sum(1) / np.maximum(weights.sum(1), 1e-12)
    voiced = salience.max(axis=1) > threshold
    return np.where(voiced, 10.0 * 2.0 ** (local / 1200.0), 0.0)


class _LogMel(nn.Module):
    """RMVPE's input: 128 HTK mel bands (30..8000 Hz) of a 1024-point STFT, hop 160, centred, natural log."""

    def __init__(self) -> None:
        super().__init__()
        librosa = require("librosa", "f0 method 'rmvpe'")
        basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=_WINDOW, n_mels=N_MELS, fmin=30, fmax=8000, htk=True)
        self.register_buffer("basis", torch.from_numpy(basis).float())
        self.register_buffer("window", torch.hann_window(_WINDOW))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, _WINDOW, HOP, window=self.window, center=True, return_complex=True).abs()
        return torch.log(torch.clamp(self.basis @ spec, min=1e-5))


def log_mel(audio16k: np.ndarray) -> np.ndarray:
    """RMVPE's log-mel input ``[128, len // 160 + 1]`` for one clip (at least 513 samples)."""
    with torch.no_grad():
        return _LogMel()(torch.from_numpy(np.asarray(audio16k, dtype=np.float32))[None])[0].numpy()


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle error, a zip error, a truncated file: all say "not a weights file"
        reason = str(err).splitlines()[0]
        raise ValueError(f"{path} is not a readable RMVPE weights file (torch.load: {reason})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold an RMVPE state_dict (got {type(state).__name__})")
    return state


def load_rmvpe(path: str | Path | None) -> E2E:
    """RMVPE's network with the weights in ``path`` (RVC's ``assets/rmvpe/rmvpe.pt``), in eval mode."""
    if path is None or not Path(path).is_file():
        where = "no weights file was given" if path is None else f"{path} does not exist"
        raise ValueError(
            f"f0 method 'rmvpe' needs RVC's rmvpe.pt ({where}): download it from RVC's release "
            "(huggingface.co/lj1995/VoiceConversionWebUI, file rmvpe.pt), put it e.g. at assets/rmvpe/rmvpe.pt "
            "and pass that path; nothing is downloaded at run time"
        )
    path = Path(path)
    state = _load_state(path)
    model = E2E()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        first = (missing and f"missing {missing[0]}") or (extra and f"unexpected {extra[0]}") or (
            f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
        raise ValueError(f"{path} is not RVC's RMVPE weights: {len(missing)} missing, {len(extra)} unexpected, "
                         f"{len(wrong)} mis-shaped tensors ({first})")
    model.load_state_dict(state)
    return model.eval()


def _model_frames(n_samples: int) -> int:
    """Frames the network runs on: RVC's count for the clip (padded to 513 samples), rounded up to 32."""
    return -(-f0_frames(max(n_samples, _MIN_SAMPLES)) // _FRAME_MULTIPLE) * _FRAME_MULTIPLE


class RmvpeEstimator(F0Estimator):
    """f0 by RMVPE; clips whose padded frame counts agree are batched (exactly as one at a time)."""

    method = "rmvpe"

    def __init__(self, model: E2E, *, device: str = "cpu", max_batch: int = 16, threshold: float = THRESHOLD) -> None:
        self.device = device
        self.model = model.to(device)
        self.mel = _LogMel().to(device)
        self.max_batch = max_batch
        self.threshold = threshold

    @classmethod
    def from_file(cls, path: str | Path | None, **kwargs) -> RmvpeEstimator:
        return cls(load_rmvpe(path), **kwargs)

    def _estimate_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        return run_grouped(clips, lambda c: _model_frames(len(c)), self._run, self.max_batch)

    def _run(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        frames = _model_frames(len(clips[0]))  # the same for the whole group
        with torch.no_grad():
            audio = [torch.from_numpy(np.pad(c, (0, max(0, _MIN_SAMPLES - len(c))))) for c in clips]
            mels = [self.mel(a[None].to(self.device))[0] for a in audio]
            batch = torch.stack([nn.functional.pad(m, (0, frames - m.shape[-1])) for m in mels])
            salience = self.model(batch).float().cpu().numpy()
        return [decode_salience(s[: m.shape[-1]], self.threshold) for s, m in zip(salience, mels)]
