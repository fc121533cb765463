"""Multi-token decoding of an MTP checkpoint: `generate(model, input_ids, strategy=..., ...)`.

`decoder.py` (`generate`; Static k and ConfAdapt, batched with ragged acceptance), `stream.py` (`generate_many`:
a request stream with continuous batching), `selfspec.py` (lossless self-verifying decoding: the model checks its
own proposals), `passes.py` (one batched forward: inputs, positions,
4D mask), `readout.py` (logits -> tokens), `result.py` (per-row state, stop rules, `GenerationResult`),
`ragged_cache.py` (which cached keys are real, compaction), `kv_cache.py` (an HF cache whose layers append in
place), `attention.py` (sdpa over grouped KV heads without the per-pass `repeat_kv` copy), `cli.py`
(`mtp-ds generate`). Pure torch + transformers: no DeepSpeed, no recipe.
"""

from mtp_ds.decoding.decoder import STRATEGIES, generate
from mtp_ds.decoding.result import GenerationResult
from mtp_ds.decoding.selfspec import DEFAULT_MASK_LAYOUT, MASK_LAYOUTS
from mtp_ds.decoding.stream import StreamResult, generate_many

__all__ = [
    "DEFAULT_MASK_LAYOUT",
    "MASK_LAYOUTS",
    "STRATEGIES",
    "GenerationResult",
    "StreamResult",
    "generate",
    "generate_many",
]
