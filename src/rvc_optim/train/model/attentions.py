"""The text (content-feature) encoder's transformer (RVC's ``infer/lib/infer_pack/attentions.py``).

A post-LayerNorm transformer encoder whose self-attention adds learned *relative-position*
embeddings (Shaw et al., "Self-Attention with Relative Position Representations", 2018,
arXiv:1803.02155) for offsets within ``±window_size`` frames, shared across heads, and whose
feed-forward block uses convolutions with "same" padding.

Differences from RVC: the unused options of RVC's attention (``block_length``, ``proximal_bias``,
``proximal_init``, cross-attention caching) and the causal FFN are left out.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .modules import LayerNorm

__all__ = ["Encoder", "MultiHeadAttention", "FFN"]


class Encoder(nn.Module):
    """``n_layers`` × (relative-position self-attention → add & LayerNorm → FFN → add & LayerNorm)."""

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int = 1,
        p_dropout: float = 0.0,
        window_size: int = 10,
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(
                MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout=p_dropout, window_size=window_size)
            )
            self.norm_layers_1.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout=p_dropout))
            self.norm_layers_2.append(LayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        """``x [B, H, T]``, ``x_mask [B, 1, T]`` → ``[B, H, T]`` (zero where masked)."""
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * x_mask
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            y = self.drop(attn(x, x, attn_mask))
            x = norm1(x + y)
            y = self.drop(ffn(x, x_mask))
            x = norm2(x + y)
        return x * x_mask


class MultiHeadAttention(nn.Module):
    """Multi-head attention with relative-position keys and values (window ``±window_size``).

    ``scores[i, j] = q_i·k_j / √d + q_i·rel_k[j − i] / √d`` (masked with −1e4), ``p = softmax``,
    ``out_i = Σ_j p[i, j] (v_j + rel_v[j − i])``; offsets beyond the window get zero embeddings.
    With ``heads_share`` one embedding table (leading dim 1) serves all heads.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        n_heads: int,
        p_dropout: float = 0.0,
        window_size: int | None = None,
        heads_share: bool = True,
    ) -> None:
        super().__init__()
        if channels % n_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        if window_size is not None:
            n_heads_rel = 1 if heads_share else n_heads
            rel_stddev = self.k_channels**-0.5
            self.emb_rel_k = nn.Parameter(torch.randn(n_heads_rel, 2 * window_size + 1, self.k_channels) * rel_stddev)
            self.emb_rel_v = nn.Parameter(torch.randn(n_heads_rel, 2 * window_size + 1, self.k_channels) * rel_stddev)
        nn.init.xavier_uniform_(self.conv_q.weight)
        nn.init.xavier_uniform_(self.conv_k.weight)
        nn.init.xavier_uniform_(self.conv_v.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries from ``x [B, C, T_t]``, keys/values from ``c [B, C, T_s]`` → ``[B, out, T_t]``."""
        q = self.conv_q(x)
        k = self.conv_k(c)
        v = self.conv_v(c)
        return self.conv_o(self._attention(q, k, v, attn_mask))

    def _attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, d, t_s = key.shape
        t_t = query.size(2)
        # [B, C, T] -> [B, heads, T, k_channels]
        query = query.view(b, self.n_heads, self.k_channels, t_t).transpose(2, 3)
        key = key.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)
        value = value.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)

        query = query / math.sqrt(self.k_channels)
        scores = torch.matmul(query, key.transpose(-2, -1))
        if self.window_size is not None:
            if t_s != t_t:
                raise ValueError("relative attention is only defined for self-attention (t_s == t_t)")
            rel_k = self._relative_embeddings(self.emb_rel_k, t_s)  # [1, 2T-1, d]
            rel_logits = torch.matmul(query, rel_k.unsqueeze(0).transpose(-2, -1))  # [B, h, T, 2T-1]
            scores = scores + _relative_to_absolute(rel_logits)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e4)
        p_attn = self.drop(F.softmax(scores, dim=-1))
        output = torch.matmul(p_attn, value)
        if self.window_size is not None:
            rel_v = self._relative_embeddings(self.emb_rel_v, t_s)
            output = output + torch.matmul(_absolute_to_relative(p_attn), rel_v.unsqueeze(0))
        return output.transpose(2, 3).contiguous().view(b, d, t_t)

    def _relative_embeddings(self, table: torch.Tensor, length: int) -> torch.Tensor:
        """Rows of ``table`` for offsets ``−(length−1) … length−1``: ``[heads, 2·length − 1, d]``.

        Offsets outside ``±window_size`` get zero rows (padding); a short sequence takes the middle.
        """
        assert self.window_size is not None
        w = self.window_size
        pad = max(length - (w + 1), 0)
        start = max((w + 1) - length, 0)
        if pad > 0:
            table = F.pad(table, [0, 0, pad, pad, 0, 0])
        return table[:, start : start + 2 * length - 1]


def _relative_to_absolute(x: torch.Tensor) -> torch.Tensor:
    """``[B, h, L, 2L−1]`` indexed by (query i, offset r = j − i + L − 1) → ``[B, h, L, L]`` by (i, j).

    Pad one column, flatten the rows, pad ``L − 1``, and re-read as ``L + 1`` rows of ``2L − 1``:
    each row then starts one element later, which shifts row ``i`` by ``i`` (the usual "skewing"
    trick, no gather needed).
    """
    b, h, length, _ = x.shape
    x = F.pad(x, [0, 1])
    x = x.view(b, h, 2 * length * length)
    x = F.pad(x, [0, length - 1])
    return x.view(b, h, length + 1, 2 * length - 1)[:, :, :length, length - 1 :]


def _absolute_to_relative(x: torch.Tensor) -> torch.Tensor:
    """``[B, h, L, L]`` indexed by (i, j) → ``[B, h, L, 2L−1]`` by (i, r = j − i + L − 1); the inverse
    skew of :func:`_relative_to_absolute` (offsets with no key position are zero)."""
    b, h, length, _ = x.shape
    x = F.pad(x, [0, length - 1])
    x = x.view(b, h, length * (2 * length - 1))
    x = F.pad(x, [length, 0])
    return x.view(b, h, length, 2 * length)[:, :, :, 1:]


class FFN(nn.Module):
    """Two convolutions with a ReLU between, "same" padding (left ``(k−1)//2``, right ``k//2``) on the
    masked input of each; the output is masked."""

    def __init__(
        self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 1:
            return x
        return F.pad(x, [(self.kernel_size - 1) // 2, self.kernel_size // 2])

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = self.conv_1(self._pad(x * x_mask))
        x = self.drop(torch.relu(x))
        x = self.conv_2(self._pad(x * x_mask))
        return x * x_mask
