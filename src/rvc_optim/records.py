"""The record types of the registry: what the library knows about each optimizer.

A record is data. Everything a trainer needs to drive an optimizer correctly (how its learning rate
is meant, whether it owns its schedule, whether it needs ``train()``/``eval()`` calls, the run length,
curvature refreshes, parameter routing) is written in its :class:`Protocol`, so that no trainer ever
branches on an optimizer's name. What can be read from the class itself (which generic
hyper-parameters it takes, fused kernels, sparse gradients, state created before the first step) is
read from it in :mod:`rvc_optim.capabilities`, never typed in by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import importlib.util
import math
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from torch.optim import Optimizer

__all__ = [
    "CurvatureRefresh",
    "MeasuredRating",
    "NotImplementedYet",
    "OptimizerInfo",
    "Paper",
    "ParamRouting",
    "Protocol",
    "RunLength",
    "attach_measured_ratings",
    "memory_floor",
    "read_measured_ratings",
]

LrRole = Literal["step", "multiplier", "none"]
Source = Literal["torch", "rvc_optim"]


class NotImplementedYet(NotImplementedError):
    """Raised when a registered optimizer has a record but no implementation yet."""


def memory_floor(state_rw: float, state_ro: float = 0.0, reduction: bool = False) -> float:
    """The fp32 bytes one update must move per parameter (the benchmark's floor).

    4 to read and 4 to write the parameter, 4 to read the gradient, 8 for each per-parameter state
    tensor the update reads and writes (``state_rw`` of them), 4 for each it only reads (``state_ro``);
    an algorithm that must finish a global or per-tensor reduction (a norm, a dot product, a trust ratio)
    before it can update reads everything it reads once more (``reduction``). State that does not grow
    with the parameter count (factored or per-dimension statistics, scalars) counts as 0.
    """
    read = 8.0 + 4.0 * (state_rw + state_ro)
    moved = 12.0 + 8.0 * state_rw + 4.0 * state_ro
    return moved + (read if reduction else 0.0)


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Paper:
    """Where the algorithm was published. ``arxiv`` is empty for papers without an arXiv id."""

    title: str
    authors: str
    year: int
    arxiv: str = ""
    venue: str = ""

    def citation(self) -> str:
        where = f"arXiv:{self.arxiv}" if self.arxiv else self.venue
        return f'"{self.title}", {self.authors}, {self.year}' + (f", {where}" if where else "")


@dataclass(frozen=True)
class RunLength:
    """The optimizer needs the total number of steps up front.

    ``create_optimizer(..., num_iterations=N)`` turns ``N`` into the class's own arguments with
    :meth:`kwargs_for`; a record without a run length ignores ``num_iterations``.
    """

    total_steps_kwarg: str | None = None
    epochs_kwarg: str | None = None
    steps_per_epoch_kwarg: str | None = None

    def kwargs_for(self, num_iterations: int) -> dict[str, int]:
        if self.total_steps_kwarg:
            return {self.total_steps_kwarg: num_iterations}
        return {self.epochs_kwarg: 1, self.steps_per_epoch_kwarg: num_iterations}

    @property
    def kwarg_names(self) -> tuple[str, ...]:
        names = (self.total_steps_kwarg, self.epochs_kwarg, self.steps_per_epoch_kwarg)
        return tuple(n for n in names if n)


@dataclass(frozen=True)
class CurvatureRefresh:
    """A curvature estimate must be refreshed every ``every`` steps by calling ``method`` on the
    optimizer after the ordinary backward pass (``needs_create_graph``: that backward must keep the
    graph, as for Hutchinson estimates)."""

    every: int
    method: str
    needs_create_graph: bool = False
    how: str = ""


@dataclass(frozen=True)
class ParamRouting:
    """The optimizer splits parameters by role itself; ``wants_names`` means it must be given
    ``(name, parameter)`` pairs (an ``nn.Module`` to ``create_optimizer`` does this)."""

    rule: str
    wants_names: bool = False


@dataclass(frozen=True)
class Protocol:
    """What a trainer must do beyond ``zero_grad(); loss.backward(); step()``.

    A step after the first makes ``host_syncs_per_step + host_syncs_per_param * (parameters with a
    gradient)`` host synchronisations on an accelerator (reads of device values and blocking
    host-to-device copies), as measured by ``tests/test_host_syncs.py``.
    """

    lr_role: LrRole = "step"
    owns_schedule: bool = False
    scheduler_allowed_with: str = ""
    train_eval: bool = False
    run_length: RunLength | None = None
    curvature_refresh: CurvatureRefresh | None = None
    param_routing: ParamRouting | None = None
    needs_closure: bool = False
    host_syncs_per_step: int = 0
    host_syncs_per_param: int = 0
    host_sync_reason: str = ""
    single_lr: bool = False
    single_group_hparams: tuple[str, ...] = ()
    # A refresh that step() does itself (an eigendecomposition): the constructor argument giving its
    # period. host_syncs_per_step counts the other steps; a refresh step may make more.
    refresh_every_arg: str = ""

    @property
    def wants_lr_scheduler(self) -> bool:
        """True where a trainer should apply its ordinary LR schedule by default."""
        return not self.owns_schedule and self.lr_role == "step"

    def lines(self) -> list[str]:
        """The protocol as short human-readable lines (for ``rvc-optim show``)."""
        out = [
            {
                "step": "lr is an ordinary step size",
                "multiplier": "lr multiplies a step size the optimizer finds itself (use 1.0)",
                "none": "takes no learning rate",
            }[self.lr_role]
        ]
        if self.owns_schedule:
            out.append(
                "owns its schedule: apply no LR scheduler"
                + (f" (one is allowed with {self.scheduler_allowed_with})" if self.scheduler_allowed_with else "")
            )
        if self.train_eval:
            out.append("call optimizer.train() before training steps and optimizer.eval() before evaluating or saving")
        if self.run_length:
            out.append("needs the run length up front: pass num_iterations to create_optimizer")
        if self.curvature_refresh:
            c = self.curvature_refresh
            out.append(f"refresh curvature every {c.every} steps with optimizer.{c.method}()" + (f": {c.how}" if c.how else ""))
        if self.param_routing:
            out.append(f"routes parameters itself: {self.param_routing.rule}")
        if self.refresh_every_arg:
            out.append(f"step() refreshes its preconditioner itself every {self.refresh_every_arg} steps "
                       "(host syncs beyond the count below on those steps only)")
        if self.needs_closure:
            out.append("step() requires a closure")
        if self.single_lr:
            out.append("all param groups must share one lr (0 freezes a group)")
        for hp in self.single_group_hparams:
            out.append(f"the reference reads {hp} from the first group only; this one honours each group's value")
        syncs = f"{self.host_syncs_per_step}"
        if self.host_syncs_per_param:
            syncs += f" + {self.host_syncs_per_param} per parameter"
        out.append(
            f"host syncs per step: {syncs}" + (f" ({self.host_sync_reason})" if self.host_sync_reason else "")
        )
        return out


@dataclass(frozen=True)
class MeasuredRating:
    """A 1-5 rating measured by the convergence benchmark (``rvc-optim evaluate``) on one task, with its
    provenance: the best setting's mean final validation loss (NaN: every run diverged), the steps
    and seeds behind it, the rvc-optim version, and the results file it was computed from."""

    task: str
    rating: int
    final_loss: float
    steps: int
    seeds: int
    version: str
    source_file: str

    def describe(self) -> str:
        loss = "diverged" if not math.isfinite(self.final_loss) else f"final loss {self.final_loss:.4f}"
        return (f"{self.task} {self.rating}/5 ({loss}; {self.steps} steps, {self.seeds} seed(s), "
                f"rvc-optim {self.version}, {self.source_file})")


def read_measured_ratings(path: str | os.PathLike[str]) -> dict[str, tuple[MeasuredRating, ...]]:
    """``{optimizer name: ratings}`` from the benchmark's ``ratings.csv`` (no file: nothing measured)."""
    if not os.path.exists(path):
        return {}
    out: dict[str, list[MeasuredRating]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["optimizer"], []).append(MeasuredRating(
                row["task"], int(row["rating"]), float(row["final_loss"]), int(row["steps"]), int(row["seeds"]),
                row["version"], row["source_file"]))
    return {name: tuple(ratings) for name, ratings in out.items()}


def _contradiction(record: OptimizerInfo, m: MeasuredRating) -> str:
    """A plain sentence where the measurement contradicts the guide's stars (4+ measured 2 or less, or
    2.5 or less measured 5); else empty."""
    if not ((record.rating >= 4.0 and m.rating <= 2) or (record.rating <= 2.5 and m.rating >= 5)):
        return ""
    what = "diverged in every run of its best setting" if not math.isfinite(m.final_loss) else f"measured {m.rating}/5"
    return (f" Measured on the {m.task} task (rvc-optim evaluate, {m.steps} steps, {m.seeds} seeds): it {what}, "
            f"against the guide's {record.rating:.1f} stars.")


def attach_measured_ratings(records: tuple[OptimizerInfo, ...], path: str | os.PathLike[str]) -> tuple[OptimizerInfo, ...]:
    """``records`` with the measured ratings of ``path`` attached, and a sentence added to ``when_to_use``
    where a measurement contradicts the guide's stars (so the record cannot disagree with the results)."""
    measured = read_measured_ratings(path)
    out = []
    for record in records:
        ratings = measured.get(record.name, ())
        note = "".join(_contradiction(record, m) for m in ratings)
        out.append(dataclasses.replace(record, measured=ratings, when_to_use=record.when_to_use + note)
                   if ratings else record)
    return tuple(out)


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer: the guide's data, our description, the recommendation and the protocol.

    ``class_path`` is ``"module:Class"``. A record whose module or class does not exist yet is registered
    but not available (:attr:`available` is False and :attr:`cls` raises :class:`NotImplementedYet`).
    ``recommended`` is what :func:`rvc_optim.create_optimizer` uses for anything the caller leaves
    out, at RVC scale; the class keeps its authors' defaults. ``test_settings`` override it in the
    contract suite's 50-step regression where the RVC-scale value is too slow for 50 steps, with the
    reason in ``test_settings_reason``.
    """

    name: str
    class_path: str
    rating: float
    category: str
    best_for: str
    paper: Paper
    source: Source
    description: str
    when_to_use: str
    state: str
    recommended: Mapping[str, Any] = field(default_factory=dict)
    protocol: Protocol = Protocol()
    aliases: tuple[str, ...] = ()
    test_settings: Mapping[str, Any] = field(default_factory=dict)
    test_settings_reason: str = ""
    corrections: tuple[str, ...] = ()
    # The fp32 bytes one update of the algorithm must move per parameter (:func:`memory_floor`): the
    # benchmark divides by it, for ours and for every published implementation of the same algorithm.
    floor_bytes_per_param: float = float("nan")
    # Measured by ``rvc-optim evaluate``, loaded from the committed results (never typed in by hand).
    measured: tuple[MeasuredRating, ...] = ()

    def __post_init__(self) -> None:
        if not 2.0 <= self.rating <= 5.0:
            raise ValueError(f"{self.name}: rating {self.rating} outside [2.0, 5.0]")
        if ":" not in self.class_path:
            raise ValueError(f"{self.name}: class_path must be 'module:Class', got {self.class_path!r}")
        object.__setattr__(self, "recommended", _frozen(self.recommended))
        object.__setattr__(self, "test_settings", _frozen(self.test_settings))
        if self.test_settings and not self.test_settings_reason:
            raise ValueError(f"{self.name}: test_settings need a test_settings_reason")

    @property
    def module_name(self) -> str:
        return self.class_path.split(":", 1)[0]

    @property
    def class_name(self) -> str:
        return self.class_path.split(":", 1)[1]

    @property
    def available(self) -> bool:
        """Whether the implementation exists: the module exists and defines the class (several records
        may share a module, and one class landing must not make its siblings available). A module that
        exists but fails to import raises."""
        try:
            if importlib.util.find_spec(self.module_name) is None:
                return False
        except ModuleNotFoundError:
            return False
        return hasattr(importlib.import_module(self.module_name), self.class_name)

    @property
    def cls(self) -> type[Optimizer]:
        if not self.available:
            raise NotImplementedYet(
                f"{self.name} is registered but not implemented yet in this version of rvc-optim "
                f"(expected at {self.class_path}); see `rvc-optim list` for the available ones"
            )
        return getattr(importlib.import_module(self.module_name), self.class_name)

    @property
    def stars(self) -> str:
        full = int(self.rating)
        return "\u2b50" * full + ("\u00bd" if self.rating - full >= 0.5 else "")

    @property
    def capabilities(self):  # -> rvc_optim.capabilities.Capabilities
        from rvc_optim.capabilities import capabilities_of

        return capabilities_of(self.cls)
