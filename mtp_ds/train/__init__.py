"""The trainer: `python -m mtp_ds.train RECIPE [key=value ...]` under torchrun / srun (or `mtp-ds train`).

`loop.py` is the training loop, read top to bottom; `state.py` holds what a step reads (`TrainState`);
`distributed.py` starts the process group; `tracking.py` keeps the metrics file and turns signals into a
save-and-stop at the next step boundary. How it all works: docs/TRAINING.md.
"""


def main(argv: list[str] | None = None) -> int:
    """`mtp-ds train` / `python -m mtp_ds.train` (see mtp_ds.train.loop.main)."""
    from mtp_ds.train.loop import main as loop_main

    return loop_main(argv)
