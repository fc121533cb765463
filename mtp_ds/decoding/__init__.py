"""Multi-token decoding of an MTP checkpoint: `generate(model, input_ids, strategy=..., ...)`.

`decoder.py` (Static k and ConfAdapt, batched with ragged acceptance), `ragged_cache.py` (which cached keys
are real, compaction), `kv_cache.py` (an HF cache whose layers append in place), `attention.py` (sdpa over
grouped KV heads without the per-pass `repeat_kv` copy), `cli.py` (`mtp-ds generate`). Pure torch +
transformers: no DeepSpeed, no recipe.
"""

from mtp_ds.decoding.decoder import STRATEGIES, GenerationResult, generate

__all__ = ["STRATEGIES", "GenerationResult", "generate"]
