"""The published Muon implementations, given the same parameter split as ours, for the benchmark.

None of them routes parameters itself: the authors' ``SingleDeviceMuonWithAuxAdam`` and
pytorch_optimizer's ``Muon`` need every group marked ``use_muon``, and ``torch.optim.Muon`` takes 2-D
tensors only, with nothing for the rest. Each builder here splits the (unnamed) benchmark tensors
with :func:`rvc_optim.optim.muon.default_role`, as our row does, and uses the authors' settings.

The published packages are test extras, never runtime dependencies: like the benchmark's other
published rows they are imported by name only when their row is timed.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from rvc_optim.optim.muon import MUON, default_role

__all__ = ["authors_muon", "pytorch_optimizer_muon", "torch_muon"]

MUON_GROUP = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0}
ADAMW_GROUP = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-10, "weight_decay": 0.0}


def _groups(params: Any) -> list[dict[str, Any]]:
    params = list(params)
    muon = [p for p in params if default_role(None, p) == MUON]
    adamw = [p for p in params if default_role(None, p) != MUON]
    groups = [{"params": muon, "use_muon": True, **MUON_GROUP}, {"params": adamw, "use_muon": False, **ADAMW_GROUP}]
    return [g for g in groups if g["params"]]


def authors_muon(params: Any) -> torch.optim.Optimizer:
    """muon-optimizer 0.1.0: a Conv1d kernel runs as ``out`` separate ``in x k`` matrices; 4-D kernels crash."""
    return importlib.import_module("muon").SingleDeviceMuonWithAuxAdam(_groups(params))


def pytorch_optimizer_muon(params: Any) -> torch.optim.Optimizer:
    return importlib.import_module("pytorch_optimizer").Muon(_groups(params))


def torch_muon(params: Any) -> torch.optim.Optimizer:
    """torch.optim.Muon on the Muon half (it raises on any tensor that is not 2-D)."""
    muon = [p for g in _groups(params) if g["use_muon"] for p in g["params"]]
    return torch.optim.Muon(muon, **MUON_GROUP)
