"""Checkpoints of a run: written atomically, verified, resumed, owned by one run, exported (docs/CHECKPOINTS.md)."""
