"""Fair settings: the sweep around each optimizer's recommendation, the seeds, and the run plan.

Each optimizer runs at its record's recommended settings and at a sweep around them:

* an ordinary step-size ``lr`` (``lr_role == "step"``): the recommended lr times :data:`LR_FACTORS`
  (a third and three times: half a decade each way);
* an lr that multiplies a step size the optimizer finds itself (``lr_role == "multiplier"``: Prodigy,
  the D-Adaptation family, Adadelta): that multiplier (their ``d_coef`` in effect) times
  :data:`MULTIPLIER_FACTORS`;
* no lr at all (``lr_role == "none"``, A2Grad): the first argument of :data:`STEP_COEFFICIENTS` the
  class takes (A2Grad's ``lips``, the inverse of its step size), divided by :data:`LR_FACTORS`, so a
  larger factor is a larger step there too.

Warm-ups are scaled to the run: a recommended warm-up (an integer argument of
:data:`WARMUP_ARGUMENTS`: schedule-free's ``warmup_steps`` of 1000, Apollo's ``warmup`` of 500) longer than
:data:`WARMUP_FRACTION` of the run is cut to that fraction; otherwise a 50-step run would spend every
step warming up and measure nothing but the warm-up (:func:`run_kwargs`).

The budget (see :mod:`rvc_optim.evaluate`) forces a two-stage plan: every setting runs with the first
seed (the sweep), then the setting with the lowest final loss on that seed (a diverged setting counts as
worst; ties: the recommended one) runs the remaining seeds. The plan is a pure function of the
settings and the results so far, so ``--resume`` recomputes it and skips what is done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from rvc_optim.registry import optimizer_info

__all__ = ["LR_FACTORS", "MULTIPLIER_FACTORS", "STEP_COEFFICIENTS", "Setting", "RunKey", "sweep_settings",
           "plan_runs", "best_factor", "run_kwargs"]

LR_FACTORS = (1 / 3, 1.0, 3.0)
MULTIPLIER_FACTORS = (0.5, 1.0, 2.0)
STEP_COEFFICIENTS = ("lips",)
WARMUP_ARGUMENTS = ("warmup_steps", "warmup")
WARMUP_FRACTION = 0.1


@dataclass(frozen=True)
class Setting:
    """One point of an optimizer's sweep: ``argument`` = ``value`` (``factor`` x the recommendation)."""

    argument: str
    factor: float
    value: float

    @property
    def label(self) -> str:
        return f"{self.argument}={self.value:.3g}"

    def kwargs(self) -> dict[str, Any]:
        return {self.argument: self.value}


@dataclass(frozen=True)
class RunKey:
    """One run: task, optimizer, setting factor, seed (what ``--resume`` recognises as done)."""

    task: str
    optimizer: str
    factor: float
    seed: int

    @property
    def ident(self) -> tuple[str, str, str, int]:
        return (self.task, self.optimizer, f"{self.factor:.6g}", self.seed)


def _recommended(record, argument: str) -> float:
    """The record's recommended value of ``argument``, else the class default."""
    from rvc_optim.capabilities import constructor_parameters

    value = record.recommended.get(argument)
    if value is None:
        value = constructor_parameters(record.cls)[argument].default
    return float(value)


def sweep_settings(name: str, sweep: bool = True) -> list[Setting]:
    """The settings ``name`` runs at (the recommendation alone when ``sweep`` is False)."""
    record = optimizer_info(name)
    role = record.protocol.lr_role
    if role == "none":
        from rvc_optim.capabilities import constructor_parameters

        taken = constructor_parameters(record.cls)
        argument = next((a for a in STEP_COEFFICIENTS if a in taken), None)
        if argument is None:
            raise ValueError(f"{record.name} takes no lr and none of {STEP_COEFFICIENTS}: nothing to sweep")
        base = _recommended(record, argument)
        factors = LR_FACTORS if sweep else (1.0,)
        return [Setting(argument, f, base / f) for f in factors]
    factors = (MULTIPLIER_FACTORS if role == "multiplier" else LR_FACTORS) if sweep else (1.0,)
    base = _recommended(record, "lr")
    return [Setting("lr", f, base * f) for f in factors]


def run_kwargs(name: str, setting: Setting, steps: int) -> dict[str, Any]:
    """The keyword arguments of one run: the setting, plus warm-ups cut to :data:`WARMUP_FRACTION` of ``steps``."""
    out = setting.kwargs()
    for key in WARMUP_ARGUMENTS:
        value = optimizer_info(name).recommended.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > WARMUP_FRACTION * steps:
            out[key] = max(1, int(WARMUP_FRACTION * steps))
    return out


def best_factor(losses: Mapping[float, float]) -> float:
    """The factor with the lowest final loss (NaN, i.e. diverged, counts as worst; ties and an
    all-diverged sweep: the recommendation, factor 1)."""
    def rank(item):
        factor, loss = item
        return (math.inf if not math.isfinite(loss) else loss, factor != 1.0)

    best, loss = min(losses.items(), key=rank)
    return best if math.isfinite(loss) else 1.0


def plan_runs(task: str, name: str, settings: list[Setting], seeds: int, sweep_losses: Mapping[float, float]
              ) -> Iterator[RunKey]:
    """The runs of one optimizer on one task: every setting with seed 0; then, once all of those are in
    ``sweep_losses`` (factor -> final loss), the best setting with seeds 1 .. seeds-1."""
    for s in settings:
        yield RunKey(task, name, s.factor, 0)
    if seeds > 1 and all(s.factor in sweep_losses for s in settings):
        best = best_factor({s.factor: sweep_losses[s.factor] for s in settings})
        for seed in range(1, seeds):
            yield RunKey(task, name, best, seed)


def runs_per_optimizer(n_settings: int, seeds: int) -> int:
    """How many runs :func:`plan_runs` makes for one optimizer on one task."""
    return n_settings + max(0, seeds - 1)
