"""`mtp-ds prepare-data RECIPE [key=value ...]`: tokenise a recipe's data into the datasets cache, once, before a launch.

Why: under torchrun rank 0 tokenises while the other ranks wait in a barrier that the process group's timeout
(`train.distributed_timeout_minutes`) bounds; tokenising Magpie, or a slow Hub mirror, can outlast it. Run once
before the launch (the slurm/ scripts do), the trainer then only loads the cache. One process, no process group,
no model: the trainer's own tokenizer (`load_tokenizer`) and `build_datasets`, so the cache is the one it reads.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from mtp_ds.config import ConfigError, Recipe, load_recipe
from mtp_ds.data import TokenizedData, build_datasets, source_paths
from mtp_ds.models.loading import load_tokenizer

USAGE = "usage: mtp-ds prepare-data RECIPE.yaml [section.key=value ...]   (the trainer's arguments)"


def prepare_data(recipe: Recipe) -> TokenizedData:
    """The recipe's data tokenised as `TrainState.build` tokenises it (tokenizer before `<MTP>` is added)."""
    return build_datasets(recipe, load_tokenizer(recipe.model))


def summary(recipe: Recipe, data: TokenizedData) -> str:
    """One line: rows in, samples out, what was dropped and skipped, where the cache is."""
    files = [entry["filename"] for entry in data.train.cache_files]
    cache = str(Path(files[0]).parent) if files else "none (the data set is in memory)"
    skipped = f"{data.skipped.count} skipped" + (f", the first: {data.skipped.first}" if data.skipped.count else "")
    return (
        f"{', '.join(source_paths(recipe.data))}: {data.num_raw} rows -> {len(data.train)} train + "
        f"{len(data.validation)} validation samples ({data.num_dropped} dropped: empty response or prompt fills "
        f"data.seq_len={recipe.data.seq_len}; {skipped}); cache: {cache}"
    )


def main(argv: list[str] | None = None) -> int:
    """The exit code: 0 done, 2 a config error (one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__.splitlines()[0]}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if not argv or "=" in argv[0]:
            raise ConfigError(USAGE)
        recipe = load_recipe(argv[0], argv[1:])
        data = prepare_data(recipe)
    except ConfigError as error:
        print(f"mtp-ds prepare-data: {error}", file=sys.stderr)
        return 2
    print(f"mtp-ds prepare-data: {summary(recipe, data)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
