"""RVC v2 model for the training engine: generator, discriminator and their parts.

Layout follows RVC/VITS (``commons``, ``modules``, ``attentions``, ``models``) so people who know
RVC find their way; module names match RVC's so its checkpoints load unchanged.
"""

from __future__ import annotations

from ..config import ModelConfig
from .models import MultiPeriodDiscriminatorV2, SynthesizerTrnMs768NSFsid

__all__ = ["build_generator", "build_discriminator", "SynthesizerTrnMs768NSFsid", "MultiPeriodDiscriminatorV2"]


def build_generator(cfg: ModelConfig) -> SynthesizerTrnMs768NSFsid:
    """The v2 generator with pitch for ``cfg``, built as RVC's training builds it
    (``segment_size`` = ``cfg.segment_frames``)."""
    return SynthesizerTrnMs768NSFsid(*cfg.generator_args(), feature_dim=cfg.feature_dim)


def build_discriminator(cfg: ModelConfig | None = None) -> MultiPeriodDiscriminatorV2:
    """The v2 multi-period discriminator: RVC's for the 32k/40k/48k configs (and for ``None``);
    narrower by ``cfg.disc_width_divisor`` for the ``tiny`` config."""
    divisor = 1 if cfg is None else cfg.disc_width_divisor
    return MultiPeriodDiscriminatorV2(use_spectral_norm=False, width_divisor=divisor)
