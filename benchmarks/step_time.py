#!/usr/bin/env python
"""Time one optimizer step on RVC v2's generator and discriminator parameters.

Same as ``rvc-optim bench``; see :mod:`rvc_optim.benchmark` for what is measured: for each of our
optimizers the default path, the compiled path (cold and warm build) and every published implementation
of the same algorithm that is installed (``rvc_optim.benchmark.PUBLISHED``; the test extra installs
them), in one interleaved run, each as a ratio to the record's memory floor::

    python benchmarks/step_time.py --optimizers Lion Adan --set discriminator --threads 2 --output benchmarks/results/NAME
"""

from __future__ import annotations

import argparse
import sys

from rvc_optim import benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmark.add_arguments(parser)
    sys.exit(benchmark.run_from_args(parser.parse_args()))
