"""Optimizers and LR schedulers for the trainer, built from the registry by name.

Nothing here branches on an optimizer's name: every decision comes from the optimizer's record
(:func:`rvc_optim.optimizer_info`) and its class signature.

* Settings start from the record's ``recommended`` values (RVC's ``lr=1e-4, betas=(0.8, 0.99),
  eps=1e-9`` are AdamW's recommendation, not forced on others); ``--lr``, ``--betas``, ``--eps``
  override them where given, and ``--optim-arg key=value`` adds anything else the class takes.
* ``num_iterations`` (total optimizer steps) is always passed; the registry translates it for
  optimizers that need the run length and ignores it for the rest.
* The generator or discriminator module itself goes to ``create_optimizer``, so optimizers that
  route parameters by name or role (``protocol.param_routing``) get ``(name, tensor)`` pairs, and the
  rest get the registry's decay / no-decay split; :func:`routing_summary` says how they were routed.
* RVC's ``ExponentialLR(gamma=0.999875)`` per epoch is made only where
  ``protocol.wants_lr_scheduler`` (an ordinary step-size lr and no schedule of its own).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import warnings
from typing import Any, Iterable, Mapping

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ExponentialLR

from rvc_optim.capabilities import constructor_parameters
from rvc_optim.driver import ProtocolDriver
from rvc_optim.records import OptimizerInfo
from rvc_optim.registry import RUN_LENGTH_KWARG, create_optimizer, optimizer_info

__all__ = [
    "RVC_LR_DECAY",
    "OptimArgError",
    "parse_value",
    "parse_optim_args",
    "check_optim_args",
    "parse_betas",
    "check_betas",
    "optimizer_settings",
    "build_optimizer",
    "build_scheduler",
    "routing_summary",
]

#: RVC's ``train.lr_decay``: ExponentialLR's gamma, stepped once per epoch.
RVC_LR_DECAY = 0.999875

# Arguments the trainer sets itself; an --optim-arg naming one of them is refused.
_RESERVED = (RUN_LENGTH_KWARG,)


class OptimArgError(ValueError):
    """A bad ``--optim-arg`` (syntax, unknown name, or a name the trainer sets itself)."""


def parse_value(text: str) -> Any:
    """A Python literal (``3``, ``1e-3``, ``True``, ``(0.9, 0.99)``, ``None``, ``'x'``) or else the
    string itself. ``true``/``false``/``none`` in lower case are read as ``True``/``False``/``None``
    (shells and YAML habits), not as strings."""
    stripped = text.strip()
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if stripped.lower() in lowered:
        return lowered[stripped.lower()]
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        return stripped


def parse_optim_args(items: Iterable[str] | None) -> dict[str, Any]:
    """``["warmup_steps=100", "betas=(0.9,0.99)"]`` -> ``{"warmup_steps": 100, "betas": (0.9, 0.99)}``.

    Raises :class:`OptimArgError` for an item without ``=``, an empty name, or a name given twice.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OptimArgError(f"--optim-arg expects key=value, got {item!r}")
        if key in out:
            raise OptimArgError(f"--optim-arg {key} given twice")
        out[key] = parse_value(value)
    return out


def check_optim_args(record: OptimizerInfo, kwargs: Mapping[str, Any], flag: str = "--optim-arg") -> None:
    """Every key in ``kwargs`` must be a constructor parameter of ``record``'s class.

    An unknown key raises :class:`OptimArgError` with the closest names (difflib) and the full list.
    ``num_iterations`` is refused: the trainer passes the run length itself.
    """
    accepted = constructor_parameters(record.cls)
    for key in kwargs:
        if key in _RESERVED:
            raise OptimArgError(
                f"{flag} {key}: the trainer sets {key} itself (from --steps/--epochs); leave it out"
            )
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise OptimArgError(
                f"{flag} {key}: {record.name} has no argument {key!r}.{hint} "
                f"It accepts: {', '.join(accepted)}"
            )
        _check_type(record, key, kwargs[key], accepted[key].default, flag)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_type(record: OptimizerInfo, key: str, value: Any, default: Any, flag: str) -> None:
    """A value of the wrong kind for ``key`` (judged by the record's recommendation or, where it has
    none, the constructor's default) raises :class:`OptimArgError` naming the argument."""
    like = record.recommended.get(key)
    if like is None and default is not inspect.Parameter.empty:
        like = default
    if _is_number(like) and not _is_number(value):
        raise OptimArgError(f"{flag} {key}={value!r}: {record.name}'s {key} takes a number (like {like!r})")
    if isinstance(like, bool) and not isinstance(value, bool):
        raise OptimArgError(f"{flag} {key}={value!r}: {record.name}'s {key} takes True or False")
    if isinstance(like, tuple) and all(_is_number(v) for v in like):
        if not (isinstance(value, (tuple, list)) and len(value) == len(like) and all(_is_number(v) for v in value)):
            raise OptimArgError(
                f"{flag} {key}={value!r}: {record.name}'s {key} takes {len(like)} numbers, like "
                f"{key}={tuple(like)!r}"
            )


def parse_betas(text: str) -> tuple[float, ...]:
    """``--betas 0.8,0.99`` (or ``(0.8, 0.99)``) -> ``(0.8, 0.99)``; anything else is an OptimArgError."""
    value = parse_value(text if "," in text or "(" in text else f"({text},)")
    if not isinstance(value, (tuple, list)) or not value or not all(_is_number(v) for v in value):
        raise OptimArgError(f"--betas {text}: expected numbers separated by a comma, like 0.8,0.99")
    return tuple(float(v) for v in value)


def check_betas(record: OptimizerInfo, betas: tuple[float, ...]) -> None:
    """``--betas`` must have as many values as ``record``'s class takes (and the class must take betas)."""
    param = constructor_parameters(record.cls).get("betas")
    if param is None:
        raise OptimArgError(f"--betas: {record.name} takes no betas")
    like = record.recommended.get("betas") or param.default
    if isinstance(like, (tuple, list)) and len(like) != len(betas):
        shown = ",".join(f"{b:g}" for b in betas)
        raise OptimArgError(
            f"--betas {shown}: {record.name} takes {len(like)} betas, like --betas {','.join(f'{b:g}' for b in like)}"
        )


def optimizer_settings(
    record: OptimizerInfo,
    *,
    lr: float | None = None,
    betas: tuple[float, ...] | None = None,
    eps: float | None = None,
    extra: Mapping[str, Any] | None = None,
    who: str = "optimizer",
) -> dict[str, Any]:
    """The keyword arguments for ``create_optimizer`` beyond the record's recommendation.

    Only what the user gave is returned (the registry fills in the rest from ``recommended``).
    An ``lr`` outside [0.1, 10] for an optimizer whose ``lr_role`` is ``"multiplier"`` gets a
    warning saying what lr means there; an ``lr`` for one that takes none gets a warning too.
    """
    settings: dict[str, Any] = {}
    if lr is not None:
        role = record.protocol.lr_role
        if role == "multiplier" and not 0.1 <= lr <= 10.0:
            warnings.warn(
                f"{who} {record.name}: lr={lr:g} is far from 1. For {record.name}, lr multiplies the "
                f"step size it estimates itself (1.0 = as estimated; the recommendation is "
                f"{record.recommended.get('lr', 1.0)!r}); an AdamW-style lr such as 1e-4 makes it "
                "10,000 times too small.",
                UserWarning,
                stacklevel=2,
            )
        elif role == "none":
            warnings.warn(
                f"{who} {record.name} takes no learning rate; lr={lr:g} is ignored", UserWarning, stacklevel=2
            )
        settings["lr"] = lr
    if betas is not None:
        settings["betas"] = tuple(betas)
    if eps is not None:
        settings["eps"] = eps
    for key, value in (extra or {}).items():
        settings[key] = value
    return settings


def build_optimizer(
    name: str,
    module: nn.Module,
    num_iterations: int,
    *,
    lr: float | None = None,
    betas: tuple[float, ...] | None = None,
    eps: float | None = None,
    extra: Mapping[str, Any] | None = None,
    who: str = "optimizer",
    flag: str = "--optim-arg",
) -> tuple[Optimizer, ProtocolDriver]:
    """``create_optimizer(name, module, num_iterations=..., **settings)`` and its protocol driver.

    ``module`` is the plain module (not a DDP wrapper), so parameter names carry no ``module.``
    prefix. ``extra`` is checked against the class's constructor first (clear error, suggestions).
    """
    record = optimizer_info(name)
    extra = dict(extra or {})
    check_optim_args(record, extra, flag)
    settings = optimizer_settings(record, lr=lr, betas=betas, eps=eps, extra=extra, who=who)
    optimizer = create_optimizer(record.name, module, num_iterations=num_iterations, **settings)
    return optimizer, ProtocolDriver(optimizer, record)


def routing_summary(driver: ProtocolDriver) -> str | None:
    """How an optimizer that routes parameters itself (``protocol.param_routing``) split them, from its
    ``routing_summary()`` (one line: tensors and parameters per role); None for the others."""
    summary = getattr(driver.optimizer, "routing_summary", None)
    if driver.protocol.param_routing is None or not callable(summary):
        return None
    return summary()


def build_scheduler(
    optimizer: Optimizer, driver: ProtocolDriver, gamma: float = RVC_LR_DECAY
) -> ExponentialLR | None:
    """RVC's per-epoch ``ExponentialLR(gamma)`` where the protocol wants an LR scheduler, else None."""
    if not driver.wants_lr_scheduler:
        return None
    return ExponentialLR(optimizer, gamma=gamma)
