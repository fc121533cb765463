"""The dependency floors: pyproject's transformers floor is a release without the published code-execution flaws,
and CI's floor job (locks/transformers-floor.txt, `.ci/run` stage floor) installs exactly that floor."""

import re

from helpers import REPO
from packaging.version import Version

# transformers < 5.3.0 executes code a config.json names (CVE-2026-4372, through _attn_implementation_internal,
# bypassing trust_remote_code); < 5.5.0 lets a config override trust_remote_code (CVE-2026-5241)
SECURE_TRANSFORMERS = Version("5.5.0")


def _pyproject_floor() -> Version:
    match = re.search(r'"transformers>=([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject.toml has no transformers>= floor"
    return Version(match.group(1))


def test_transformers_floor_has_no_published_code_execution_flaw():
    assert _pyproject_floor() >= SECURE_TRANSFORMERS


def test_ci_floor_job_installs_pyprojects_floor():
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "locks" / "transformers-floor.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert Version(pins["transformers"]) == _pyproject_floor()
