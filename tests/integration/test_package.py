"""The package seen from a fresh interpreter: `python -m mtp_ds.train` is an entry point, and importing the
config room pulls in none of the heavy packages (a recipe error must be instant).

Why subprocesses: only a new interpreter shows what `python -m` runs and what an import alone loads.
"""

import os
import subprocess
import sys

from helpers import REPO

PACKAGE = REPO / "mtp_ds"


def test_python_dash_m_mtp_ds_train_is_a_package_entry():
    assert (PACKAGE / "train" / "__main__.py").exists()
    out = subprocess.run(
        [sys.executable, "-m", "mtp_ds.train"],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "RANK": "0", "WORLD_SIZE": "1"},
        timeout=120,
    )
    assert out.returncode == 2 and "usage: mtp-ds train RECIPE.yaml" in out.stderr, out.stderr


def test_config_import_is_light():
    code = "import sys, mtp_ds.config, mtp_ds.config.run; print(any(m in sys.modules for m in ('torch', 'datasets', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
