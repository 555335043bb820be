"""Model and data-shape configuration of an RVC v2 voice model.

RVC keeps these values in ``configs/v2/{32k,48k}.json`` and ``configs/v1/40k.json`` (v2 at 40 kHz
reuses the v1 file), split into ``train`` / ``data`` / ``model`` sections; Applio keeps the same
values in ``rvc/configs/<sample rate>.json``. :class:`ModelConfig` holds the fields that decide the
model's shape and the spectrograms it is trained on, plus the two loss weights, as one frozen record.
Optimiser and loop settings (learning rate, batch size, epochs, ...) are not here.

Differences from RVC's files: ``segment_size`` is in samples as in RVC's JSON, and the model gets
``segment_frames`` (``segment_size // hop_length``); list values are stored as tuples so the record
is hashable; ``spec_channels`` is derived from ``n_fft`` rather than stored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ModelConfig", "ConfigKeyError", "get_config", "config_names", "RVC_TRAIN_DEFAULTS"]

#: The ``train`` section RVC's v2 JSON files share; written by :meth:`ModelConfig.to_rvc_json`
#: so RVC can read the file back. Only ``segment_size``, ``c_mel`` and ``c_kl`` come from the
#: :class:`ModelConfig` itself.
RVC_TRAIN_DEFAULTS: dict[str, Any] = {
    "log_interval": 200,
    "seed": 1234,
    "epochs": 20000,
    "learning_rate": 1e-4,
    "betas": [0.8, 0.99],
    "eps": 1e-9,
    "batch_size": 4,
    "fp16_run": True,
    "lr_decay": 0.999875,
    "init_lr_ratio": 1,
    "warmup_epochs": 0,
}

_MAX_WAV_VALUE = 32768.0


class ConfigKeyError(KeyError):
    """A key missing from an RVC/Applio config file; the message names the file and the key."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the shape of an RVC v2 generator/discriminator and its spectrograms.

    Field names follow RVC's JSON except ``sample_rate`` (RVC ``sampling_rate``), ``n_fft``
    (RVC ``filter_length``) and ``feature_dim`` (Applio ``text_enc_hidden_dim``; 768 for v2).
    ``disc_width_divisor`` is ours (1 = RVC's discriminator; the ``tiny`` config narrows it); it is
    written to the JSON's model section only when it is not 1.
    """

    # model section
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    # data section
    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    n_mel_channels: int
    mel_fmin: float = 0.0
    mel_fmax: float | None = None
    # train section (shape of a training example, loss weights)
    segment_size: int = 12800
    c_mel: float = 45.0
    c_kl: float = 1.0
    feature_dim: int = 768
    # Not RVC's: divides the discriminator's channel and group counts (1 = RVC's discriminator).
    # Only the tiny config uses it, so a CPU training step stays well under a second.
    disc_width_divisor: int = 1

    def __post_init__(self) -> None:
        # Accept lists (as read from JSON) but store tuples, so the record stays hashable.
        for name in ("resblock_kernel_sizes", "upsample_rates", "upsample_kernel_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(
            self,
            "resblock_dilation_sizes",
            tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes),
        )
        object.__setattr__(self, "resblock", str(self.resblock))
        self._validate()

    def _validate(self) -> None:
        if self.resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {self.resblock!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(
                f"upsample_rates {self.upsample_rates} and upsample_kernel_sizes "
                f"{self.upsample_kernel_sizes} must have the same length"
            )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(
                f"resblock_kernel_sizes {self.resblock_kernel_sizes} and resblock_dilation_sizes "
                f"{self.resblock_dilation_sizes} must have the same length"
            )
        if self.upsample_factor != self.hop_length:
            raise ValueError(
                f"the product of upsample_rates {self.upsample_rates} is {self.upsample_factor}, "
                f"but hop_length is {self.hop_length}: the decoder must turn one frame into hop_length samples"
            )
        if self.hidden_channels % self.n_heads != 0:
            raise ValueError(
                f"hidden_channels ({self.hidden_channels}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.inter_channels % 2 != 0:
            raise ValueError(f"inter_channels must be even (the flow splits it in halves), got {self.inter_channels}")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)) != 0:
            raise ValueError(
                f"upsample_initial_channel ({self.upsample_initial_channel}) must be divisible by "
                f"2**{len(self.upsample_rates)} (it is halved at every upsampling stage)"
            )
        if self.disc_width_divisor < 1:
            raise ValueError(f"disc_width_divisor must be >= 1, got {self.disc_width_divisor}")
        if self.segment_size < self.hop_length:
            raise ValueError(f"segment_size ({self.segment_size} samples) is shorter than one hop ({self.hop_length})")

    # ------------------------------------------------------------------ derived values
    @property
    def spec_channels(self) -> int:
        """Rows of the linear spectrogram: ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def segment_frames(self) -> int:
        """Training slice length in spectrogram frames (what RVC passes the model as segment_size)."""
        return self.segment_size // self.hop_length

    @property
    def upsample_factor(self) -> int:
        """Samples the decoder makes per frame: the product of ``upsample_rates``."""
        out = 1
        for r in self.upsample_rates:
            out *= r
        return out

    @property
    def effective_mel_fmax(self) -> float:
        """``mel_fmax``, or the Nyquist frequency when it is ``None`` (RVC's ``null``)."""
        return self.sample_rate / 2 if self.mel_fmax is None else float(self.mel_fmax)

    def generator_args(self) -> list[Any]:
        """Positional arguments of ``SynthesizerTrnMs768NSFsid`` as RVC's training builds it
        (slot 1 = ``segment_frames``). Lists, not tuples, like RVC's."""
        return [
            self.spec_channels,
            self.segment_frames,
            *self._shared_args(),
        ]

    def export_list(self) -> list[Any]:
        """RVC's exported ``config`` list (the ``"config"`` entry of a small model ``.pth``).

        Same as :meth:`generator_args` except slot 1, which RVC always writes as the literal 32.
        """
        return [self.spec_channels, 32, *self._shared_args()]

    def _shared_args(self) -> list[Any]:
        return [
            self.inter_channels,
            self.hidden_channels,
            self.filter_channels,
            self.n_heads,
            self.n_layers,
            self.kernel_size,
            self.p_dropout,
            self.resblock,
            list(self.resblock_kernel_sizes),
            [list(ds) for ds in self.resblock_dilation_sizes],
            list(self.upsample_rates),
            self.upsample_initial_channel,
            list(self.upsample_kernel_sizes),
            self.spk_embed_dim,
            self.gin_channels,
            int(self.sample_rate),
        ]

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (tuples kept as tuples)."""
        return asdict(self)

    # ------------------------------------------------------------------ RVC / Applio JSON
    @classmethod
    def from_rvc_json(cls, path: str | Path) -> "ModelConfig":
        """Read RVC's or Applio's ``config.json``.

        RVC names the sample rate ``data.sampling_rate``, Applio ``data.sample_rate``; Applio's
        ``model.text_enc_hidden_dim`` becomes ``feature_dim`` (768 when absent). A missing key
        raises :class:`ConfigKeyError` (a ``KeyError``) naming the file and the key.
        """
        path = Path(path)
        with path.open("r", encoding="utf-8") as f:
            raw = json.load(f)
        return cls.from_rvc_dict(raw, source=str(path))

    @classmethod
    def from_rvc_dict(cls, raw: Mapping[str, Any], source: str = "<dict>") -> "ModelConfig":
        """Same as :meth:`from_rvc_json` for an already parsed mapping; ``source`` names it in errors."""

        def get(section: str, *keys: str, default: Any = ...) -> Any:
            sec = raw.get(section)
            if not isinstance(sec, Mapping):
                raise ConfigKeyError(f"{source}: missing section {section!r}")
            for key in keys:
                if key in sec:
                    return sec[key]
            if default is not ...:
                return default
            raise ConfigKeyError(f"{source}: missing key {section}.{' or '.join(keys)}")

        if get("model", "use_spectral_norm", default=False):
            raise ValueError(f"{source}: model.use_spectral_norm=true is not supported (RVC v2 uses weight norm)")
        n_fft = int(get("data", "filter_length"))
        mel_fmax = get("data", "mel_fmax", default=None)
        return cls(
            inter_channels=int(get("model", "inter_channels")),
            hidden_channels=int(get("model", "hidden_channels")),
            filter_channels=int(get("model", "filter_channels")),
            n_heads=int(get("model", "n_heads")),
            n_layers=int(get("model", "n_layers")),
            kernel_size=int(get("model", "kernel_size")),
            p_dropout=get("model", "p_dropout"),
            resblock=str(get("model", "resblock")),
            resblock_kernel_sizes=get("model", "resblock_kernel_sizes"),
            resblock_dilation_sizes=get("model", "resblock_dilation_sizes"),
            upsample_rates=get("model", "upsample_rates"),
            upsample_initial_channel=int(get("model", "upsample_initial_channel")),
            upsample_kernel_sizes=get("model", "upsample_kernel_sizes"),
            spk_embed_dim=int(get("model", "spk_embed_dim")),
            gin_channels=int(get("model", "gin_channels")),
            sample_rate=int(get("data", "sampling_rate", "sample_rate")),
            n_fft=n_fft,
            hop_length=int(get("data", "hop_length")),
            win_length=int(get("data", "win_length")),
            n_mel_channels=int(get("data", "n_mel_channels")),
            mel_fmin=float(get("data", "mel_fmin", default=0.0)),
            mel_fmax=None if mel_fmax is None else float(mel_fmax),
            segment_size=int(get("train", "segment_size")),
            c_mel=float(get("train", "c_mel", default=45.0)),
            c_kl=float(get("train", "c_kl", default=1.0)),
            feature_dim=int(get("model", "text_enc_hidden_dim", default=768)),
            disc_width_divisor=int(get("model", "disc_width_divisor", default=1)),
        )

    def to_rvc_json(self, train_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """RVC's ``config.json`` layout (``train`` / ``data`` / ``model``), as a dict.

        The ``train`` section is :data:`RVC_TRAIN_DEFAULTS` plus ``segment_size``, ``c_mel`` and
        ``c_kl`` from this record, then ``train_overrides``. Write it the way RVC does with
        ``json.dump(d, f, indent=4, sort_keys=True)``. ``feature_dim`` is not written (RVC has no
        such key; it is 768 for every v2 model).
        """
        train = dict(RVC_TRAIN_DEFAULTS)
        train.update(segment_size=self.segment_size, c_mel=self.c_mel, c_kl=self.c_kl)
        if train_overrides:
            train.update(train_overrides)
        data = {
            "max_wav_value": _MAX_WAV_VALUE,
            "sampling_rate": self.sample_rate,
            "filter_length": self.n_fft,
            "hop_length": self.hop_length,
            "win_length": self.win_length,
            "n_mel_channels": self.n_mel_channels,
            "mel_fmin": self.mel_fmin,
            "mel_fmax": self.mel_fmax,
        }
        model = {
            "inter_channels": self.inter_channels,
            "hidden_channels": self.hidden_channels,
            "filter_channels": self.filter_channels,
            "n_heads": self.n_heads,
            "n_layers": self.n_layers,
            "kernel_size": self.kernel_size,
            "p_dropout": self.p_dropout,
            "resblock": self.resblock,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(ds) for ds in self.resblock_dilation_sizes],
            "upsample_rates": list(self.upsample_rates),
            "upsample_initial_channel": self.upsample_initial_channel,
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "use_spectral_norm": False,
            "gin_channels": self.gin_channels,
            "spk_embed_dim": self.spk_embed_dim,
        }
        if self.disc_width_divisor != 1:
            model["disc_width_divisor"] = self.disc_width_divisor  # ours; RVC never sees it
        return {"train": train, "data": data, "model": model}


# ---------------------------------------------------------------------- presets
_V2_MODEL_SHARED: dict[str, Any] = dict(
    inter_channels=192,
    hidden_channels=192,
    filter_channels=768,
    n_heads=2,
    n_layers=6,
    kernel_size=3,
    p_dropout=0,
    resblock="1",
    resblock_kernel_sizes=(3, 7, 11),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
    upsample_initial_channel=512,
    spk_embed_dim=109,
    gin_channels=256,
    mel_fmin=0.0,
    mel_fmax=None,
)

_PRESETS: dict[str, ModelConfig] = {
    # configs/v2/32k.json
    "32k": ModelConfig(
        **_V2_MODEL_SHARED,
        upsample_rates=(10, 8, 2, 2),
        upsample_kernel_sizes=(20, 16, 4, 4),
        sample_rate=32000,
        n_fft=1024,
        hop_length=320,
        win_length=1024,
        n_mel_channels=80,
        segment_size=12800,
    ),
    # configs/v1/40k.json (RVC uses it for v2 at 40 kHz too)
    "40k": ModelConfig(
        **_V2_MODEL_SHARED,
        upsample_rates=(10, 10, 2, 2),
        upsample_kernel_sizes=(16, 16, 4, 4),
        sample_rate=40000,
        n_fft=2048,
        hop_length=400,
        win_length=2048,
        n_mel_channels=125,
        segment_size=12800,
    ),
    # configs/v2/48k.json
    "48k": ModelConfig(
        **_V2_MODEL_SHARED,
        upsample_rates=(12, 10, 2, 2),
        upsample_kernel_sizes=(24, 20, 4, 4),
        sample_rate=48000,
        n_fft=2048,
        hop_length=480,
        win_length=2048,
        n_mel_channels=128,
        segment_size=17280,
    ),
    # Same structure, tiny widths: for tests and smoke runs on a CPU (a training step well under 1 s).
    "tiny": ModelConfig(
        inter_channels=16,
        hidden_channels=16,
        filter_channels=32,
        n_heads=2,
        n_layers=2,
        kernel_size=3,
        p_dropout=0,
        resblock="1",
        resblock_kernel_sizes=(3, 7, 11),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        upsample_rates=(10, 4, 2, 2),
        upsample_initial_channel=32,
        upsample_kernel_sizes=(20, 8, 4, 4),
        spk_embed_dim=4,
        gin_channels=16,
        sample_rate=16000,
        n_fft=512,
        hop_length=160,
        win_length=512,
        n_mel_channels=40,
        segment_size=160 * 24,
        disc_width_divisor=16,
    ),
}

_ALIASES = {"32000": "32k", "40000": "40k", "48000": "48k"}


def config_names() -> tuple[str, ...]:
    """Names :func:`get_config` accepts: ``"32k"``, ``"40k"``, ``"48k"``, ``"tiny"``."""
    return tuple(_PRESETS)


def get_config(name: str | int) -> ModelConfig:
    """The RVC v2 config for ``"32k"``, ``"40k"``, ``"48k"`` (also 32000/40000/48000), or ``"tiny"``."""
    key = _ALIASES.get(str(name), str(name))
    try:
        return _PRESETS[key]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; expected one of {', '.join(_PRESETS)}") from None
