"""The small inference model RVC front ends load (RVC's ``savee``): ``assets/weights/<name>.pth``.

Layout::

    {"weight":  {k: v.half() for every generator key without "enc_q"}   (legacy weight-norm names),
     "config":  ModelConfig.export_list()   (positional constructor arguments, slot 1 = 32),
     "info":    "<epoch>epoch",
     "sr":      "40k"                       (f"{sample_rate // 1000}k"),
     "f0":      1,
     "version": "v2"}

RVC's loader builds ``SynthesizerTrnMs768NSFsid(*config, is_half=...)`` (after setting slot -3 to
``weight["emb_g.weight"].shape[0]``), deletes ``enc_q`` and loads ``weight`` with ``strict=False``;
:func:`load_exported` does the same with this project's model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rvc_optim.train.checkpoint import atomic_save
from rvc_optim.train.config import ModelConfig
from rvc_optim.train.model import SynthesizerTrnMs768NSFsid
from rvc_optim.train.weight_norm_keys import load_rvc_state_dict, to_legacy_state_dict

__all__ = ["small_model", "export_small_model", "load_exported"]


def small_model(generator: nn.Module, cfg: ModelConfig, epoch: int) -> dict[str, Any]:
    """The small-model dict for ``generator`` (its current weights; pass the evaluation weights)."""
    weight = {
        k: v.detach().to("cpu", torch.float16).clone()
        for k, v in to_legacy_state_dict(generator.state_dict()).items()
        if "enc_q" not in k
    }
    return {
        "weight": weight,
        "config": cfg.export_list(),
        "info": f"{int(epoch)}epoch",
        "sr": f"{cfg.sample_rate // 1000}k",
        "f0": 1,
        "version": "v2",
    }


def export_small_model(
    generator: nn.Module, cfg: ModelConfig, path: str | os.PathLike[str], epoch: int
) -> Path:
    """Write :func:`small_model` to ``path`` atomically; returns the path."""
    return atomic_save(small_model(generator, cfg, epoch), path)


def load_exported(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> SynthesizerTrnMs768NSFsid:
    """Load a small model the way RVC's inference does; returns the generator without ``enc_q``.

    ``config`` slot -3 (speaker count) is taken from ``emb_g.weight``, ``enc_q`` is deleted, the
    weights load with ``strict=False`` and anything else missing or unexpected is an error.
    """
    cpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    if cpt.get("version", "v1") != "v2" or int(cpt.get("f0", 1)) != 1:
        raise ValueError(f"{path}: only v2 models with f0 are supported, got version={cpt.get('version')!r} f0={cpt.get('f0')!r}")
    config = list(cpt["config"])
    config[-3] = cpt["weight"]["emb_g.weight"].shape[0]
    net_g = SynthesizerTrnMs768NSFsid(*config, is_half=False)
    del net_g.enc_q
    missing, unexpected = load_rvc_state_dict(net_g, cpt["weight"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return net_g.to(dtype).eval()
