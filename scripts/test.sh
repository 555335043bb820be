#!/usr/bin/env bash
# Install rvc-optim with its test dependencies in a fresh virtual environment and run the whole suite.
# torch stays at 2.13.0 (constraints.txt) whatever the reference packages ask for.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RVC_OPTIM_VENV:-.venv}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test,prepare,evaluate]"
# Reference packages whose own dependencies must not be installed (see README, "Tests").
"$VENV/bin/python" -m pip install -q -c constraints.txt --no-deps timm==1.0.31 transformers==5.24.0
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$VENV/bin/python" -m pytest -n 2 -q -p no:cacheprovider "$@"
