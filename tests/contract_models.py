"""The small model and regression task the contract suite trains every optimizer on.

It has the layer kinds an RVC model has: an Embedding, a weight-normed Conv1d (magnitude of shape
[C, 1, 1]), a ConvTranspose1d and a Linear head. The target is a fixed teacher of the same shape, so
the task is realisable and the loss can fall far.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class ContractNet(nn.Module):
    def __init__(self, sparse_embedding: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8, sparse=sparse_embedding)
        self.conv = weight_norm(nn.Conv1d(8, 8, 3, padding=1))
        self.up = nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)
        self.head = nn.Linear(4, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens).transpose(1, 2)
        x = torch.tanh(self.conv(x))
        x = torch.tanh(self.up(x))
        return self.head(x.transpose(1, 2)).squeeze(-1)


def make_task(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[ContractNet, torch.Tensor, torch.Tensor]:
    """A student, fixed inputs and the teacher's targets (all from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 12, (16, 10), generator=gen)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        teacher = ContractNet()
        torch.manual_seed(seed + 2)
        student = ContractNet()
    with torch.no_grad():
        target = teacher(tokens) * 2.0
    return student.to(dtype), tokens, target.to(dtype)


def loss_fn(model: nn.Module, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((model(tokens) - target) ** 2)
