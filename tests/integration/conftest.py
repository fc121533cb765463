"""Integration-tier fixtures: one real trained run for the whole session, and the installed package.

`trained_run`: the tiny recipe on 2 torchrun ranks (gloo, ZeRO-3 student, DeepSpeed inference-engine teacher),
6 steps with checkpoints and validation at 3 and 6. Every test that needs a real checkpoint, real metrics or a
finished run reads it (and copies it before changing anything) instead of launching its own.
"""

import shutil
from pathlib import Path

import pytest
from helpers import PTH_NAME, TRAINED_OVERRIDES, installed_pth, run_trainer


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The finished run directory (read-only by convention: use `copy_of_trained_run` to change it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    run_trainer(out, *TRAINED_OVERRIDES)
    return out


@pytest.fixture(scope="session")
def exported_model(trained_run, tmp_path_factory) -> Path:
    """The trained run's last checkpoint exported to a plain fp32 Hugging Face checkpoint (`mtp-ds export`)."""
    from mtp_ds.checkpoint.export import main as export_main

    out = tmp_path_factory.mktemp("exported") / "mtp"
    assert export_main([str(trained_run / "step00000006"), str(out), "--dtype", "float32"]) == 0
    return out


@pytest.fixture
def copy_of_trained_run(trained_run, tmp_path) -> Path:
    """A private copy of the trained run (checkpoints step00000003 and step00000006, DONE), to damage or resume."""
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


@pytest.fixture(scope="session")
def require_installed():
    if installed_pth() is None:
        pytest.fail(f"{PTH_NAME} is not in site-packages: install the package first (pip install -e .)")
