"""Checkpoints of a run and what users take away from them.

`store.py`: atomic training checkpoints (DeepSpeed shards, every rank's RNG, sampler position, the
effective config, a `COMPLETE` marker written last) and finding the one to resume. `export.py`:
`mtp-ds export`, a checkpoint -> a plain Hugging Face checkpoint that decodes with `mtp_ds.decoding`.
"""
