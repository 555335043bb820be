"""The parity harness: run our optimizer and its reference side by side and compare everything.

Both sides train their own copy of the same float64 model (Linear, Conv1d, ConvTranspose1d, a
weight-normed Conv1d and an Embedding, with a zero-initialised bias) on the same batches, so each
side computes its own gradients: several references write into ``p.grad``, and nothing is shared.
After every step the parameters are compared; at the end (and every ``state_every`` steps) the
optimizer state is compared through a key mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

DTYPE = torch.float64


class ParityNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.wn_conv = weight_norm(nn.Conv1d(8, 8, 3, padding=1))
        self.up = nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.bias.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens).transpose(1, 2)
        x = torch.tanh(self.conv(x))
        x = torch.tanh(self.wn_conv(x))
        x = torch.tanh(self.up(x))
        return self.head(x.transpose(1, 2))


def make_model(seed: int = 0) -> ParityNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ParityNet().to(DTYPE)


def batches(steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        tokens = torch.randint(0, 10, (4, 7), generator=gen)
        target = torch.randn(4, 14, 2, generator=gen, dtype=DTYPE)
        out.append((tokens, target))
    return out


def two_groups(model: nn.Module, options: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Weights (matrices and kernels) in group 0, everything else (biases, gains, 1-D) in group 1."""
    first = [p for n, p in model.named_parameters() if p.dim() > 1 and "original0" not in n]
    second = [p for n, p in model.named_parameters() if not (p.dim() > 1 and "original0" not in n)]
    return [{"params": first, **options[0]}, {"params": second, **options[1]}]


def state_value(mine: Mapping[str, Any], our_key: str, ref_key: str,
                derived_state: Mapping[str, Callable[[Mapping[str, Any]], torch.Tensor]] | None, what: str) -> Any:
    """Our state for the reference's ``ref_key``: kept under ``our_key``, or else derived from what is kept."""
    if our_key not in mine and derived_state and ref_key in derived_state:
        return derived_state[ref_key](mine)
    assert our_key in mine, f"{what} lacks state {our_key!r} (reference {ref_key!r})"
    return mine[our_key]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float, atol: float) -> None:
    ours, ref = ours.detach(), ref.detach()
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    if not torch.allclose(ours.to(ref.dtype), ref, rtol=rtol, atol=atol, equal_nan=False):
        diff = (ours.to(ref.dtype) - ref).abs()
        rel = (diff / ref.abs().clamp_min(1e-300)).max().item()
        raise AssertionError(f"{what}: max abs diff {diff.max().item():.3g}, max rel diff {rel:.3g} (rtol {rtol})")


def run_parity(
    make_ours: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
    make_reference: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
    group_options: Sequence[Mapping[str, Any]],
    state_keys: Mapping[str, str] | None = None,
    steps: int = 200,
    rtol: float = 1e-9,
    atol: float = 0.0,
    state_rtol: float | None = None,
    state_atol: float | None = None,
    before_step: Callable[[torch.optim.Optimizer, torch.optim.Optimizer], None] | None = None,
    state_every: int = 50,
    loss_scale: float = 1.0,
    derived_state: Mapping[str, Callable[[dict[str, Any]], torch.Tensor]] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, nn.Module, nn.Module]:
    """Step both for ``steps`` steps; compare parameters every step and state every ``state_every``.

    ``state_keys`` maps our per-parameter state keys to the reference's; keys not listed are not
    compared. ``derived_state`` maps a reference key that ours may leave out (a statistic that follows
    from what it keeps) to its value computed from our state. Returns both optimizers and models for
    further checks (train/eval round trips).
    """
    ours_model, ref_model = make_model(), make_model()
    ours = make_ours(two_groups(ours_model, group_options))
    ref = make_reference(two_groups(ref_model, group_options))
    names = [n for n, _ in ours_model.named_parameters()]
    for step, (tokens, target) in enumerate(batches(steps), start=1):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            loss = loss_scale * torch.mean((model(tokens) - target) ** 2)
            loss.backward()
        if before_step is not None:
            before_step(ours, ref)
        ours.step()
        ref.step()
        for name, p, q in zip(names, ours_model.parameters(), ref_model.parameters()):
            assert_close(p, q, f"step {step}: parameter {name}", rtol, atol)
        if state_keys and (step % state_every == 0 or step == steps):
            compare_state(ours, ref, ours_model, ref_model, state_keys, f"step {step}",
                          state_rtol if state_rtol is not None else rtol,
                          state_atol if state_atol is not None else atol, derived_state)
    return ours, ref, ours_model, ref_model


def compare_state(ours, ref, ours_model, ref_model, state_keys, when, rtol, atol, derived_state=None) -> None:
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        mine, theirs = ours.state.get(p, {}), ref.state.get(q, {})
        for our_key, ref_key in state_keys.items():
            if ref_key not in theirs:
                assert our_key not in mine or mine[our_key] is None, f"{when}: {name} has {our_key}, reference has none"
                continue
            a, b = state_value(mine, our_key, ref_key, derived_state, f"{when}: {name}"), theirs[ref_key]
            a = a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=DTYPE)
            b = b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=DTYPE)
            assert_close(a.to(DTYPE), b.to(DTYPE), f"{when}: state {our_key} of {name}", rtol, atol)
