"""Drive an optimizer by its record's protocol, so no trainer branches on an optimizer's name.

A trainer calls :meth:`ProtocolDriver.train` before training steps and :meth:`ProtocolDriver.eval`
before evaluating or saving (schedule-free optimizers swap their parameters between the training
point y and the averaged point x there), asks :meth:`backward_kwargs` how to run backward, and steps
through :meth:`step`, which refreshes curvature estimates on the protocol's schedule: every
``curvature_refresh.every`` steps, starting with the first, it asks for a backward that keeps the graph
(where the refresh needs Hessian-vector products) and calls the refresh method after that backward and
before the step. A trainer that resumes restores :attr:`steps_taken`, so the schedule continues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer

from rvc_optim.records import OptimizerInfo
from rvc_optim.registry import optimizer_info

__all__ = ["ProtocolDriver"]


class ProtocolDriver:
    def __init__(self, optimizer: Optimizer, info: OptimizerInfo | str) -> None:
        self.optimizer = optimizer
        self.info = optimizer_info(info) if isinstance(info, str) else info
        self.protocol = self.info.protocol
        self.steps_taken = 0
        self.refreshes = 0  # curvature refreshes made by this driver (for logs)

    @property
    def wants_lr_scheduler(self) -> bool:
        return self.protocol.wants_lr_scheduler

    def train(self) -> None:
        if self.protocol.train_eval:
            self.optimizer.train()

    def eval(self) -> None:
        if self.protocol.train_eval:
            self.optimizer.eval()

    def refresh_due(self) -> bool:
        refresh = self.protocol.curvature_refresh
        return refresh is not None and self.steps_taken % refresh.every == 0

    def backward_kwargs(self) -> dict[str, Any]:
        """Arguments for ``loss.backward`` at this step (a graph kept for Hessian-vector products)."""
        refresh = self.protocol.curvature_refresh
        if refresh is not None and refresh.needs_create_graph and self.refresh_due():
            return {"create_graph": True}
        return {}

    def step(self, closure: Callable[[], Any] | None = None, step_fn: Callable[[], Any] | None = None,
             loss_scale: Any = None) -> Any:
        """One optimizer step (after backward), with the curvature refresh where it is due.

        ``step_fn`` replaces ``optimizer.step()`` where something wraps it (``scaler.step(opt)``);
        ``loss_scale`` (the scaler's scale, a 0-d tensor) reaches the refresh, whose estimate from the
        scaled loss's graph must be divided by it.
        """
        if self.protocol.needs_closure and closure is None:
            raise ValueError(f"{self.info.name} needs a closure for step()")
        if self.refresh_due():
            refresh = getattr(self.optimizer, self.protocol.curvature_refresh.method)
            refresh(**({} if loss_scale is None else {"loss_scale": loss_scale}))
            self.refreshes += 1
        if step_fn is not None:
            loss = step_fn()
        else:
            loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.steps_taken += 1
        return loss
