#!/usr/bin/env python
"""Time one optimizer step on RVC v2's generator and discriminator parameters.

Same as ``rvc-optim bench``; see :mod:`rvc_optim.benchmark` for what is measured and how the ratio to
the memory-traffic floor is calibrated. Example::

    python benchmarks/step_time.py --optimizers Lion Adan --set generator --threads 2 --output results.md
"""

import argparse
import sys

from rvc_optim import benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmark.add_arguments(parser)
    sys.exit(benchmark.run_from_args(parser.parse_args()))
