#!/usr/bin/env python
"""The convergence benchmark, as a script: the same code and flags as ``rvc-optim evaluate``.

    python benchmarks/convergence.py --optimizers AdamW,Lion --steps 50 --seeds 1
"""

from __future__ import annotations

import argparse
import sys

from rvc_optim.evaluate import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=cli.DESCRIPTION)
    cli.add_arguments(parser)
    try:
        return cli.run(parser.parse_args(argv))
    except ValueError as err:
        print(f"convergence: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
