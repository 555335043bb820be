"""RVC's training losses against values worked out by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rvc_optim.train.losses import discriminator_loss, feature_loss, generator_loss, kl_loss


def test_discriminator_loss_hand_values() -> None:
    real = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5]])]
    fake = [torch.tensor([[0.0, 2.0]]), torch.tensor([[-1.0]])]
    loss, r_losses, g_losses = discriminator_loss(real, fake)
    # D1: mean((1-1)^2, (1-0)^2) = 0.5; mean(0^2, 2^2) = 2.  D2: (1-0.5)^2 = 0.25; (-1)^2 = 1.
    assert [float(x) for x in r_losses] == [0.5, 0.25]
    assert [float(x) for x in g_losses] == [2.0, 1.0]
    assert float(loss) == pytest.approx(3.75)
    assert loss.dtype == torch.float32


def test_generator_loss_hand_values() -> None:
    fake = [torch.tensor([[0.0, 2.0]]), torch.tensor([[0.5, 0.5, 1.0]])]
    loss, terms = generator_loss(fake)
    # mean(1, 1) = 1; mean(0.25, 0.25, 0) = 1/6
    assert [float(t) for t in terms] == pytest.approx([1.0, 1.0 / 6.0])
    assert float(loss) == pytest.approx(7.0 / 6.0)


def test_feature_loss_hand_values_and_detached_real() -> None:
    fmap_r = [[torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[0.0]], requires_grad=True)]]
    fmap_g = [[torch.tensor([0.0, 4.0], requires_grad=True), torch.tensor([[-3.0]], requires_grad=True)]]
    loss = feature_loss(fmap_r, fmap_g)
    # 2 * (mean(1, 2) + 3) = 2 * 4.5 = 9
    assert loss.item() == pytest.approx(9.0)
    loss.backward()
    assert fmap_r[0][0].grad is None and fmap_r[0][1].grad is None, "real feature maps must be detached (RVC)"
    torch.testing.assert_close(fmap_g[0][0].grad, torch.tensor([-1.0, 1.0]))  # 2 * sign / 2 elements


def test_kl_loss_hand_values_and_mask_counts_frames() -> None:
    # B=1, C=2, T=3; the last frame is masked out.
    z_p = torch.tensor([[[1.0, 0.0, 9.0], [0.0, 2.0, 9.0]]])
    m_p = torch.zeros(1, 2, 3)
    logs_p = torch.tensor([[[0.0, math.log(2.0), 5.0], [0.0, 0.0, 5.0]]])
    logs_q = torch.zeros(1, 2, 3)
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    # kl = logs_p - logs_q - 0.5 + 0.5 (z_p - m_p)^2 exp(-2 logs_p)
    kl = [
        0.0 - 0.5 + 0.5 * 1.0,  # c0 t0
        math.log(2.0) - 0.5 + 0.0,  # c0 t1
        0.0 - 0.5 + 0.0,  # c1 t0
        0.0 - 0.5 + 0.5 * 4.0,  # c1 t1
    ]
    expected = sum(kl) / 2.0  # divided by the 2 valid frames, not 2 frames x 2 channels
    assert float(kl_loss(z_p, logs_q, m_p, logs_p, mask)) == pytest.approx(expected)


def test_losses_compute_in_float32_for_half_inputs() -> None:
    real = [torch.tensor([[300.0]], dtype=torch.float16)]
    fake = [torch.tensor([[-300.0]], dtype=torch.float16)]
    loss, _, _ = discriminator_loss(real, fake)
    # (1 - 300)^2 = 89401 and (-300)^2 = 90000 would overflow float16 (max 65504)
    assert loss.dtype == torch.float32 and float(loss) == 299.0**2 + 300.0**2
    half = torch.ones(1, 2, 3, dtype=torch.float16)
    kl = kl_loss(half, half * 0, half * 0, half * 0, torch.ones(1, 1, 3, dtype=torch.float16))
    assert kl.dtype == torch.float32
    fm = feature_loss([[half]], [[half * 2]])
    assert fm.dtype == torch.float32 and float(fm) == 2.0
