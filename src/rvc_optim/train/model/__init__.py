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
    """The v2 multi-period discriminator. Its shape does not depend on ``cfg`` (accepted for
    symmetry with :func:`build_generator`)."""
    return MultiPeriodDiscriminatorV2(use_spectral_norm=False)
