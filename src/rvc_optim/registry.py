"""The registry: look optimizers up by name and build them with sensible, capability-aware settings.

Names match case-insensitively, ignoring ``-``, ``_`` and spaces; each record's aliases resolve too.
:func:`create_optimizer` starts from the record's recommended settings, passes the generic
hyper-parameters (``lr``, ``betas``, ``eps``, ``weight_decay``, ``momentum``) only to classes that
take them (saying once, through :mod:`warnings`, what it dropped and why), rejects any other unknown
argument with a ``TypeError`` naming the accepted ones, splits an ``nn.Module`` into decay and
no-decay groups, and turns on torch's fused kernels where every parameter supports them.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from rvc_optim.capabilities import GENERIC_HPARAMS, capabilities_of, constructor_parameters, fused_supported_devices
from rvc_optim.catalog import RECORDS
from rvc_optim.records import OptimizerInfo

__all__ = [
    "create_optimizer",
    "get_optimizer_class",
    "list_optimizers",
    "normalize_name",
    "optimizer_info",
    "param_groups_weight_decay",
    "register",
    "resolve_name",
    "unregister",
]

# Parameter names that never get weight decay, whatever their shape.
NO_DECAY_SUFFIXES = ("bias", "gamma", "beta", "weight_g", "original0")
# create_optimizer arguments that are protocol, not class arguments.
RUN_LENGTH_KWARG = "num_iterations"


def normalize_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def _build_index() -> dict[str, OptimizerInfo]:
    index: dict[str, OptimizerInfo] = {}
    for record in RECORDS:
        for key in (record.name, *record.aliases):
            norm = normalize_name(key)
            if norm in index and index[norm] is not record:
                raise RuntimeError(f"registry: {key!r} names both {index[norm].name} and {record.name}")
            index[norm] = record
    return index


_INDEX = _build_index()
_BY_NAME = {record.name: record for record in RECORDS}
_REGISTERED: list[OptimizerInfo] = []  # records added at run time, after the catalog's 43


def register(record: OptimizerInfo) -> None:
    """Add an optimizer of your own (a plugin, or a stand-in in a test) to the registry.

    Its name and aliases must not resolve to a registered optimizer already. It is listed after the
    catalog's records and works with every function here and with the training engine.
    """
    keys = [normalize_name(k) for k in (record.name, *record.aliases)]
    for key in keys:
        if key in _INDEX:
            raise ValueError(f"{key!r} is already registered as {_INDEX[key].name}")
    for key in keys:
        _INDEX[key] = record
    _BY_NAME[record.name] = record
    _REGISTERED.append(record)


def unregister(name: str) -> None:
    """Remove a record added with :func:`register` (the catalog's own cannot be removed)."""
    record = optimizer_info(name)
    if record not in _REGISTERED:
        raise ValueError(f"{record.name} is part of the catalog and cannot be unregistered")
    _REGISTERED.remove(record)
    del _BY_NAME[record.name]
    for key in [k for k, v in _INDEX.items() if v is record]:
        del _INDEX[key]


def resolve_name(name: str) -> str:
    """The registry name for ``name`` (any case, ``-``/``_``/spaces ignored, aliases allowed)."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a string, got {type(name).__name__}")
    record = _INDEX.get(normalize_name(name))
    if record is None:
        close = difflib.get_close_matches(normalize_name(name), list(_INDEX), n=5, cutoff=0.6)
        suggestions = list(dict.fromkeys(_INDEX[c].name for c in close))
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else "; `rvc-optim list` shows all 43"
        raise ValueError(f"unknown optimizer {name!r}{hint}")
    return record.name


def optimizer_info(name: str) -> OptimizerInfo:
    return _BY_NAME[resolve_name(name)]


def get_optimizer_class(name: str) -> type[Optimizer]:
    return optimizer_info(name).cls


def list_optimizers(
    category: str | None = None, min_rating: float | None = None, available_only: bool = False
) -> list[str]:
    """Registry names in the guide's order, optionally filtered (an unknown category is an error)."""
    if category is not None:
        categories = {normalize_name(r.category): r.category for r in (*RECORDS, *_REGISTERED)}
        if normalize_name(category) not in categories:
            close = difflib.get_close_matches(normalize_name(category), list(categories), n=3, cutoff=0.5)
            known = ", ".join(sorted(set(categories.values())))
            hint = f"did you mean {', '.join(categories[c] for c in close)}? " if close else ""
            raise ValueError(f"unknown category {category!r}; {hint}categories: {known}")
    if min_rating is not None and not 0.0 <= min_rating <= 5.0:
        raise ValueError(f"min_rating must be between 0 and 5, got {min_rating}")
    out = []
    for record in (*RECORDS, *_REGISTERED):
        if category is not None and normalize_name(record.category) != normalize_name(category):
            continue
        if min_rating is not None and record.rating < min_rating:
            continue
        if available_only and not record.available:
            continue
        out.append(record.name)
    return out


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.numel() == (param.shape[0] if param.dim() else 1) or name.endswith(NO_DECAY_SUFFIXES)


def param_groups_weight_decay(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split a module's trainable parameters into a decayed group and a no-decay group.

    No decay for tensors whose element count equals their first dimension (biases, norm gains,
    weight-norm magnitudes of shape [C, 1, 1]) and for names ending in ``bias``, ``gamma``,
    ``beta``, ``weight_g`` or ``original0``. Empty groups are left out.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _has_sparse_embedding(module: nn.Module | None) -> bool:
    return module is not None and any(
        isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for m in module.modules()
    )


def _fused_ok(tensors: list[torch.Tensor]) -> bool:
    devices = fused_supported_devices()
    floating = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return bool(tensors) and all(t.device.type in devices and t.dtype in floating for t in tensors)


def _flatten_params(param_groups: list[dict[str, Any]]) -> list[torch.Tensor]:
    return [p for g in param_groups for p in g["params"]]


def _as_param_groups(params: Any) -> list[dict[str, Any]]:
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors, of param-group dicts, or an nn.Module, not a tensor")
    items = list(params)
    if not items:
        raise ValueError("params is empty: the optimizer has nothing to optimize")
    if all(isinstance(x, dict) for x in items):
        return [dict(g, params=list(g["params"])) for g in items]
    if all(isinstance(x, torch.Tensor) for x in items):
        return [{"params": items}]
    raise TypeError("params must be an iterable of tensors or of param-group dicts, not a mix")


def create_optimizer(name: str, params: Any, **kwargs: Any) -> Optimizer:
    """Build the optimizer ``name`` over ``params`` (tensors, param-group dicts, or an ``nn.Module``).

    Settings are the record's ``recommended`` values overridden by ``kwargs``. A module goes to a class
    whose protocol routes parameters by name (``param_routing.wants_names``) as ``(name, tensor)`` pairs,
    to the others as decay / no-decay groups. Generic
    hyper-parameters the class does not take are dropped with one warning; other unknown arguments
    raise ``TypeError``. ``num_iterations`` (the run length) is translated for optimizers whose
    protocol needs it and ignored by the rest. For AdamW, Adam, SGD and Adagrad torch's fused kernel
    is used when every parameter supports it and no embedding is sparse (``fused=False`` opts out).
    """
    record = optimizer_info(name)
    cls = record.cls
    caps = capabilities_of(cls)
    accepted = constructor_parameters(cls)
    user_keys = set(kwargs)
    settings: dict[str, Any] = {**record.recommended, **kwargs}

    num_iterations = settings.pop(RUN_LENGTH_KWARG, None)
    run_length = record.protocol.run_length
    if run_length is not None:
        given = [k for k in run_length.kwarg_names if settings.get(k) is not None]
        if num_iterations is not None and not given:
            if not isinstance(num_iterations, int) or num_iterations <= 0:
                raise ValueError(f"num_iterations must be a positive int, got {num_iterations!r}")
            settings.update(run_length.kwargs_for(num_iterations))
        elif not given:
            raise ValueError(
                f"{record.name} needs the run length up front: pass num_iterations=<total optimizer steps> "
                f"(or {' and '.join(run_length.kwarg_names)})"
            )

    dropped: list[str] = []
    for key in GENERIC_HPARAMS:
        if key not in settings:
            continue
        if not caps.accepts(key):
            if key in user_keys:
                dropped.append(f"{key} ({record.name} takes no {key})")
            settings.pop(key)
        elif key == "betas":
            betas = settings["betas"]
            if not isinstance(betas, (tuple, list)) or len(betas) != caps.num_betas:
                if key in user_keys:
                    dropped.append(f"betas={tuple(betas) if isinstance(betas, (tuple, list)) else betas!r} "
                                   f"({record.name} takes {caps.num_betas} betas; using "
                                   f"{_default_or_recommended(record, accepted, 'betas')})")
                settings.pop("betas")
                rec = record.recommended.get("betas")
                if rec is not None and len(rec) == caps.num_betas:
                    settings["betas"] = rec
        elif key == "eps" and _eps_pair_expected(accepted) and _valid_scalar_eps(settings["eps"]):
            # A class whose eps is a pair (AdaFactor, CAME: a floor on g^2 and another on RMS(p) or the
            # residual) has no use for Adam's scalar eps; a negative one still reaches it and is rejected.
            if key in user_keys:
                dropped.append(f"eps={settings['eps']!r} ({record.name} takes an eps pair; using "
                               f"{_default_or_recommended(record, accepted, 'eps')})")
            settings.pop("eps")
    if dropped:
        warnings.warn(f"create_optimizer({record.name!r}): dropped {'; '.join(dropped)}", UserWarning, stacklevel=2)

    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise TypeError(
            f"{record.name} does not accept {', '.join(unknown)}; it accepts: {', '.join(accepted)}"
            + (f" (and {RUN_LENGTH_KWARG})" if run_length else "")
        )

    module = params if isinstance(params, nn.Module) else None
    routing = record.protocol.param_routing
    if module is not None and routing is not None and routing.wants_names:
        # The class routes tensors by name itself: (name, tensor) pairs, no decay split.
        param_groups = [{"params": [(n, p) for n, p in module.named_parameters() if p.requires_grad]}]
        if not param_groups[0]["params"]:
            raise ValueError("the module has no trainable parameters")
    elif module is not None:
        wd = settings.get("weight_decay", 0.0) if caps.weight_decay else 0.0
        param_groups = param_groups_weight_decay(module, wd) if caps.weight_decay else [
            {"params": [p for p in module.parameters() if p.requires_grad]}
        ]
        if not param_groups:
            raise ValueError("the module has no trainable parameters")
    else:
        param_groups = _as_param_groups(params)

    if caps.fused and "fused" not in kwargs:
        flat = _flatten_params(param_groups)
        if _fused_ok(flat) and not _has_sparse_embedding(module) and not any(p.is_sparse for p in flat):
            settings["fused"] = True
    return cls(param_groups, **settings)


def _default_or_recommended(record: OptimizerInfo, accepted: dict[str, inspect.Parameter], key: str) -> str:
    rec = record.recommended.get(key)
    if rec is not None:
        return f"the recommended {tuple(rec)}"
    default = accepted[key].default
    return f"the default {default}"


def _eps_pair_expected(accepted: dict[str, inspect.Parameter]) -> bool:
    return isinstance(accepted["eps"].default, (tuple, list))


def _valid_scalar_eps(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
