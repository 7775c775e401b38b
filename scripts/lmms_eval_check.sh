#!/usr/bin/env bash
# The lmms_eval adapter against a real lmms-eval, in a venv of its own: lmms-eval pulls a CUDA torchvision (and timm)
# that break transformers on a CPU machine, so it never goes into mixlab's venv. CI runs this after the main tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LMMS_VENV:-.venv-lmms}"
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -c constraints.txt -e . "pytest>=8,<10"
# lmms-eval 0.7.3 needs filelock < 4 (it patches filelock._api); then drop what breaks transformers and accelerate
pip install -q -c constraints.txt "lmms-eval==0.7.3" "filelock<4"
pip uninstall -y -q torchvision timm
MIXLAB_REQUIRE_LMMS_EVAL=1 python -m pytest -q tests/test_lmms_eval.py
