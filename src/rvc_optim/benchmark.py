"""Step-time benchmark on the parameters of RVC's v2 40k generator and discriminator.

For each of our optimizers, in this order: the default path (what ``create_optimizer(name, params)``
gives), the compiled path (``compiled=True``, its first step is the build) and every published
implementation of the same algorithm that is installed (:data:`PUBLISHED`). Each row reports
milliseconds per step (median of repeated steps after warm-up, gradients pre-filled and re-attached
before every step, threads fixed) and the ratio to the algorithm's memory-traffic floor, calibrated with
torch's fused AdamW timed on the same parameters, each timed step interleaved with a fused-AdamW step so
both see the same machine load::

    ratio = (t_row / t_fused_adamw) * 28 / record.floor_bytes_per_param

The floor is the record's (:func:`rvc_optim.records.memory_floor`: what one update of the algorithm must
move), so ours and every published implementation of one algorithm are divided by the same number. Fused
AdamW moves 28 bytes per parameter, so its own ratio is 1.0 by construction.

Every row must change the parameters over its timed steps; one that does not is reported as "did not
update", never timed as fast. Rows that compile (our compiled path, heavyball's default) run in a child
process with a build time limit: "cold" is the first step in a fresh process with an empty inductor cache,
"warm" the first step of a second fresh process that finds the first one's on-disk cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from rvc_optim.registry import create_optimizer, list_optimizers, optimizer_info

__all__ = [
    "MATMUL_FLOPS",
    "PUBLISHED",
    "Published",
    "StepFlops",
    "Row",
    "RowResult",
    "add_arguments",
    "bytes_per_param",
    "fastest_published",
    "latest_default_rows",
    "load_shapes",
    "matmul_rate",
    "plan_rows",
    "readme_table",
    "run",
    "run_from_args",
    "step_flops",
    "summary_table",
    "time_row",
]

SETS = {"generator": ("generator_v2_40k",), "discriminator": ("discriminator_v2",),
        "union": ("generator_v2_40k", "discriminator_v2"), "tiny": ()}
# A synthetic set for tests and smoke runs: a few conv-like tensors and biases.
TINY_SHAPES = [("conv.weight", (16, 8, 3)), ("conv.bias", (16,)), ("linear.weight", (32, 16)), ("gain", (16, 1, 1))]
FUSED_ADAMW_BYTES = 28.0
RUN_LENGTH = 1000  # num_iterations given to optimizers that need the run length up front
DID_NOT_UPDATE = "did not update"


@dataclass(frozen=True)
class Published:
    """One published implementation of an algorithm. The constructor gets the record's recommended
    settings that its signature names (lr, betas, eps, weight decay, ... : the same as our row), then
    ``kwargs`` (renamed or library-specific settings that make it run the same algorithm)."""

    library: str  # the distribution, for its version
    module: str
    cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    compiles: bool = False  # its default path compiles (heavyball): run in a child with a build limit
    note: str = ""
    untimed: str = ""  # why the row is not timed (a step that takes minutes): reported as a note

    @property
    def label(self) -> str:
        return f"{self.library} {self.cls}" + (" (compiled)" if self.compiles else "")


_RUN_LENGTH_R21 = {"num_epochs": 1, "num_batches_per_epoch": RUN_LENGTH}
_SCHEDULE_FREE_ADAMW = [
    Published("schedulefree", "schedulefree", "AdamWScheduleFree"),
    Published("pytorch_optimizer", "pytorch_optimizer", "ScheduleFreeAdamW"),
    Published("heavyball", "heavyball", "SFAdamW", compiles=True),
]
# algorithm (registry name) -> its published implementations. The next optimizers add rows here.
PUBLISHED: dict[str, list[Published]] = {
    "Lion": [
        Published("lion-pytorch", "lion_pytorch", "Lion"),
        Published("pytorch_optimizer", "pytorch_optimizer", "Lion"),
        Published("torch-optimi", "optimi", "Lion", {"foreach": True}),
    ],
    "ScheduleFreeAdamW": _SCHEDULE_FREE_ADAMW,
    # with no weight decay (the record's setting) Adam and AdamW are the same update
    "ScheduleFreeAdam": _SCHEDULE_FREE_ADAMW,
    "ScheduleFreeSGD": [
        Published("schedulefree", "schedulefree", "SGDScheduleFree"),
        Published("pytorch_optimizer", "pytorch_optimizer", "ScheduleFreeSGD"),
    ],
    "Prodigy": [
        Published("prodigyopt", "prodigyopt", "Prodigy"),
        Published("pytorch_optimizer", "pytorch_optimizer", "Prodigy"),
    ],
    "DAdaptAdam": [
        Published("dadaptation", "dadaptation", "DAdaptAdam"),
        Published("pytorch_optimizer", "pytorch_optimizer", "DAdaptAdam", {"weight_decouple": True}),
    ],
    "DAdaptAdaGrad": [
        Published("dadaptation", "dadaptation", "DAdaptAdaGrad"),
        Published("pytorch_optimizer", "pytorch_optimizer", "DAdaptAdaGrad"),
    ],
    "DAdaptSGD": [
        Published("dadaptation", "dadaptation", "DAdaptSGD"),
        Published("pytorch_optimizer", "pytorch_optimizer", "DAdaptSGD"),
    ],
    "Adan": [
        Published("pytorch_optimizer", "pytorch_optimizer", "Adan"),
        Published("torch-optimi", "optimi", "Adan", {"foreach": True}),
    ],
    "AnyPrecisionAdamW": [  # with fp32 buffers and no Kahan summation (the record's setting) it is AdamW
        Published("torch", "torch.optim", "AdamW", {"foreach": True}),
        Published("torch-optimi", "optimi", "AdamW", {"foreach": True}),
        Published("heavyball", "heavyball", "AdamW", compiles=True),
    ],
    "Ranger21": [
        Published("ranger21", "ranger21", "Ranger21", _RUN_LENGTH_R21),
        Published("pytorch_optimizer", "pytorch_optimizer", "Ranger21", {"num_iterations": RUN_LENGTH}),
    ],
    # --- the Adam variants of issue 14: AdaBelief, AdaBeliefV2, PAdam, QHAdam, Yogi ---
    "AdaBelief": [
        Published("adabelief-pytorch", "adabelief_pytorch", "AdaBelief", {"print_change_log": False}),
        Published("pytorch_optimizer", "pytorch_optimizer", "AdaBelief", {"rectify": True}),
        Published("timm", "timm.optim.adabelief", "AdaBelief"),
    ],
    "AdaBeliefV2": [
        Published("adabelief-pytorch", "adabelief_pytorch", "AdaBelief",
                  {"print_change_log": False, "amsgrad": True, "rectify": False}),
        Published("pytorch_optimizer", "pytorch_optimizer", "AdaBelief", {"ams_bound": True, "rectify": False}),
        Published("timm", "timm.optim.adabelief", "AdaBelief", {"amsgrad": True, "rectify": False}),
    ],
    "PAdam": [
        Published("pytorch_optimizer", "pytorch_optimizer", "PAdam",
                  note="no amsgrad: keeps one buffer less than ours (amsgrad=True, the authors' default)"),
        Published("rvc-optim", "rvc_optim.optim.padam", "PAdam", {"amsgrad": False},
                  note="ours at pytorch_optimizer's setting (no amsgrad): the like-for-like time"),
    ],
    "QHAdam": [
        Published("qhoptim", "qhoptim.pyt", "QHAdam"),
        Published("torch-optimizer", "torch_optimizer", "QHAdam"),
        Published("pytorch_optimizer", "pytorch_optimizer", "QHAdam", {"weight_decouple": True}),
    ],
    "Yogi": [
        Published("torch-optimizer", "torch_optimizer", "Yogi"),
        Published("pytorch_optimizer", "pytorch_optimizer", "Yogi", {"weight_decouple": False}),
    ],
    # --- layer-wise / normalized family (issue 14): LAMB, LARS, NovoGrad, Fromage, Nero ---
    # timm's rows load its optimizer modules alone (import_published): its package needs torchvision.
    "LAMB": [
        Published("timm", "timm.optim.lamb", "Lamb", {"foreach": True}),
        Published("pytorch_optimizer", "pytorch_optimizer", "Lamb", {"weight_decouple": False},
                  note="its own variant: step divided by 1 - beta1^t only, ||p|| clamped at 10"),
        Published("torch-optimizer", "torch_optimizer", "Lamb", note="its own variant: no bias correction"),
    ],
    "LARS": [
        Published("timm", "timm.optim.lars", "Lars", {"foreach": True}),
        Published("torch-optimizer", "torch_optimizer", "LARS", {"trust_coefficient": 1e-3}),
        Published("pytorch_optimizer", "pytorch_optimizer", "LARS", {"trust_coefficient": 1e-3},
                  note="its own variant: vectors unscaled, no eps"),
    ],
    "NovoGrad": [
        Published("timm", "timm.optim.nvnovograd", "NvNovoGrad"),
        Published("torch-optimizer", "torch_optimizer", "NovoGrad"),
        Published("pytorch_optimizer", "pytorch_optimizer", "NovoGrad"),
    ],
    "Fromage": [
        Published("pytorch_optimizer", "pytorch_optimizer", "Fromage"),
    ],
    "Nero": [
        Published("pytorch_optimizer", "pytorch_optimizer", "Nero", {"eps": 0.0}),
    ],
    # --- memory-saving family (issue 14): AdaFactor, CAME, SM3 ---
    # torch-optimizer's Adafactor is left out (it fails on most 3-D kernels and is wrong when in == out),
    # and so is pytorch_optimizer's AdaFactor (the big_vision variant, another algorithm). torch's own
    # Adafactor has no first moment and a relative step: a speed peer on a lighter configuration.
    "AdaFactor": [
        Published("transformers", "transformers.optimization", "Adafactor"),
        Published("timm", "timm.optim.adafactor", "Adafactor", {"betas": (0.8, 0.999), "min_dim_size_to_factor": 0},
                  note="its own variant: a conv kernel's (out, in) dims are factored, where ours and transformers' "
                       "factor the last two (a far smaller state for 4-D kernels)"),
        Published("torch", "torch.optim", "Adafactor", {"foreach": True}),
    ],
    "CAME": [
        Published("came-pytorch", "came_pytorch", "CAME"),
        Published("pytorch_optimizer", "pytorch_optimizer", "CAME", {"eps1": 1e-30, "eps2": 1e-16}),
    ],
    "SM3": [Published("pytorch_optimizer", "pytorch_optimizer", "SM3")],
    # --- issue 14, momentum family: SWATS, Apollo, A2Grad, AggMo, PID ---
    "AggMo": [
        Published("torch-optimizer", "torch_optimizer", "AggMo"),
        Published("pytorch_optimizer", "pytorch_optimizer", "AggMo"),
    ],
    "PID": [
        Published("torch-optimizer", "torch_optimizer", "PID"),
        Published("pytorch_optimizer", "pytorch_optimizer", "PID",
                  note="starts the derivative from g_1 and damps the first integral step"),
    ],
    "A2Grad": [  # the default variant, 'uni'
        Published("torch-optimizer", "torch_optimizer", "A2GradUni"),
        Published("pytorch_optimizer", "pytorch_optimizer", "A2Grad", {"variant": "uni"},
                  note="indexes the sequences one step ahead of the paper"),
    ],
    "Apollo": [  # the 2020 quasi-Newton method (torch_optimizer.Apollo is its older first version)
        Published("pytorch_optimizer", "pytorch_optimizer", "ApolloDQN", {"warmup_steps": 500}),
    ],
    "SWATS": [
        Published("torch-optimizer", "torch_optimizer", "SWATS"),
        Published("pytorch_optimizer", "pytorch_optimizer", "SWATS",
                  note="decides the switch at the end of the group step"),
    ],
    # --- issue 15, Sophia: the authors' SophiaG; pytorch_optimizer's SophiaH is the Hutchinson variant
    "Sophia": [
        Published("sophia-opt", "sophia_opt", "SophiaG"),
        Published("pytorch_optimizer", "pytorch_optimizer", "SophiaH",
                  note="a different algorithm (Gaussian Hutchinson probes inside step(), clip at p); its step 1 "
                  "draws them and needs gradients made with create_graph=True, which a timing run lacks"),
    ],
    # --- issue 15, SOAP (the authors' soap.py is not packaged) ---
    "SOAP": [
        Published("pytorch_optimizer", "pytorch_optimizer", "SOAP", {"max_precondition_dim": 2048},
                  note="the older variant (m in the original basis, one more rotation per step); eigh in float64"),
        Published("heavyball", "heavyball", "SOAP", {"merge_dims": False}, compiles=True,
                  note="its own schedule and storage: float32 state, compiled step"),
    ],
    # --- issue 15, Muon: each given our split (rvc_optim.bench_muon), none routes by itself ---
    "Muon": [
        Published("muon-optimizer", "rvc_optim.bench_muon", "authors_muon",
                  note="authors' SingleDeviceMuonWithAuxAdam 0.1.0: Conv1d kernels as out separate in x k "
                       "matrices; crashes on 4-D kernels (the discriminator)"),
        Published("pytorch_optimizer", "rvc_optim.bench_muon", "pytorch_optimizer_muon",
                  untimed="its Newton-Schulz runs in bfloat16, whose matrix products are slow on a CPU: its "
                          "first two steps on the generator had not finished after 8 minutes (2026-12-07)"),
        Published("torch", "rvc_optim.bench_muon", "torch_muon",
                  note="torch.optim.Muon takes 2-D tensors only: RVC's kernels are 3-D and 4-D, so it cannot run"),
        Published("heavyball", "heavyball", "Muon", compiles=True,
                  note="a different algorithm (its own Newton-Schulz schedule, Adam-style betas), on every tensor"),
    ],
    # --- issue 15: Shampoo (refresh every 10 steps, as the record's settings) ---
    "Shampoo": [
        Published("torch-optimizer", "torch_optimizer", "Shampoo", {"update_freq": 10},
                  untimed="a d x d SVD for every dimension on each refresh, the first step included: "
                          "enc_q.enc.cond_layer's 6144-wide one alone is minutes on a CPU"),
        Published("pytorch_optimizer", "pytorch_optimizer", "Shampoo", {"preconditioning_compute_steps": 10},
                  untimed="did not finish one step on the generator in 10 minutes (issue 15)"),
        Published("pytorch_optimizer", "pytorch_optimizer", "ScalableShampoo",
                  {"betas": (0.0, 0.99), "preconditioning_compute_steps": 10, "start_preconditioning_step": 1,
                   "graft_type": 3, "nesterov": False},  # graft_type 3: LayerWiseGrafting.RMSPROP
                  note="blocks of 512, roots by coupled Newton iterations, RMSProp grafting"),
    ],
}


def library_version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_shapes(model: str) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of one RVC v2 model (package data read off RVC's classes)."""
    text = resources.files("rvc_optim.data").joinpath("rvc_v2_shapes.json").read_text()
    models = json.loads(text)["models"]
    if model not in models:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(models)}")
    return [(name, tuple(shape)) for name, shape in models[model]["parameters"]]


def make_parameters(set_name: str, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [s for model in SETS[set_name] for _, s in load_shapes(model)] if SETS[set_name] else \
        [s for _, s in TINY_SHAPES]
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        params.append(p)
    return params


def bytes_per_param(optimizer: torch.optim.Optimizer, params: Any = None) -> float:
    """The floor of ``optimizer``'s algorithm, from its record (``params`` is ignored; kept for callers
    such as scripts/gpu_check.py). Raises LookupError for a class no record names."""
    from rvc_optim.catalog import RECORDS

    for record in RECORDS:
        if record.available and record.cls is type(optimizer):
            return record.floor_bytes_per_param
    raise LookupError(f"no record for {type(optimizer).__name__}")


# --- the matmul floor of the matrix optimizers ----------------------------------------------------------
#
# Muon, Shampoo and SOAP spend their time in matrix products and decompositions, not in memory traffic.
# Their rows also report the FLOPs their algorithm must do per step (estimated from its update rule, the
# parameter shapes and its settings: the record's recommended ones over the class's defaults), divided by
# this machine's float32 matmul rate measured in the same run: the matmul floor. A multiply-add is 2 FLOPs.


@dataclass(frozen=True)
class StepFlops:
    """The FLOPs of an ordinary step, the extra FLOPs of a refresh step and the steps per refresh."""

    step: float
    refresh: float = 0.0
    period: int = 1

    @property
    def amortised(self) -> float:
        return self.step + self.refresh / self.period


def muon_flops(shapes: list[tuple[int, ...]], settings: dict[str, Any]) -> StepFlops:
    """Newton-Schulz on each weight as an [out, in*k] matrix with sides m <= n (m > 1), ``ns_steps``
    iterations (5), in whichever of its two exact forms needs fewer multiply-adds for the shape: the
    authors' (per iteration X X^T, A A and B X) or the Gram form
    (:func:`rvc_optim.optim.muon.newton_schulz_multiply_adds`)."""
    from rvc_optim.optim.muon import newton_schulz_multiply_adds

    total = 0.0
    for shape in shapes:
        if len(shape) >= 2:
            m, n = sorted((shape[0], math.prod(shape[1:])))
            if m > 1:
                total += 2 * min(newton_schulz_multiply_adds(m, n, settings.get("ns_steps", 5)))
    return StepFlops(total)


def shampoo_flops(shapes: list[tuple[int, ...]], settings: dict[str, Any]) -> StepFlops:
    """Per dimension with a d x d factor (1 < d <= max_preconditioner_dim; 1-D tensors only with
    precondition_1d): the factor update G G^T and the product with its root, 2 d numel each, every step;
    on a refresh an eigendecomposition (about 9 d^3) and the root rebuilt from it (2 d^3)."""
    limit = settings.get("max_preconditioner_dim") or math.inf
    step = refresh = 0.0
    for shape in shapes:
        if len(shape) == 1 and not settings.get("precondition_1d", True):
            continue
        numel = math.prod(shape)
        for d in shape:
            if 1 < d <= limit:
                step += 4 * d * numel
                refresh += 11 * d**3
    return StepFlops(step, refresh, settings.get("precondition_frequency", 1))


def soap_dims(shape: tuple[int, ...], settings: dict[str, Any]) -> list[int]:
    """The sizes of SOAP's factors for one tensor: its dimensions (with merge_dims, neighbours merged while
    their product stays within max_precond_dim), those above max_precond_dim left out; none for a 1-D
    tensor unless precondition_1d."""
    if len(shape) == 1 and not settings.get("precondition_1d", False):
        return []
    limit = settings.get("max_precond_dim", 10000)
    dims = list(shape)
    if settings.get("merge_dims", False):
        dims, run = [], 1
        for d in shape:
            if run * d <= limit:
                run *= d
            elif run > 1:
                dims, run = dims + [run], d
            else:
                dims.append(d)
        if run > 1 or not dims:
            dims.append(run)
    return [d for d in dims if 1 < d <= limit]


def soap_flops(shapes: list[tuple[int, ...]], settings: dict[str, Any]) -> StepFlops:
    """Per factor of size d: the gradient projected, the update projected back, the first moment projected
    back and forth around the preconditioner update, and the G G^T update: 5 x 2 d numel every step; on a
    refresh (every precondition_frequency steps) GG Q (2 d^3) and its QR with Q formed (about 8/3 d^3)."""
    step = refresh = 0.0
    for shape in shapes:
        numel = math.prod(shape)
        for d in soap_dims(shape, settings):
            step += 10 * d * numel
            refresh += (2 + 8 / 3) * d**3
    return StepFlops(step, refresh, settings.get("precondition_frequency", 10))


# algorithm (registry name) -> its FLOPs estimator: the rows of these algorithms get the matmul columns
MATMUL_FLOPS: dict[str, Callable[[list[tuple[int, ...]], dict[str, Any]], StepFlops]] = {
    "Muon": muon_flops,
    "Shampoo": shampoo_flops,
    "SOAP": soap_flops,
}


def algorithm_settings(algorithm: str) -> dict[str, Any]:
    """The settings the default row runs with: the record's recommended ones over the class's defaults."""
    info = optimizer_info(algorithm)
    defaults = {n: p.default for n, p in inspect.signature(info.cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **info.recommended}


def step_flops(algorithm: str, shapes: list[tuple[int, ...]]) -> StepFlops | None:
    """The algorithm's FLOPs per step on ``shapes``, or None for an algorithm without an estimator."""
    estimator = MATMUL_FLOPS.get(algorithm)
    return estimator(shapes, algorithm_settings(algorithm)) if estimator else None


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    """This machine's float32 matmul rate in FLOP/s: the fastest of ``repeats`` [n, n] products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# --- rows ------------------------------------------------------------------------------------------------

Builder = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Row:
    """One timed line: ``kind`` is "default", "compiled" or "published" (``published`` set)."""

    algorithm: str
    kind: str
    published: Published | None = None

    @property
    def label(self) -> str:
        return self.kind if self.published is None else self.published.label

    def compiles(self, numel: int) -> bool:
        """Whether this row compiles on a CPU, for a set of ``numel`` elements (the default path does
        where ``RVC_OPTIM_COMPILE`` says so for that size, see :func:`resolve_compiled`)."""
        if self.kind == "compiled":
            return True
        if self.kind == "default":
            from rvc_optim.optim._compile import resolve_compiled

            return resolve_compiled(None, "cpu", numel) and _has_auto_compiled_update(self.algorithm)
        return self.published.compiles


@functools.lru_cache(maxsize=None)
def _has_auto_compiled_update(algorithm: str) -> bool:
    """Whether ``create_optimizer(algorithm, ...)`` holds an update that ``RVC_OPTIM_COMPILE=auto``
    compiles on a large CPU set (one on flat chunks; updates that read tensor shapes stay eager there)."""
    from rvc_optim.optim._compile import UpdateFunction

    if not optimizer_info(algorithm).capabilities.compiled:
        return False
    extra = {"num_iterations": RUN_LENGTH} if optimizer_info(algorithm).protocol.run_length is not None else {}
    optimizer = _quiet(create_optimizer, algorithm, [torch.nn.Parameter(torch.zeros(2, 2))], **extra)
    return any(isinstance(v, UpdateFunction) and v.flat and v.compiled is None
               for v in vars(optimizer).values())


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _train_mode(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    if callable(getattr(optimizer, "train", None)):
        optimizer.train()
    return optimizer


def import_published(module: str) -> types.ModuleType:
    """A published implementation's module. ``timm.optim.*`` modules are loaded alone: timm's package
    ``__init__`` imports torchvision (not installable beside torch's CPU build from the package index),
    while its optimizer modules need only torch, so empty ``timm`` and ``timm.optim`` packages pointing at
    the installed folders stand in for the real ones."""
    if module.startswith("timm.optim.") and "timm.optim" not in sys.modules:
        spec = importlib.util.find_spec("timm")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("No module named 'timm'")
        root = spec.submodule_search_locations[0]
        for name, path in (("timm", root), ("timm.optim", f"{root}/optim")):
            if name not in sys.modules:
                package = types.ModuleType(name)
                package.__path__ = [path]
                sys.modules[name] = package
    return importlib.import_module(module)


def published_kwargs(algorithm: str, published: Published) -> dict[str, Any]:
    """The record's recommended settings that the published class names, then the row's own kwargs."""
    cls = getattr(import_published(published.module), published.cls)
    accepted = {n for n, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    kwargs = {k: v for k, v in optimizer_info(algorithm).recommended.items() if k in accepted}
    return {**kwargs, **published.kwargs}


def builder_for(row: Row) -> Builder:
    info = optimizer_info(row.algorithm)
    if row.published is None:
        extra = {"num_iterations": RUN_LENGTH} if info.protocol.run_length is not None else {}
        if row.kind == "compiled":
            extra["compiled"] = True  # the default row passes nothing: what create_optimizer gives users

        def build(params):
            return _train_mode(_quiet(create_optimizer, row.algorithm, params, **extra))
    else:
        pub = row.published
        cls = getattr(import_published(pub.module), pub.cls)
        kwargs = published_kwargs(row.algorithm, pub)

        def build(params):
            return _train_mode(_quiet(cls, params, **kwargs))
    return build


def plan_rows(names: list[str], compiled: bool = True, published: bool = True) -> tuple[list[Row], list[str]]:
    """The rows for ``names`` in report order (default, compiled, published...) and the notes on rows
    left out (not implemented, library not installed)."""
    rows: list[Row] = []
    notes: list[str] = []
    for name in names:
        info = optimizer_info(name)
        if not info.available:
            notes.append(f"{name}: not implemented yet")
            continue
        rows.append(Row(name, "default"))
        if compiled and info.capabilities.compiled:
            rows.append(Row(name, "compiled"))
        for pub in PUBLISHED.get(name, []) if published else []:
            if pub.untimed:
                notes.append(f"{name}: {pub.label} not timed ({pub.untimed})")
                continue
            if pub.compiles and not compiled:
                notes.append(f"{name}: {pub.label} left out (its default path compiles; --no-compiled)")
                continue
            try:
                import_published(pub.module)
            except ImportError as err:
                notes.append(f"{name}: {pub.label} not timed ({err})")
                continue
            rows.append(Row(name, "published", pub))
    return rows, notes


# --- timing ----------------------------------------------------------------------------------------------

@dataclass
class RowResult:
    algorithm: str
    kind: str
    label: str
    set_name: str
    status: str  # "ok", "did not update", "build did not finish in N s", "error: ..."
    ms: float = math.nan
    baseline_ms: float = math.nan
    floor: float = math.nan
    ratio: float = math.nan
    first_step_s: float = math.nan  # cold build for compiling rows
    warm_build_s: float = math.nan
    graphs: int = 0  # graphs compiled by the row's first step (ours and dynamo's); 0: it ran eager
    # matrix optimizers (MATMUL_FLOPS): whole refresh periods timed
    amortised_ms: float = math.nan  # mean step over whole periods, the refresh included
    refresh_ms: float = math.nan  # the slowest step of each period (the refresh), median over periods
    matmul_floor_ms: float = math.nan  # the FLOPs of an amortised step / the matmul rate
    matmul_ratio: float = math.nan  # amortised_ms / matmul_floor_ms
    matmul_gflops: float = math.nan  # the matmul rate measured just before the row


def _attach(params: list[torch.nn.Parameter], grads: list[torch.Tensor]) -> None:
    # Some libraries (heavyball) clear .grad in step(); every step gets the same gradients back.
    for p, g in zip(params, grads):
        p.grad = g


def _graphs_compiled() -> int:
    """Graphs compiled so far in this process: our chunk graphs and dynamo's (``torch.compile``)."""
    from torch._dynamo.utils import counters

    from rvc_optim.optim._compile import graphs_built

    return sum(graphs_built().values()) + counters["stats"]["unique_graphs"]


def _timed_step(optimizer: torch.optim.Optimizer, params, grads) -> float:
    _attach(params, grads)
    start = time.perf_counter()
    optimizer.step()
    return time.perf_counter() - start


def _copy(params: list[torch.nn.Parameter]) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    with torch.no_grad():
        local = [torch.nn.Parameter(p.detach().clone()) for p in params]
    return local, [p.grad.clone() for p in params]


def make_baseline(params: list[torch.nn.Parameter], warmup: int):
    local, grads = _copy(params)
    baseline = torch.optim.AdamW(local, lr=1e-4, fused=True)
    for _ in range(warmup + 1):
        _timed_step(baseline, local, grads)
    return baseline, local, grads


def time_row(row: Row, params: list[torch.nn.Parameter], set_name: str, repeats: int, warmup: int,
             baseline, build: Builder | None = None) -> RowResult:
    """Time one row on its own copy of ``params``, interleaving each timed step with a step of the
    fused-AdamW ``baseline`` (``(optimizer, params, grads)``); the ratio uses the two medians. A row whose
    parameters are unchanged after its timed steps is reported as "did not update", with no time."""
    floor = optimizer_info(row.algorithm).floor_bytes_per_param
    result = RowResult(row.algorithm, row.kind, row.label, set_name, "ok", floor=floor)
    flops = step_flops(row.algorithm, [tuple(p.shape) for p in params])
    steps = repeats if flops is None else flops.period * max(1, math.ceil(repeats / flops.period))
    local, grads = _copy(params)
    try:
        optimizer = (build or builder_for(row))(local)
        graphs_before = _graphs_compiled()
        result.first_step_s = _timed_step(optimizer, local, grads)  # creates state; builds where compiled
        result.graphs = _graphs_compiled() - graphs_before
        for _ in range(warmup):
            _timed_step(optimizer, local, grads)
        before = [p.detach().clone() for p in local]
        times, base_times = [], []
        for _ in range(steps):
            times.append(_timed_step(optimizer, local, grads))
            base_times.append(_timed_step(*baseline))
    except Exception as err:  # a published library that fails on this set is reported, not fatal
        result.status = f"error: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        return result
    updated = any(not torch.equal(b, p.detach()) for b, p in zip(before, local))
    result.baseline_ms = 1000 * statistics.median(base_times)
    if not updated:
        result.status = DID_NOT_UPDATE
    else:
        result.ms = 1000 * statistics.median(times)
        result.ratio = (result.ms / result.baseline_ms) * FUSED_ADAMW_BYTES / floor
        if flops is not None:
            _matmul_columns(result, flops, times)
    del optimizer, local, before
    gc.collect()
    return result


def _matmul_columns(result: RowResult, flops: StepFlops, times: list[float]) -> None:
    """A matrix optimizer's amortised and refresh-step times (``times`` covers whole refresh periods, each
    with one refresh) beside its matmul floor at the rate measured now."""
    rate = matmul_rate()
    periods = [times[i:i + flops.period] for i in range(0, len(times), flops.period)]
    result.amortised_ms = 1000 * statistics.fmean(times)
    if flops.period > 1:
        result.refresh_ms = 1000 * statistics.median(max(period) for period in periods)
    result.matmul_gflops = rate / 1e9
    result.matmul_floor_ms = 1000 * flops.amortised / rate
    result.matmul_ratio = result.amortised_ms / result.matmul_floor_ms


def _child_command(row: Row, set_name: str, repeats: int, warmup: int, threads: int, build_only: bool) -> list[str]:
    spec = {"algorithm": row.algorithm, "kind": row.kind, "set": set_name, "repeats": repeats, "warmup": warmup,
            "threads": threads, "build_only": build_only,
            "published": dataclasses.asdict(row.published) if row.published else None}
    return [sys.executable, "-m", "rvc_optim.benchmark", "--child", json.dumps(spec)]


def _child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    row = Row(spec["algorithm"], spec["kind"], Published(**spec["published"]) if spec["published"] else None)
    params = make_parameters(spec["set"])
    if spec["build_only"]:
        local, grads = _copy(params)
        optimizer = builder_for(row)(local)
        out = {"first_step_s": _timed_step(optimizer, local, grads)}
    else:
        baseline = make_baseline(params, spec["warmup"])
        out = dataclasses.asdict(time_row(row, params, spec["set"], spec["repeats"], spec["warmup"], baseline))
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _run_child(cmd: list[str], cache_dir: str, timeout: float) -> dict | str:
    # The child imports this same source tree, whatever the caller's PYTHONPATH.
    path = [str(Path(__file__).resolve().parents[1])]
    path += [os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ else []
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "PYTHONPATH": os.pathsep.join(path)}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"build did not finish in {timeout:.0f} s"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
        return f"error: child exited {proc.returncode}: {tail}"
    return json.loads(lines[-1][len("RESULT "):])


def time_compiling_row(row: Row, set_name: str, repeats: int, warmup: int, threads: int,
                       build_timeout: float, warm: bool) -> RowResult:
    """A row that compiles, in a fresh child process with an empty inductor cache (its first step is the
    cold build), then, with ``warm``, the build alone again in a second fresh child that finds that cache."""
    with tempfile.TemporaryDirectory(prefix="rvc_optim_inductor_") as cache_dir:
        timed = _run_child(_child_command(row, set_name, repeats, warmup, threads, False), cache_dir,
                           build_timeout + 60 + repeats * 10)
        if isinstance(timed, str):
            floor = optimizer_info(row.algorithm).floor_bytes_per_param
            return RowResult(row.algorithm, row.kind, row.label, set_name, timed, floor=floor)
        result = RowResult(**timed)
        if warm and result.status == "ok":
            again = _run_child(_child_command(row, set_name, 0, 0, threads, True), cache_dir, build_timeout)
            if isinstance(again, dict):
                result.warm_build_s = again["first_step_s"]
    return result


def run(rows: list[Row], sets: list[str], repeats: int, warmup: int, threads: int, build_timeout: float = 600,
        warm: bool = True, builders: dict[tuple[str, str], Builder] | None = None,
        echo=print) -> list[RowResult]:
    """Time every row on every set, in order; rows that compile run in child processes. ``builders``
    replaces the builder of the rows keyed ``(algorithm, label)`` (tests use it)."""
    torch.set_num_threads(threads)
    results: list[RowResult] = []
    for set_name in sets:
        params = make_parameters(set_name)
        baseline = make_baseline(params, warmup)
        for row in rows:
            build = (builders or {}).get((row.algorithm, row.label))
            if row.compiles(sum(p.numel() for p in params)) and build is None:
                result = time_compiling_row(row, set_name, repeats, warmup, threads, build_timeout, warm)
            else:
                result = time_row(row, params, set_name, repeats, warmup, baseline, build)
            results.append(result)
            echo(f"  {set_name:13s} {row.algorithm:18s} {row.label:36s} " + (
                f"{result.ms:9.1f} ms  ratio {result.ratio:5.2f}  first step {result.first_step_s:.2f} s"
                if result.status == "ok" else result.status) + (
                f"  amortised {result.amortised_ms:.1f} ms, {result.matmul_ratio:.2f}x the matmul floor"
                if math.isfinite(result.amortised_ms) else ""), flush=True)
        del params, baseline
        gc.collect()
    return results


# --- result files ----------------------------------------------------------------------------------------

def _cpuinfo(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of Linux's /proc/cpuinfo (empty elsewhere)."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_details(cache_dir: Path = Path("/sys/devices/system/cpu/cpu0/cache"),
                cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What tells two machines with the same model name apart in a result file: the data caches one
    core sees and its widest vector extension, e.g. ``L1d 32K, L2 1024K, L3 32768K, AVX-512``
    (from Linux's sysfs and /proc/cpuinfo; an empty string where neither exists)."""
    caches = []
    for index in sorted(cache_dir.glob("index*")) if cache_dir.is_dir() else []:
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    flags = set(_cpuinfo(cpuinfo).get("flags", "").split())
    vector = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                   if flag in flags), "")
    return ", ".join(caches + ([vector] if vector else []))


def machine_description() -> str:
    """The machine line of every result file: model, core count, system and :func:`cpu_details`."""
    details = cpu_details()
    return (f"{cpu_model()}, {os.cpu_count()} cores ({platform.system()} {platform.machine()})"
            + (f"; {details}" if details else ""))


def write_report(path: str | Path, data: dict[str, Any], markdown: str) -> Path:
    """``path``.json (``data``) and ``path``.md (``markdown``) beside it; returns the .md path."""
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    base.with_suffix(".md").write_text(markdown)
    return base.with_suffix(".md")


def make_header(rows: list[Row], sets: list[str], threads: int, repeats: int, warmup: int,
                command: str | None = None) -> dict[str, Any]:
    libraries = sorted({r.published.library for r in rows if r.published})
    settings = {f"{r.algorithm} / {r.label}": repr(published_kwargs(r.algorithm, r.published))
                for r in rows if r.published}
    return {
        "machine": machine_description(),
        "threads": threads,
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "",
        "torch": torch.__version__,
        "libraries": {lib: library_version(lib) for lib in libraries},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command if command is not None else shlex.join(["python"] + sys.argv),
        "sets": sets,
        "repeats": repeats,
        "warmup": warmup,
        "published_settings": settings,
    }


def _fmt(x: float, spec: str) -> str:
    return format(x, spec) if math.isfinite(x) else ""


def _cell(r: RowResult | None) -> tuple[str, str]:
    if r is None:
        return "", ""
    if r.status != "ok":
        return r.status, ""
    return _fmt(r.ms, ".1f"), _fmt(r.ratio, ".2f")


def format_markdown(header: dict[str, Any], results: list[RowResult], notes: list[str] = ()) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in header["libraries"].items()) or "none"
    lines = [
        "# Step time per optimizer",
        "",
        f"- machine: {header['machine']}; torch threads: {header['threads']}"
        + (f"; load average at start: {header['load_average']}" if header.get("load_average") else ""),
        f"- torch {header['torch']}; published libraries: {libs}",
        f"- date: {header['date']}",
        f"- command: `{header['command']}`",
        f"- {header['repeats']} timed steps (median), {header['warmup']} warm-up steps; ratio = (ms / fused "
        "AdamW ms in the same run) * 28 / the record's floor (B/param)",
    ]
    lines += [f"- {n}" for n in notes]
    if header.get("published_settings"):
        lines += ["", "Published implementations, constructed with:", ""]
        lines += [f"- {k}: `{v}`" for k, v in header["published_settings"].items()]
    for set_name in header["sets"]:
        lines += ["", f"## {set_name}", "",
                  "| optimizer | row | ms/step | ratio to floor | floor B/param | first step (s) | warm build (s) "
                  "| fused AdamW ms |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in results:
            if r.set_name != set_name:
                continue
            ms, ratio = _cell(r)
            lines.append(f"| {r.algorithm} | {r.label} | {ms} | {ratio} | {r.floor:g} | {_fmt(r.first_step_s, '.2f')} "
                         f"| {_fmt(r.warm_build_s, '.1f')} | {_fmt(r.baseline_ms, '.1f')} |")
    return "\n".join(lines + _matmul_tables(header["sets"], results)) + "\n"


def _matmul_tables(sets: list[str], results: list[RowResult]) -> list[str]:
    """The matrix optimizers' rows against the matmul floor, one table per set (none without such rows)."""
    lines = []
    for set_name in sets:
        rows = [r for r in results if r.set_name == set_name and math.isfinite(r.amortised_ms)]
        if not rows:
            continue
        lines += ["", f"### {set_name}: matrix optimizers against the matmul floor", "",
                  "ms per step amortised over whole refresh periods; the refresh step alone; the floor is the "
                  "FLOPs of an amortised step (benchmark.MATMUL_FLOPS) at the float32 matmul rate measured "
                  "before the row.", "",
                  "| optimizer | row | amortised ms | refresh step ms | matmul floor ms | ratio | GFLOP/s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r.algorithm} | {r.label} | {r.amortised_ms:.1f} | {_fmt(r.refresh_ms, '.1f')} "
                  f"| {r.matmul_floor_ms:.1f} | {r.matmul_ratio:.2f} | {r.matmul_gflops:.1f} |" for r in rows]
    return lines


def write_results(path: str | Path, header: dict[str, Any], results: list[RowResult], notes: list[str] = ()) -> Path:
    """``path``.md (the report) and ``path``.json beside it (``path`` without suffix or with .md)."""
    data = {"header": header, "notes": list(notes), "results": [dataclasses.asdict(r) for r in results]}
    return write_report(path, data, format_markdown(header, results, notes)).with_suffix(".json")


def load_results(path: str | Path) -> tuple[dict[str, Any], list[RowResult]]:
    data = json.loads(Path(path).with_suffix(".json").read_text())
    return data["header"], [RowResult(**r) for r in data["results"]]


def readme_table(result_file: str | Path) -> str:
    """The README's benchmark table, from a committed result file: per optimizer and set, the default
    path's ms and ratio to the floor, the compiled path's, its build time cold / warm, and the published
    implementations' ms (ratio) beside them."""
    header, results = load_results(result_file)
    lines = ["| optimizer | set | default ms | ratio | compiled ms | ratio | build cold / warm (s) "
             "| published ms (ratio) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for set_name in header["sets"]:
        names = list(dict.fromkeys(r.algorithm for r in results if r.set_name == set_name))
        for name in names:
            rows = [r for r in results if r.set_name == set_name and r.algorithm == name]
            default = next((r for r in rows if r.kind == "default"), None)
            compiled = next((r for r in rows if r.kind == "compiled"), None)
            default_compiles = compiled is None and default is not None and default.graphs > 0
            built = compiled if compiled is not None else default if default_compiles else None
            build = ""
            if built is not None and math.isfinite(built.first_step_s):
                build = f"{built.first_step_s:.0f} / {_fmt(built.warm_build_s, '.0f') or '-'}"
            compiled_cells = (' | '.join(_cell(compiled)) if compiled else
                              "= default | " if default_compiles else "not run | ")
            published = "; ".join(f"{r.label}: {_cell(r)[0]}" + (f" ({_cell(r)[1]})" if r.status == "ok" else "")
                                  for r in rows if r.kind == "published")
            lines.append(f"| {name} | {set_name} | {' | '.join(_cell(default))} | "
                         f"{compiled_cells} | {build} | {published} |")
    return "\n".join(lines)


SET_LABELS = {"generator": "G", "discriminator": "D", "union": "G+D"}


def latest_default_rows(result_files: Sequence[str | Path]) -> dict[tuple[str, str], tuple[str, list[RowResult]]]:
    """Per (optimizer, set), the rows of the last of ``result_files`` (in the order given) that timed its
    default path, with that file's name: a rerun's rows replace an earlier file's."""
    latest: dict[tuple[str, str], tuple[str, list[RowResult]]] = {}
    for result_file in result_files:
        _, results = load_results(result_file)
        for r in results:
            if r.kind == "default":
                latest[(r.algorithm, r.set_name)] = (Path(result_file).name, [
                    x for x in results if x.algorithm == r.algorithm and x.set_name == r.set_name])
    return latest


def fastest_published(rows: Sequence[RowResult]) -> RowResult | None:
    """The published implementation with the lowest ratio among ``rows`` (those that ran and updated; not
    our own rows at a published port's settings, such as ``rvc-optim PAdam``)."""
    published = [r for r in rows if r.kind == "published" and r.status == "ok" and math.isfinite(r.ratio)
                 and not r.label.startswith("rvc-optim ")]
    return min(published, key=lambda r: r.ratio, default=None)


def summary_table(result_files: Sequence[str | Path]) -> str:
    """The README's summary: per optimizer, the default path's ratio to the floor on each set beside the
    fastest published implementation's in the same run, each from the latest file that timed it
    (:func:`latest_default_rows`). Ratios, not ms: each divides out its own run's AdamW baseline."""
    latest = latest_default_rows(result_files)
    sets = [s for s in SET_LABELS if any(key[1] == s for key in latest)]
    lines = ["| optimizer | default path | " + " | ".join(f"{SET_LABELS[s]}: ours / fastest published" for s in sets)
             + " | from |",
             "|---|---|" + "---|" * len(sets) + "---|"]
    for name in dict.fromkeys(key[0] for key in latest):
        cells, files, paths = [], [], set()
        for set_name in sets:
            file_name, rows = latest.get((name, set_name), ("", []))
            default = next((r for r in rows if r.kind == "default"), None)
            if default is None:
                cells.append("")
                continue
            paths.add("compiled" if default.graphs > 0 else "eager")
            best = fastest_published(rows)
            cells.append(f"{_cell(default)[1] or default.status} / "
                         + (f"{best.ratio:.2f} ({best.label})" if best else "none installed"))
            files.append(file_name.removeprefix("step_time_cpu_").removesuffix(".json"))
        lines.append(f"| {name} | {' / '.join(sorted(paths))} | {' | '.join(cells)} | "
                     f"{', '.join(dict.fromkeys(files))} |")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimizers", nargs="*", default=None,
                        help="registry names to time (default: every available one written here)")
    parser.add_argument("--set", dest="sets", nargs="*", choices=list(SETS), default=None,
                        help="parameter sets (default: generator discriminator union; tiny is synthetic)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first")
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()), help="torch threads")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip the rows that compile (our compiled path, heavyball)")
    parser.add_argument("--no-published", dest="published", action="store_false",
                        help="skip the published implementations")
    parser.add_argument("--no-warm", dest="warm", action="store_false",
                        help="skip the second (warm-cache) build of compiled rows")
    parser.add_argument("--build-timeout", type=float, default=600.0,
                        help="seconds a compiling row may take to build before it is reported as unfinished")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: generator set, Lion, default and published rows, few repeats")
    parser.add_argument("--output", help="write the report to OUTPUT.md and the data to OUTPUT.json")
    parser.add_argument("--readme-table", metavar="RESULT_JSON",
                        help="print the README's benchmark table generated from a result file, and exit")
    parser.add_argument("--readme-summary", metavar="RESULT_JSON", nargs="+",
                        help="print the README's summary of the default path against the fastest published "
                             "implementation, each row from the last of these files that timed it, and exit")


def run_from_args(args: argparse.Namespace) -> int:
    if getattr(args, "readme_table", None):
        print(readme_table(args.readme_table))
        return 0
    if getattr(args, "readme_summary", None):
        print(summary_table(args.readme_summary))
        return 0
    if args.quick:
        names = args.optimizers if args.optimizers is not None else ["Lion"]
        sets = args.sets or ["generator"]
        repeats, warmup, compiled = args.repeats or 3, args.warmup or 1, False
    else:
        names = args.optimizers if args.optimizers is not None else [
            n for n in list_optimizers(available_only=True) if optimizer_info(n).source == "rvc_optim"]
        sets = args.sets or ["generator", "discriminator", "union"]
        repeats, warmup, compiled = args.repeats or 10, args.warmup or 3, args.compiled
    names = [optimizer_info(n).name for n in names]
    rows, notes = plan_rows(names, compiled=compiled, published=args.published)
    header = make_header(rows, sets, args.threads, repeats, warmup)
    print(f"torch {torch.__version__}, {args.threads} threads, sets {', '.join(sets)}")
    for note in notes:
        print("  " + note)
    results = run(rows, sets, repeats, warmup, args.threads, args.build_timeout, args.warm)
    report = format_markdown(header, results, notes)
    print()
    print(report)
    if args.output:
        print(f"wrote {write_results(args.output, header, results, notes)} and its .md")
    return 0 if all(r.status == "ok" for r in results if r.kind != "published") else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2]))
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(run_from_args(_parser.parse_args()))
