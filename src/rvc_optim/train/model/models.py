"""RVC v2's generator and discriminator (RVC's ``infer/lib/infer_pack/models.py``).

The generator :class:`SynthesizerTrnMs768NSFsid` is VITS with the text encoder fed by 768-d
content features plus coarse pitch, and a HiFi-GAN decoder driven by a neural-source-filter
harmonic source (:class:`GeneratorNSF`). The discriminator :class:`MultiPeriodDiscriminatorV2` is
HiFi-GAN's multi-period discriminator with periods 2, 3, 5, 7, 11, 17, 23, 37 plus one scale
discriminator.

Module and parameter names, layer shapes and forward passes are RVC's, so RVC's checkpoints (e.g.
``f0G40k.pth`` / ``f0D40k.pth``) load with strict key matching. Differences from RVC:

* weight norm is the parametrized ``torch.nn.utils.parametrizations.weight_norm``; state dicts
  name its tensors ``parametrizations.weight.original0/1`` instead of ``weight_g/weight_v`` (torch
  accepts the legacy names when loading; :mod:`rvc_optim.train.weight_norm_keys` converts);
* the streaming options of RVC's inference (``skip_head``, ``return_length``) and the ``is_half``
  flag are not implemented (``is_half`` is accepted and ignored); cast the module instead;
* the sine source computes the same phase as RVC's current ``SineGen`` in a vectorised way.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from . import attentions, commons, modules
from .modules import LRELU_SLOPE

__all__ = [
    "TextEncoder",
    "PosteriorEncoder",
    "ResidualCouplingBlock",
    "SineGen",
    "SourceModuleHnNSF",
    "GeneratorNSF",
    "SynthesizerTrnMs768NSFsid",
    "DiscriminatorS",
    "DiscriminatorP",
    "MultiPeriodDiscriminatorV2",
    "sample_rate_from_any",
]

_SR_NAMES = {"32k": 32000, "40k": 40000, "48k": 48000}


def sample_rate_from_any(sr: int | str) -> int:
    """RVC passes the sample rate as ``"40k"`` or as ``40000``; return the int."""
    if isinstance(sr, str):
        if sr in _SR_NAMES:
            return _SR_NAMES[sr]
        return int(sr)
    return int(sr)


# ---------------------------------------------------------------------- encoders and flow
class TextEncoder(nn.Module):
    """Prior encoder ``enc_p``: content features (+ coarse pitch) → prior mean and log-std.

    ``x = lrelu₀.₁((emb_phone(phone) + emb_pitch(pitch)) · √hidden)``, a relative-position
    transformer, then ``proj`` to ``2 · out_channels`` split into ``m_p, logs_p``.
    """

    def __init__(
        self,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        in_channels: int = 768,
        f0: bool = True,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.emb_phone = nn.Linear(in_channels, hidden_channels)
        self.lrelu = nn.LeakyReLU(0.1)
        if f0:
            self.emb_pitch = nn.Embedding(256, hidden_channels)
        self.encoder = attentions.Encoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, float(p_dropout)
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``phone [B, T, in]``, ``pitch [B, T]`` long (1..255) or None, ``lengths [B]`` →
        ``(m_p, logs_p [B, out, T], x_mask [B, 1, T])``."""
        x = self.emb_phone(phone)
        if pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = self.lrelu(x * math.sqrt(self.hidden_channels))
        x = x.transpose(1, -1)  # [B, H, T]
        x_mask = commons.sequence_mask(lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """Posterior encoder ``enc_q``: linear spectrogram → ``z = m + ε·exp(logs)`` (WaveNet body)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = modules.WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, spec, T]`` → ``(z, m_q, logs_q [B, out, T], y_mask [B, 1, T])``."""
        x_mask = commons.sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.pre(x) * x_mask
        x = self.enc(x, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class ResidualCouplingBlock(nn.Module):
    """The flow: ``n_flows`` × (mean-only coupling layer, channel flip); ``flows.{0,2,4,6}`` hold
    the parameters. ``reverse=True`` runs the inverse (layers in reverse order)."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                modules.ResidualCouplingLayer(
                    channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels, mean_only=True
                )
            )
            self.flows.append(modules.Flip())

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        flows = self.flows if not reverse else reversed(self.flows)
        for flow in flows:
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x


# ---------------------------------------------------------------------- NSF source and decoder
class SineGen(nn.Module):
    """Sine excitation from frame-level f0 (no parameters, no gradient).

    For ``f0 [B, T]`` (Hz, 0 = unvoiced) and ``upp`` samples per frame: f0 is held constant over
    each frame; the phase (in cycles) advances by ``f0 / sr`` per sample, continuing across frame
    boundaries; harmonic ``k`` (1 = fundamental) has phase ``k ·`` that, plus a random initial
    phase for overtones. ``sine = sine_amp · sin(2π · phase)``; voiced samples
    (``f0 > voiced_threshold``) get ``sine + N(0, noise_std²)``, unvoiced ones only noise with std
    ``sine_amp / 3``. Returns ``(sine_waves [B, T·upp, harmonics], uv [B, T·upp, 1], noise)``.
    """

    def __init__(
        self,
        samp_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.harmonic_num = harmonic_num
        self.dim = harmonic_num + 1
        self.sampling_rate = samp_rate
        self.voiced_threshold = voiced_threshold

    @torch.no_grad()
    def forward(self, f0: torch.Tensor, upp: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t = f0.shape
        f0 = f0.float()
        step = f0 / float(self.sampling_rate)  # cycles per sample, per frame  [B, T]
        within = step.unsqueeze(-1) * torch.arange(1, upp + 1, device=f0.device, dtype=f0.dtype)  # [B, T, upp]
        # Phase reached at the end of each frame (mod 1), accumulated and carried into the next.
        # Summed in float64 so the phase stays exact over long utterances.
        carry = torch.cumsum(torch.remainder(within[:, :-1, -1].double(), 1.0), dim=1).remainder(1.0)
        carry = F.pad(carry.to(f0.dtype), (1, 0))  # the first frame starts at phase 0
        phase = (within + carry.unsqueeze(-1)).reshape(b, t * upp, 1)
        harmonics = torch.arange(1, self.dim + 1, device=f0.device, dtype=f0.dtype)
        phase = phase * harmonics  # [B, N, dim]
        rand_ini = torch.rand(1, 1, self.dim, device=f0.device)  # shared by the batch, as in RVC
        rand_ini[..., 0] = 0
        sine_waves = torch.sin(2 * math.pi * (phase + rand_ini)) * self.sine_amp

        uv = (f0 > self.voiced_threshold).float()
        uv = uv.repeat_interleave(upp, dim=1).unsqueeze(-1)  # [B, N, 1]
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        noise = noise_amp * torch.randn_like(sine_waves)
        sine_waves = sine_waves * uv + noise
        return sine_waves, uv, noise


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise source: ``tanh(l_linear(SineGen(f0)))`` → ``[B, T·upp, 1]``.

    Returns ``(sine_merge, None, None)`` like RVC.
    """

    def __init__(
        self,
        sampling_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        add_noise_std: float = 0.003,
        voiced_threshod: float = 0.0,
        is_half: bool = False,
    ) -> None:
        super().__init__()
        self.sine_amp = sine_amp
        self.noise_std = add_noise_std
        self.l_sin_gen = SineGen(sampling_rate, harmonic_num, sine_amp, add_noise_std, voiced_threshod)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)
        self.l_tanh = nn.Tanh()

    def forward(self, x: torch.Tensor, upp: int = 1) -> tuple[torch.Tensor, None, None]:
        sine_wavs, _, _ = self.l_sin_gen(x, upp)
        sine_wavs = sine_wavs.to(dtype=self.l_linear.weight.dtype)
        return self.l_tanh(self.l_linear(sine_wavs)), None, None


class GeneratorNSF(nn.Module):
    """Decoder ``dec``: HiFi-GAN with an NSF harmonic source added after every upsampling stage.

    ``x = conv_pre(z) + cond(g)``; per stage ``i``: ``lrelu₀.₁ → ups[i] → + noise_convs[i](source)
    → mean of the stage's resblocks``; then ``lrelu`` with slope 0.01 (PyTorch's default, as in
    RVC), ``conv_post`` (no bias), ``tanh``. ``noise_convs[i]`` downsamples the sample-rate source
    to stage ``i``'s rate (stride ``prod(upsample_rates[i+1:])``).
    """

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        gin_channels: int,
        sr: int | str,
        is_half: bool = False,
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upp = math.prod(upsample_rates)
        self.m_source = SourceModuleHnNSF(sampling_rate=sample_rate_from_any(sr), harmonic_num=0)
        self.noise_convs = nn.ModuleList()
        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        resblock_cls = modules.ResBlock1 if str(resblock) == "1" else modules.ResBlock2

        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            c_in = upsample_initial_channel // (2**i)
            c_out = upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(weight_norm(nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2)))
            if i + 1 < len(upsample_rates):
                stride_f0 = math.prod(upsample_rates[i + 1 :])
                self.noise_convs.append(
                    nn.Conv1d(1, c_out, kernel_size=stride_f0 * 2, stride=stride_f0, padding=stride_f0 // 2)
                )
            else:
                self.noise_convs.append(nn.Conv1d(1, c_out, kernel_size=1))

        self.resblocks = nn.ModuleList()
        ch = upsample_initial_channel
        for i in range(len(self.ups)):
            ch = upsample_initial_channel // (2 ** (i + 1))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(resblock_cls(ch, k, tuple(d)))

        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(self, x: torch.Tensor, f0: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, inter, T]``, ``f0 [B, T]`` Hz, ``g [B, gin, 1]`` → waveform ``[B, 1, T·upp]``."""
        har_source, _, _ = self.m_source(f0, self.upp)
        har_source = har_source.transpose(1, 2).to(x.dtype)  # [B, 1, T·upp]
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i, (up, noise_conv) in enumerate(zip(self.ups, self.noise_convs)):
            x = F.leaky_relu(x, LRELU_SLOPE)
            x = up(x)
            x = x + noise_conv(har_source)
            xs = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                xs = xs + self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        x = F.leaky_relu(x)  # slope 0.01, as in RVC
        x = self.conv_post(x)
        return torch.tanh(x)


# ---------------------------------------------------------------------- the generator
class SynthesizerTrnMs768NSFsid(nn.Module):
    """RVC v2 generator with pitch (f0) conditioning.

    The constructor takes RVC's positional arguments, so ``SynthesizerTrnMs768NSFsid(*cpt["config"])``
    works on an exported RVC model (``segment_size`` is in frames; only training uses it).
    Submodules: ``enc_p`` (:class:`TextEncoder`), ``dec`` (:class:`GeneratorNSF`), ``enc_q``
    (:class:`PosteriorEncoder`, 16 WaveNet layers, kernel 5), ``flow``
    (:class:`ResidualCouplingBlock`, 4 couplings of 3 layers, kernel 5), ``emb_g`` (speaker table).
    """

    def __init__(
        self,
        spec_channels: int,
        segment_size: int,
        inter_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        spk_embed_dim: int,
        gin_channels: int,
        sr: int | str,
        feature_dim: int = 768,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = set(kwargs) - {"is_half"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
        self.spec_channels = spec_channels
        self.segment_size = segment_size
        self.inter_channels = inter_channels
        self.hidden_channels = hidden_channels
        self.gin_channels = gin_channels
        self.spk_embed_dim = spk_embed_dim
        self.sample_rate = sample_rate_from_any(sr)

        self.enc_p = TextEncoder(
            inter_channels, hidden_channels, filter_channels, n_heads, n_layers, kernel_size, float(p_dropout),
            in_channels=feature_dim, f0=True,
        )
        self.dec = GeneratorNSF(
            inter_channels,
            resblock,
            resblock_kernel_sizes,
            resblock_dilation_sizes,
            upsample_rates,
            upsample_initial_channel,
            upsample_kernel_sizes,
            gin_channels=gin_channels,
            sr=self.sample_rate,
        )
        self.enc_q = PosteriorEncoder(spec_channels, inter_channels, hidden_channels, 5, 1, 16, gin_channels=gin_channels)
        self.flow = ResidualCouplingBlock(inter_channels, hidden_channels, 5, 1, 3, gin_channels=gin_channels)
        self.emb_g = nn.Embedding(spk_embed_dim, gin_channels)

    def forward(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor,
        pitchf: torch.Tensor,
        y: torch.Tensor,
        y_lengths: torch.Tensor,
        ds: torch.Tensor,
    ) -> tuple[
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ]:
        """Training pass.

        ``phone [B, T, 768]``, ``phone_lengths [B]``, ``pitch [B, T]`` long, ``pitchf [B, T]`` Hz,
        ``y [B, spec, T]`` linear spectrogram, ``y_lengths [B]``, ``ds [B]`` speaker ids. Returns
        ``(o [B, 1, segment·hop], ids_slice [B], x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q))``.
        """
        g = self.emb_g(ds).unsqueeze(-1)  # [B, gin, 1]
        m_p, logs_p, x_mask = self.enc_p(phone, pitch, phone_lengths)
        z, m_q, logs_q, y_mask = self.enc_q(y, y_lengths, g=g)
        z_p = self.flow(z, y_mask, g=g)
        z_slice, ids_slice = commons.rand_slice_segments(z, y_lengths, self.segment_size)
        pitchf = commons.slice_segments2(pitchf, ids_slice, self.segment_size)
        o = self.dec(z_slice, pitchf, g=g)
        return o, ids_slice, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q)

    @torch.no_grad()
    def infer(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor,
        nsff0: torch.Tensor,
        sid: torch.Tensor,
        noise_scale: float = 0.66666,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Conversion: sample the prior (``noise_scale`` = RVC's 0.66666), invert the flow, decode.

        Returns ``(o [B, 1, T·hop], x_mask, (z, z_p, m_p, logs_p))`` like RVC.
        """
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch, phone_lengths)
        z_p = (m_p + torch.exp(logs_p) * torch.randn_like(m_p) * noise_scale) * x_mask
        z = self.flow(z_p, x_mask, g=g, reverse=True)
        o = self.dec(z * x_mask, nsff0, g=g)
        return o, x_mask, (z, z_p, m_p, logs_p)


# ---------------------------------------------------------------------- discriminators
def _norm(module: nn.Module, use_spectral_norm: bool) -> nn.Module:
    if use_spectral_norm:
        return torch.nn.utils.parametrizations.spectral_norm(module)
    return weight_norm(module)


def _narrow(channels: int, width_divisor: int) -> int:
    return channels if channels == 1 else max(1, channels // width_divisor)


class DiscriminatorS(nn.Module):
    """HiFi-GAN/MelGAN scale discriminator on the raw waveform (grouped strided 1-D convs).

    ``width_divisor`` > 1 divides every channel count and group count (not in RVC; only for the
    ``tiny`` test config, where RVC's 71M-parameter discriminator would dominate a CPU step).
    """

    def __init__(self, use_spectral_norm: bool = False, width_divisor: int = 1) -> None:
        super().__init__()
        specs = [  # (in, out, kernel, stride, groups, padding)
            (1, 16, 15, 1, 1, 7),
            (16, 64, 41, 4, 4, 20),
            (64, 256, 41, 4, 16, 20),
            (256, 1024, 41, 4, 64, 20),
            (1024, 1024, 41, 4, 256, 20),
            (1024, 1024, 5, 1, 1, 2),
        ]
        w = width_divisor
        self.convs = nn.ModuleList(
            _norm(nn.Conv1d(_narrow(i, w), _narrow(o, w), k, s, groups=max(1, g // w), padding=p), use_spectral_norm)
            for i, o, k, s, g, p in specs
        )
        self.conv_post = _norm(nn.Conv1d(_narrow(1024, w), 1, 3, 1, padding=1), use_spectral_norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x [B, 1, N]`` → ``(score [B, n], feature maps (7 tensors))``."""
        return _score_and_features(self.convs, self.conv_post, x)


def _score_and_features(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Both discriminators' read-out: each conv then leaky ReLU(0.1), every output kept as a feature
    map, then ``conv_post`` (no activation; also kept) flattened into the score."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class DiscriminatorP(nn.Module):
    """HiFi-GAN period discriminator: the waveform folded into ``[T / period, period]`` and read by
    2-D convolutions with kernels ``(kernel_size, 1)``. ``width_divisor`` as in :class:`DiscriminatorS`."""

    def __init__(
        self,
        period: int,
        kernel_size: int = 5,
        stride: int = 3,
        use_spectral_norm: bool = False,
        width_divisor: int = 1,
    ) -> None:
        super().__init__()
        self.period = period
        pad = (commons.get_padding(kernel_size, 1), 0)
        channels = [_narrow(c, width_divisor) for c in (1, 32, 128, 512, 1024, 1024)]
        strides = [stride, stride, stride, stride, 1]
        self.convs = nn.ModuleList(
            _norm(nn.Conv2d(c_in, c_out, (kernel_size, 1), (s, 1), padding=pad), use_spectral_norm)
            for c_in, c_out, s in zip(channels[:-1], channels[1:], strides)
        )
        self.conv_post = _norm(nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)), use_spectral_norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x [B, 1, N]`` → ``(score [B, n], feature maps (6 tensors))``."""
        b, c, t = x.shape
        if t % self.period != 0:
            n_pad = self.period - (t % self.period)
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)
        return _score_and_features(self.convs, self.conv_post, x)


class MultiPeriodDiscriminatorV2(nn.Module):
    """RVC v2 discriminator: ``discriminators.0`` = :class:`DiscriminatorS`, ``discriminators.1..8``
    = :class:`DiscriminatorP` with periods 2, 3, 5, 7, 11, 17, 23, 37 (v1 stops at 17).

    ``periods`` and ``width_divisor`` are not in RVC; the defaults give RVC's discriminator.
    """

    PERIODS: tuple[int, ...] = (2, 3, 5, 7, 11, 17, 23, 37)

    def __init__(
        self, use_spectral_norm: bool = False, periods: Sequence[int] | None = None, width_divisor: int = 1
    ) -> None:
        super().__init__()
        if width_divisor < 1:
            raise ValueError(f"width_divisor must be >= 1, got {width_divisor}")
        periods = self.PERIODS if periods is None else tuple(periods)
        discs: list[nn.Module] = [DiscriminatorS(use_spectral_norm=use_spectral_norm, width_divisor=width_divisor)]
        discs += [DiscriminatorP(p, use_spectral_norm=use_spectral_norm, width_divisor=width_divisor) for p in periods]
        self.discriminators = nn.ModuleList(discs)

    def forward(
        self, y: torch.Tensor, y_hat: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """Real ``y`` and generated ``y_hat`` ``[B, 1, N]`` → ``(y_d_rs, y_d_gs, fmap_rs, fmap_gs)``."""
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for d in self.discriminators:
            y_d_r, fmap_r = d(y)
            y_d_g, fmap_g = d(y_hat)
            y_d_rs.append(y_d_r)
            y_d_gs.append(y_d_g)
            fmap_rs.append(fmap_r)
            fmap_gs.append(fmap_g)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs
