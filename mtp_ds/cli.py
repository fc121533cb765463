"""`mtp-ds` console entry point: one subcommand per stage, each implemented by the module that owns it.

`mtp-ds --help` lists them (SUBCOMMANDS below), `mtp-ds VERB --help` gives each one's usage. Subcommand modules
are imported only when chosen, so `mtp-ds --help` is fast and a missing optional dependency of one stage does
not break the others.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "train": ("mtp_ds.train", "Train an MTP student from a recipe (run under torchrun)."),
    "prepare-data": ("mtp_ds.train.prepare_data", "Tokenise the recipe's data into the cache (before a launch)."),
    "pretrain": ("mtp_ds.demo.pretrain", "Pretrain a small model as a plain next-token model (the demo's teacher)."),
    "export": ("mtp_ds.checkpoint.export", "Export a DeepSpeed checkpoint to a Hugging Face checkpoint."),
    "import": ("mtp_ds.checkpoint.import_model", "Import a Hugging Face MTP checkpoint (the authors' release)."),
    "generate": ("mtp_ds.decoding.cli", "Generate with Static k / ConfAdapt and show each pass's chunk."),
    "show-layout": ("mtp_ds.render", "Render a packed MTP training sequence and its attention mask."),
    "demo": ("mtp_ds.demo.run", "Run the whole method end to end on a tiny model on CPU."),
}


def version() -> str:
    """The installed distribution's version, from its package metadata (what pip installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("mtp-ds")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed: bash scripts/install.sh)"


def _usage() -> str:
    lines = ["usage: mtp-ds [--version] {" + ",".join(SUBCOMMANDS) + "} ...", ""]
    lines += [f"  {name:<13} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        print(f"mtp-ds {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"mtp-ds: unknown subcommand {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
