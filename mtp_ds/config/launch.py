"""What `slurm/common.sh` derives for a launch: the rendezvous port and the torchrun flags this torch knows.

Why Python and one place: both are rules with edge cases a shell one-liner hid. The port must avoid Linux's
ephemeral range (32768-60999, where the kernel hands out outgoing connections, so a listener there can find its
port taken). The signal flags need torch >= 2.9 (`--signals-to-handle`) and a newer torch still
(`--shutdown-timeout`), while pyproject allows torch >= 2.6: a flag this torchrun does not define is left out,
with one line on stderr saying what that costs, instead of torchrun refusing the whole launch. The flags are
read from torchrun's own argument table (`torch/distributed/run.py`, found without importing torch: a dry run
needs no torch). Stdlib only; run as `python -m mtp_ds.config.launch port JOB_ID | torchrun-flags SECONDS`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

EPHEMERAL_PORTS = (32768, 60999)  # Linux's default net.ipv4.ip_local_port_range
FIRST_PORT = 20000
# what the ranks treat as "checkpoint at the next step boundary and exit" (mtp_ds/train/tracking.py), plus
# torchrun's own defaults (SIGHUP, SIGQUIT), all forwarded to the ranks
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
SIGNALS_FLAG = "--signals-to-handle"
SHUTDOWN_FLAG = "--shutdown-timeout"
TORCHRUN_DEFAULT_SHUTDOWN_S = 30  # torchrun's fixed wait before SIGKILL where it has no --shutdown-timeout


def rendezvous_port(job_id: int | None) -> int:
    """The job's c10d port: FIRST_PORT + job_id modulo the ports below the ephemeral range (20000-32767).

    Deterministic, so every node of a job computes the same port; two jobs clash only when their ids differ by a
    multiple of 12768 and they share a first node."""
    return FIRST_PORT + (job_id or 0) % (EPHEMERAL_PORTS[0] - FIRST_PORT)


def torchrun_options(text: str) -> set[str]:
    """The long options named in torchrun's `--help` text or in its argument table's source."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text))


def torchrun_signal_flags(options: set[str] | None, shutdown_timeout: int) -> tuple[list[str], list[str]]:
    """(flags for torchrun, one warning line per flag left out). `options=None`: torchrun's table was not
    found (no torch here, e.g. a dry run on a login node): every flag is kept, with a warning."""
    flags = [f"{SIGNALS_FLAG}={FORWARDED_SIGNALS}", f"{SHUTDOWN_FLAG}={shutdown_timeout}"]
    if options is None:
        return flags, ["mtp-ds: torch is not installed here: torchrun's signal flags are not checked"]
    kept, warnings = [], []
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in options:
            kept.append(flag)
        elif name == SIGNALS_FLAG:
            warnings.append(
                f"mtp-ds: this torchrun has no {SIGNALS_FLAG} (torch < 2.9) and cannot forward SIGUSR1: it is "
                "started with SIGUSR1 ignored (under srun the ranks get Slurm's SIGUSR1 themselves; without "
                "Slurm the script passes SIGUSR1 on as SIGTERM)"
            )
        else:
            warnings.append(
                f"mtp-ds: this torchrun has no {SHUTDOWN_FLAG}: after a signal it gives the ranks its fixed "
                f"{TORCHRUN_DEFAULT_SHUTDOWN_S} s to checkpoint, not MTP_DS_SHUTDOWN_TIMEOUT={shutdown_timeout} s; "
                "a torch with the flag fixes that"
            )
    return kept, warnings


def torchrun_source() -> str | None:
    """The source of torchrun's argument table in the torch this Python would import, without importing it."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        table = Path(location, "distributed", "run.py")
        if table.is_file():
            return table.read_text(encoding="utf-8", errors="replace")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m mtp_ds.config.launch port JOB_ID | torchrun-flags SHUTDOWN_TIMEOUT_S"
    if len(argv) != 2 or argv[0] not in ("port", "torchrun-flags") or not argv[1].isdigit():
        print(f"error: {usage}", file=sys.stderr)
        return 2
    if argv[0] == "port":
        print(rendezvous_port(int(argv[1])))
        return 0
    source = torchrun_source()
    flags, warnings = torchrun_signal_flags(None if source is None else torchrun_options(source), int(argv[1]))
    for warning in warnings:
        print(warning, file=sys.stderr)
    print(" ".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
