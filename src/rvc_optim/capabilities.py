"""Capabilities read from an optimizer class, never typed in by hand.

The signature tells which generic hyper-parameters a class takes (and how many betas, from the
default); two things a signature cannot show are found by a probe on tiny tensors: whether a step
accepts a sparse gradient, and whether the constructor creates state before the first step.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass

import torch
from torch.optim import Optimizer

__all__ = ["Capabilities", "capabilities_of", "constructor_parameters", "fused_supported_devices"]

GENERIC_HPARAMS = ("lr", "betas", "eps", "weight_decay", "momentum")


@dataclass(frozen=True)
class Capabilities:
    lr: bool
    betas: bool
    num_betas: int
    eps: bool
    weight_decay: bool
    momentum: bool
    fused: bool
    compiled: bool
    sparse_grad: bool
    state_before_step: bool

    def accepts(self, hparam: str) -> bool:
        return bool(getattr(self, hparam))


def constructor_parameters(cls: type[Optimizer]) -> dict[str, inspect.Parameter]:
    """The keyword arguments the constructor takes, ``params`` excluded."""
    sig = inspect.signature(cls.__init__)
    return {
        name: p
        for name, p in sig.parameters.items()
        if name not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _num_betas(default: object) -> int:
    if isinstance(default, (tuple, list)):
        return len(default)
    return 0


def fused_supported_devices() -> tuple[str, ...]:
    """Device types torch's fused optimizer kernels support in this build."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: CUDA only
        return ("cuda",)


def _probe_kwargs(cls: type[Optimizer]) -> dict[str, object]:
    # Probes need the plain path: torch's fused kernels reject sparse gradients by design, and a
    # probe must not compile anything.
    params = constructor_parameters(cls)
    kwargs: dict[str, object] = {}
    if "fused" in params:
        kwargs["fused"] = False
    if "foreach" in params:
        kwargs["foreach"] = False
    if "compiled" in params:
        kwargs["compiled"] = False
    for name in ("num_iterations",):
        if name in params and params[name].default is inspect.Parameter.empty:
            kwargs[name] = 10
    for name in ("num_epochs", "num_batches_per_epoch"):
        if name in params:
            kwargs[name] = 10
    if "lr" in params and params["lr"].default is inspect.Parameter.empty:
        kwargs["lr"] = 1e-3
    return kwargs


def _probe_sparse(cls: type[Optimizer]) -> bool:
    weight = torch.nn.Parameter(torch.ones(4, 2))
    opt = cls([weight], **_probe_kwargs(cls))
    _enter_training(opt)
    weight.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2, 2), (4, 2), check_invariants=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False
    return True


def _probe_state_before_step(cls: type[Optimizer]) -> bool:
    weight = torch.nn.Parameter(torch.ones(3))
    opt = cls([weight], **_probe_kwargs(cls))
    return len(opt.state) > 0


def _enter_training(opt: Optimizer) -> None:
    train = getattr(opt, "train", None)
    if callable(train):
        train()


@functools.lru_cache(maxsize=None)
def capabilities_of(cls: type[Optimizer]) -> Capabilities:
    params = constructor_parameters(cls)
    betas = params.get("betas")
    return Capabilities(
        lr="lr" in params,
        betas=betas is not None,
        num_betas=_num_betas(betas.default) if betas is not None else 0,
        eps="eps" in params,
        weight_decay="weight_decay" in params,
        momentum="momentum" in params,
        fused="fused" in params,
        compiled="compiled" in params,
        sparse_grad=_probe_sparse(cls),
        state_before_step=_probe_state_before_step(cls),
    )
