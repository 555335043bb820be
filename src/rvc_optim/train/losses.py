"""GAN, feature-matching and KL losses of RVC training (RVC's ``infer/lib/train/losses.py``).

Least-squares GAN losses (Mao et al., "Least Squares Generative Adversarial Networks", 2017,
arXiv:1611.04076) summed over the discriminators, HiFi-GAN's feature-matching loss, and VITS's KL
between the flowed posterior sample and the prior. Every input is cast to float32 before the
arithmetic, as RVC does, so the losses are the same under fp16/bf16 autocast.

The mel loss is plain ``F.l1_loss(y_mel, y_hat_mel) * c_mel`` in the training loop.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["discriminator_loss", "generator_loss", "feature_loss", "kl_loss"]


def feature_loss(fmap_r: Sequence[Sequence[torch.Tensor]], fmap_g: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """``2 · Σ_discriminators Σ_layers mean(|fmap_r − fmap_g|)``.

    As in RVC, the real feature maps are detached (no gradient reaches the discriminator through
    them); Applio does not detach them.
    """
    loss = torch.zeros((), dtype=torch.float32, device=_device_of(fmap_g))
    for dr, dg in zip(fmap_r, fmap_g):
        for rl, gl in zip(dr, dg):
            loss = loss + torch.mean(torch.abs(rl.float().detach() - gl.float()))
    return loss * 2


def discriminator_loss(
    disc_real_outputs: Sequence[torch.Tensor], disc_generated_outputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``Σ_k mean((1 − D_k(real))²) + mean(D_k(fake)²)``.

    Returns ``(loss, r_losses, g_losses)``: the total and the per-discriminator real and fake
    terms for logging. RVC returns those terms as Python floats (``.item()``, one device sync
    each); here they are detached 0-d tensors, so nothing syncs until they are logged.
    """
    loss = torch.zeros((), dtype=torch.float32, device=_device_of([disc_real_outputs]))
    r_losses: list[torch.Tensor] = []
    g_losses: list[torch.Tensor] = []
    for dr, dg in zip(disc_real_outputs, disc_generated_outputs):
        r_loss = torch.mean((1 - dr.float()) ** 2)
        g_loss = torch.mean(dg.float() ** 2)
        loss = loss + r_loss + g_loss
        r_losses.append(r_loss.detach())
        g_losses.append(g_loss.detach())
    return loss, r_losses, g_losses


def generator_loss(disc_outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``Σ_k mean((1 − D_k(fake))²)``. Returns ``(loss, per-discriminator terms)``."""
    loss = torch.zeros((), dtype=torch.float32, device=_device_of([disc_outputs]))
    gen_losses: list[torch.Tensor] = []
    for dg in disc_outputs:
        term = torch.mean((1 - dg.float()) ** 2)
        gen_losses.append(term)
        loss = loss + term
    return loss, gen_losses


def kl_loss(
    z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor, z_mask: torch.Tensor
) -> torch.Tensor:
    """KL of the posterior sample ``z_p`` (after the flow) under the prior ``N(m_p, exp(logs_p)²)``.

    ``kl = logs_p − logs_q − 0.5 + 0.5·(z_p − m_p)²·exp(−2·logs_p)``, a one-sample estimate;
    ``loss = Σ(kl · z_mask) / Σ(z_mask)``. ``z_mask`` is ``[B, 1, T]``, so the divisor counts
    valid frames, not frames × channels (as in VITS/RVC). All tensors are ``[B, C, T]``.
    """
    z_p = z_p.float()
    logs_q = logs_q.float()
    m_p = m_p.float()
    logs_p = logs_p.float()
    z_mask = z_mask.float()
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


def _device_of(nested: Sequence[Sequence[torch.Tensor]]) -> torch.device:
    for group in nested:
        for t in group:
            return t.device
    return torch.device("cpu")
