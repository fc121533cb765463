"""What slurm/common.sh asks mtp_ds/config/launch.py: the job's rendezvous port and the torchrun flags this torch
defines (the Slurm tests of tests/integration/test_slurm.py run the scripts themselves)."""

import pytest

from mtp_ds.config.launch import (
    EPHEMERAL_PORTS,
    main,
    rendezvous_port,
    torchrun_options,
    torchrun_signal_flags,
    torchrun_source,
)

# `torchrun --help` as torch 2.6 prints it (trimmed): neither flag, and a help text that names others' options
HELP_2_6 = """\
usage: torchrun [-h] [--nnodes NNODES] [--nproc-per-node NPROC_PER_NODE]
                [--rdzv-backend RDZV_BACKEND] [--rdzv-endpoint RDZV_ENDPOINT]
                [--rdzv-id RDZV_ID] [--rdzv-conf RDZV_CONF] [--standalone]
                [--max-restarts MAX_RESTARTS] [--monitor-interval MONITOR_INTERVAL]
                [--start-method {spawn,fork,forkserver}] [--role ROLE] [-m]
                [--no-python] [--run-path] [--log-dir LOG_DIR] [-r REDIRECTS]
                [-t TEE] [--local-ranks-filter LOCAL_RANKS_FILTER]
                [--node-rank NODE_RANK] [--master-addr MASTER_ADDR]
                [--master-port MASTER_PORT] [--local-addr LOCAL_ADDR]
                [--logs-specs LOGS_SPECS]
                training_script ...
"""
# torch 2.9: --signals-to-handle, not yet --shutdown-timeout
HELP_2_9 = HELP_2_6.replace(
    "[--logs-specs LOGS_SPECS]", "[--logs-specs LOGS_SPECS]\n                [--signals-to-handle SIGNALS_TO_HANDLE]"
)
HELP_NEW = HELP_2_9.replace(
    "[--signals-to-handle SIGNALS_TO_HANDLE]",
    "[--signals-to-handle SIGNALS_TO_HANDLE]\n                [--shutdown-timeout SHUTDOWN_TIMEOUT]",
)
SIGNALS = "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def test_rendezvous_port_is_below_the_ephemeral_range_and_the_same_on_every_node():
    # the old rule, 20000 + id % 20000, put over a third of job ids in 32768-39999, where the kernel hands out the
    # source ports of outgoing connections: the rendezvous listener could find its port taken
    ports = [rendezvous_port(job_id) for job_id in range(200_000)]
    assert all(1024 <= port < EPHEMERAL_PORTS[0] for port in ports)
    assert len(set(ports)) == EPHEMERAL_PORTS[0] - 20000  # every port of the range is used: few clashes
    assert [rendezvous_port(job_id) for job_id in (None, 1, 7, 4242, 12768, 12800, 19999)] == [
        20000,
        20001,
        20007,
        24242,
        20000,
        20032,
        27231,
    ]


@pytest.mark.parametrize(
    "help_text, flags, warned",
    [
        (HELP_NEW, [SIGNALS, "--shutdown-timeout=240"], []),
        (HELP_2_9, [SIGNALS], ["--shutdown-timeout"]),
        (HELP_2_6, [], ["--signals-to-handle", "--shutdown-timeout"]),
    ],
    ids=["new", "2.9", "2.6"],
)
def test_torchrun_flags_follow_what_its_help_defines(help_text, flags, warned):
    kept, warnings = torchrun_signal_flags(torchrun_options(help_text), 240)
    assert kept == flags
    assert len(warnings) == len(warned)
    for warning, flag in zip(warnings, warned):
        assert flag in warning and "\n" not in warning
    if "--shutdown-timeout" in warned:  # what the missing flag costs, in numbers
        assert "30 s" in warnings[-1] and "240 s" in warnings[-1]
    if "--signals-to-handle" in warned:
        assert "SIGUSR1" in warnings[0]


def test_options_are_whole_long_options_only():
    text = "--signals-to-handle-v2 X  x--shutdown-timeout  '--shutdown_timeout'  [-m]"
    assert torchrun_options(text) == {"--signals-to-handle-v2", "--shutdown_timeout"}
    kept, _ = torchrun_signal_flags(torchrun_options(text), 240)
    assert kept == []


def test_without_torch_every_flag_is_kept_with_a_warning():
    kept, warnings = torchrun_signal_flags(None, 60)
    assert kept == [SIGNALS, "--shutdown-timeout=60"] and len(warnings) == 1


def test_the_installed_torchrun_table_agrees_with_its_parser():
    """The table is read as text (no torch import, so a dry run needs no torch): it must name exactly the
    options the parser has, for the two flags the launch cares about."""
    from torch.distributed.run import get_args_parser

    parsed = {option for action in get_args_parser()._actions for option in action.option_strings}
    scanned = torchrun_options(torchrun_source())
    for flag in ("--signals-to-handle", "--shutdown-timeout", "--nnodes"):
        assert (flag in scanned) == (flag in parsed), flag


def test_cli(capsys):
    assert main(["port", "4242"]) == 0 and capsys.readouterr().out == "24242\n"
    assert main(["torchrun-flags", "240"]) == 0
    assert capsys.readouterr().out.split() == [SIGNALS, "--shutdown-timeout=240"]  # the locked torch has both
    assert main(["port", "abc"]) == 2 and capsys.readouterr().err.startswith("error: usage:")
