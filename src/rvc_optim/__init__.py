"""rvc-optim: the 43 optimizers RVC voice models are trained with, exact and fast.

Public API::

    list_optimizers(category=None, min_rating=None) -> list[str]
    optimizer_info(name) -> OptimizerInfo
    get_optimizer_class(name) -> type[torch.optim.Optimizer]
    create_optimizer(name, params, **kwargs) -> torch.optim.Optimizer

and every optimizer class by its registry name (``from rvc_optim import Lion, AdamW``); the ten torch
optimizers are torch's own classes, re-exported.
"""

from __future__ import annotations

from typing import Any

from rvc_optim.catalog import RECORDS
from rvc_optim.records import NotImplementedYet, OptimizerInfo, Paper, Protocol
from rvc_optim.registry import (
    create_optimizer,
    get_optimizer_class,
    list_optimizers,
    optimizer_info,
    param_groups_weight_decay,
)

__version__ = "0.1.0"

_CLASS_NAMES = {record.name: record for record in RECORDS}

__all__ = [
    "NotImplementedYet",
    "OptimizerInfo",
    "Paper",
    "Protocol",
    "create_optimizer",
    "get_optimizer_class",
    "list_optimizers",
    "optimizer_info",
    "param_groups_weight_decay",
    *_CLASS_NAMES,
]


def __getattr__(name: str) -> Any:
    record = _CLASS_NAMES.get(name)
    if record is None:
        raise AttributeError(f"module 'rvc_optim' has no attribute {name!r}")
    return record.cls  # raises NotImplementedYet, with the reason, for a registered but unwritten one


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CLASS_NAMES))
