"""Multi-token decoding of an MTP checkpoint: `generate`, `generate_many` and the `DecodeSpec` they take.

Pure torch + transformers (no DeepSpeed, no recipe). Names load on first use, so `mtp_ds.decoding.spec`
imports without torch. The module map is in ARCHITECTURE.md; the design in docs/DECODING.md.
"""

import importlib

_EXPORTS = {
    "DEFAULT_MASK_LAYOUT": "spec",
    "MASK_LAYOUTS": "spec",
    "STRATEGIES": "spec",
    "DecodeSpec": "spec",
    "GenerationResult": "result",
    "StreamResult": "stream",
    "generate": "decoder",
    "generate_many": "stream",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mtp_ds.decoding' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mtp_ds.decoding.{_EXPORTS[name]}"), name)
