"""Building blocks of the RVC model (RVC's ``infer/lib/infer_pack/modules.py``).

Module and parameter names are RVC's, so its checkpoints load with strict key matching. Where RVC
uses the legacy ``torch.nn.utils.weight_norm`` (``weight_g`` / ``weight_v``), this project uses the
parametrized ``torch.nn.utils.parametrizations.weight_norm`` (``parametrizations.weight.original0`` /
``original1``); see :mod:`rvc_optim.train.weight_norm_keys` for converting between the two namings.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from .commons import fused_add_tanh_sigmoid_multiply, get_padding

__all__ = ["LRELU_SLOPE", "LayerNorm", "WN", "ResBlock1", "ResBlock2", "ResidualCouplingLayer", "Flip"]

#: Negative slope of the LeakyReLUs inside the decoder and discriminators.
LRELU_SLOPE = 0.1


class LayerNorm(nn.Module):
    """Layer norm over the channel axis of ``[B, C, T]``, with parameters named ``gamma`` / ``beta``
    (RVC's names; ``nn.LayerNorm`` would call them ``weight`` / ``bias``)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, -1)
        x = F.layer_norm(x, (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class WN(nn.Module):
    """Non-causal WaveNet stack with gated activations and global conditioning (WaveGlow's WN).

    Per layer ``i``: ``h = in_layers[i](x) + cond_layer(g)[:, 2H·i : 2H·(i+1)]``,
    ``acts = tanh(h[:H]) · sigmoid(h[H:])``, ``rs = res_skip_layers[i](acts)``; all layers but the
    last add ``rs[:H]`` to ``x`` (residual) and ``rs[H:]`` to the output (skip), the last adds all of
    ``rs`` to the output. Returns ``skip · mask``. Every convolution is weight-normed.
    """

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WN kernel_size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        for i in range(n_layers):
            dilation = dilation_rate**i
            self.in_layers.append(
                weight_norm(
                    nn.Conv1d(
                        hidden_channels,
                        2 * hidden_channels,
                        kernel_size,
                        dilation=dilation,
                        padding=get_padding(kernel_size, dilation),
                    )
                )
            )
            res_skip_channels = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden_channels, res_skip_channels, 1)))
        if gin_channels:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        h_ch = self.hidden_channels
        output = torch.zeros_like(x)
        g_all = self.cond_layer(g) if g is not None and self.gin_channels else None
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            x_in = in_layer(x)
            if g_all is not None:
                g_l = g_all[:, 2 * h_ch * i : 2 * h_ch * (i + 1)]
            else:
                g_l = torch.zeros_like(x_in)
            acts = self.drop(fused_add_tanh_sigmoid_multiply(x_in, g_l, h_ch))
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h_ch]) * x_mask
                output = output + res_skip[:, h_ch:]
            else:
                output = output + res_skip
        return output * x_mask


class ResBlock1(nn.Module):
    """HiFi-GAN residual block type 1: three (dilated conv, conv) pairs, each a residual branch
    ``x + c2(lrelu(c1(lrelu(x))))``. ``convs1`` have dilations ``dilation``, ``convs2`` dilation 1."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: tuple[int, ...] = (1, 3, 5)) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=get_padding(kernel_size, 1)))
            for _ in dilation
        )

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            xt = c1(xt)
            xt = F.leaky_relu(xt, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            xt = c2(xt)
            x = xt + x
        if x_mask is not None:
            x = x * x_mask
        return x


class ResBlock2(nn.Module):
    """HiFi-GAN residual block type 2: one dilated conv per residual branch ``x + c(lrelu(x))``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: tuple[int, ...] = (1, 3)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation
        )

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        for c in self.convs:
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = c(xt) + x
        if x_mask is not None:
            x = x * x_mask
        return x


class ResidualCouplingLayer(nn.Module):
    """Affine coupling layer of the VITS flow (RVC builds it with ``mean_only=True``).

    Splits channels into halves ``x0, x1``; ``h = WN(pre(x0))``, ``m (, logs) = post(h)``.
    Forward: ``x1 ← m + x1·exp(logs)``; reverse: ``x1 ← (x1 − m)·exp(−logs)`` (``logs = 0`` when
    mean-only). ``post`` starts at zero, so a fresh layer is the identity.

    Difference from RVC: forward returns only ``x``, not ``(x, logdet)``; RVC's flow block
    discards the log-determinant.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        p_dropout: float = 0.0,
        gin_channels: int = 0,
        mean_only: bool = False,
    ) -> None:
        super().__init__()
        if channels % 2 != 0:
            raise ValueError(f"ResidualCouplingLayer needs an even channel count, got {channels}")
        self.half_channels = channels // 2
        self.mean_only = mean_only
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels, p_dropout=p_dropout)
        self.post = nn.Conv1d(hidden_channels, self.half_channels * (2 - mean_only), 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        x0, x1 = torch.split(x, [self.half_channels, self.half_channels], 1)
        h = self.pre(x0) * x_mask
        h = self.enc(h, x_mask, g=g)
        stats = self.post(h) * x_mask
        if self.mean_only:
            m, logs = stats, None
        else:
            m, logs = torch.split(stats, [self.half_channels, self.half_channels], 1)
        if not reverse:
            x1 = m + (x1 if logs is None else x1 * torch.exp(logs)) * x_mask
        else:
            x1 = (x1 - m) * (x_mask if logs is None else torch.exp(-logs) * x_mask)
        return torch.cat([x0, x1], 1)


class Flip(nn.Module):
    """Reverses the channel axis (its own inverse). No parameters."""

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor | None = None, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        return torch.flip(x, [1])
