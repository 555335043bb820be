#!/usr/bin/env python
"""Time one optimizer step on RVC v2's generator and discriminator parameters.

Same as ``rvc-optim bench``; see :mod:`rvc_optim.benchmark` for what is measured and how the ratio to
the memory-traffic floor is calibrated. ``--references`` also times the published implementation of
each algorithm (the test extra installs them), side by side in the same run::

    python benchmarks/step_time.py --optimizers Lion Adan --set generator --threads 2 --references
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from rvc_optim import benchmark

# The published implementation each of ours is measured against (what issue #9 names): pytorch_optimizer's
# where it has one, the authors' ranger21 for Ranger21, torch's foreach AdamW for AnyPrecisionAdamW (always
# in the table as "AdamW (foreach)"), pytorch_optimizer's ScheduleFreeAdamW for ScheduleFreeAdam.
REFERENCES = {
    "Lion": ("pytorch_optimizer", "Lion", {"lr": 1e-4}),
    "Adan": ("pytorch_optimizer", "Adan", {"lr": 1e-4}),
    "ScheduleFreeAdamW": ("pytorch_optimizer", "ScheduleFreeAdamW", {"lr": 1e-3}),
    "ScheduleFreeSGD": ("pytorch_optimizer", "ScheduleFreeSGD", {"lr": 1e-2}),
    "Prodigy": ("pytorch_optimizer", "Prodigy", {"lr": 1.0}),
    "DAdaptAdam": ("pytorch_optimizer", "DAdaptAdam", {"lr": 1.0}),
    "DAdaptAdaGrad": ("pytorch_optimizer", "DAdaptAdaGrad", {"lr": 1.0}),
    "DAdaptSGD": ("pytorch_optimizer", "DAdaptSGD", {"lr": 1.0}),
    "Ranger21": ("ranger21", "Ranger21", {"lr": 1e-4, "num_epochs": 1, "num_batches_per_epoch": 1000,
                                          "logging_active": False}),
}


def reference_rows(names: list[str]) -> list[tuple[str, benchmark.Builder]]:
    rows = []
    for name, (module, cls_name, kwargs) in REFERENCES.items():
        if names and name not in names:
            continue
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except ImportError as err:
            print(f"  no reference for {name}: {err}")
            continue

        def build(params, cls=cls, kwargs=kwargs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimizer = cls(params, **kwargs)
            if hasattr(optimizer, "train") and "ScheduleFree" in cls_name:
                optimizer.train()
            return optimizer

        rows.append((f"{name} reference ({module}.{cls_name})", build))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmark.add_arguments(parser)
    parser.add_argument("--references", action="store_true", help="also time the published implementations")
    args = parser.parse_args()
    extra = reference_rows(args.optimizers or []) if args.references else []
    sys.exit(benchmark.run_from_args(args, extra))
