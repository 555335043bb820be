"""Small tensor helpers shared by the RVC model (RVC's ``infer/lib/infer_pack/commons.py``).

Differences from RVC: :func:`slice_segments` gathers all batch items in one indexed read instead of
a Python loop (same result; it works for ``[B, T]`` and ``[B, C, T]``), and
:func:`rand_slice_segments` draws its random numbers on the tensor's device.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "get_padding",
    "init_weights",
    "sequence_mask",
    "slice_segments",
    "slice_segments2",
    "rand_slice_segments",
    "fused_add_tanh_sigmoid_multiply",
]


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the length of a stride-1 convolution: ``(k·d − d) / 2``."""
    return (kernel_size * dilation - dilation) // 2


def init_weights(module: nn.Module, mean: float = 0.0, std: float = 0.01) -> None:
    """VITS/RVC's ``init_weights``: ``weight ~ N(mean, std)`` on convolution modules.

    RVC applies it *after* weight norm, where it only rewrites the derived weight and so has no
    lasting effect; this project therefore does not call it on weight-normed layers. It is kept for
    plain convolutions and for callers that want it.
    """
    if "Conv" in type(module).__name__ and not hasattr(module, "parametrizations"):
        module.weight.data.normal_(mean, std)


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean ``[B, max_length]`` mask, True where ``t < lengths[b]``."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def slice_segments(x: torch.Tensor, ids_str: torch.Tensor, segment_size: int = 4) -> torch.Tensor:
    """``out[b, ..., :] = x[b, ..., ids_str[b] : ids_str[b] + segment_size]`` along the last axis.

    ``x`` is ``[B, T]`` or ``[B, C, T]``. Every window must lie inside ``x`` (``ids_str + segment_size
    <= T``); RVC fails on a shape mismatch in that case, here indexing fails.
    """
    offsets = torch.arange(segment_size, device=x.device)
    index = ids_str.to(device=x.device, dtype=torch.long).unsqueeze(-1) + offsets  # [B, S]
    if x.dim() == 2:
        return torch.gather(x, 1, index)
    if x.dim() == 3:
        return torch.gather(x, 2, index.unsqueeze(1).expand(-1, x.size(1), -1))
    raise ValueError(f"slice_segments expects [B, T] or [B, C, T], got shape {tuple(x.shape)}")


def slice_segments2(x: torch.Tensor, ids_str: torch.Tensor, segment_size: int = 4) -> torch.Tensor:
    """RVC's name for the ``[B, T]`` case of :func:`slice_segments` (used for the frame-level f0)."""
    if x.dim() != 2:
        raise ValueError(f"slice_segments2 expects [B, T], got shape {tuple(x.shape)}")
    return slice_segments(x, ids_str, segment_size)


def rand_slice_segments(
    x: torch.Tensor, x_lengths: torch.Tensor | int | None = None, segment_size: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random window of ``segment_size`` frames per batch item of ``x [B, C, T]``.

    Start ``ids = floor(U[0, 1) · (x_lengths − segment_size + 1))``, so a window never runs past an
    item's length. Items shorter than ``segment_size`` are not supported (as in RVC). Returns
    ``(slices [B, C, segment_size], ids [B] long)``.
    """
    b, _, t = x.size()
    if x_lengths is None:
        x_lengths = t
    ids_str_max = x_lengths - segment_size + 1
    if isinstance(ids_str_max, torch.Tensor):
        ids_str_max = ids_str_max.to(x.device)
    ids_str = (torch.rand(b, device=x.device) * ids_str_max).to(dtype=torch.long)
    return slice_segments(x, ids_str, segment_size), ids_str


def fused_add_tanh_sigmoid_multiply(input_a: torch.Tensor, input_b: torch.Tensor, n_channels: int) -> torch.Tensor:
    """WaveNet gate: ``tanh(h[:, :n]) · sigmoid(h[:, n:])`` with ``h = input_a + input_b``."""
    h = input_a + input_b
    return torch.tanh(h[:, :n_channels]) * torch.sigmoid(h[:, n_channels:])
