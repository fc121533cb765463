"""Where relative paths in recipes point: the working directory first, then the repository.

Why one place: recipes name `ds_configs/zero3_bf16.json` or `tests/fixtures/...` relative to the repo, and
are launched from anywhere (a Slurm job's working directory, a test's tmp dir). `REPO_ROOT` is computed from
this file's depth in the package, so moving this file means changing `PACKAGE_DIR` (a test holds it).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../mtp_ds
REPO_ROOT = PACKAGE_DIR.parent  # the checkout (recipes/, ds_configs/, eval/ live here)


def resolve_path(path: str) -> Path:
    """A recipe path: absolute as is; relative to the working directory if it exists there, else to the repo."""
    candidate = Path(os.path.expanduser(path))
    if candidate.is_absolute() or candidate.exists():
        return candidate
    in_repo = REPO_ROOT / candidate
    return in_repo if in_repo.exists() else candidate
