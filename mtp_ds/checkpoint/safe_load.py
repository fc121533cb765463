"""Reading DeepSpeed's ZeRO shards with torch's safe unpickler, for export and for resume.

Why: DeepSpeed reads its shards (`*_model_states.pt`, `*_optim_states.pt`) with `torch.load(...,
weights_only=False)`, i.e. full pickle, so a crafted shard would run its own code on the machine that exports or
resumes it. `weights_only_loads()` sets torch's documented switch TORCH_FORCE_WEIGHTS_ONLY_LOAD (torch.load then
uses its safe unpickler whatever the call site passes) only for the duration of the call, and allowlists with
`torch.serialization.safe_globals` exactly the non-tensor types DeepSpeed stores in those files.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch.load: weights_only=True, whatever the caller passes
FORCE_FULL_PICKLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # its opposite: torch.load refuses to run with both set
SHARD_PATTERNS = ("*_model_states.pt", "*_optim_states.pt")  # what DeepSpeed unpickles, in zero_to_fp32's order


def deepspeed_shard_types() -> list[type]:
    """The non-tensor types DeepSpeed pickles into a ZeRO checkpoint's shards (found by loading a real one).

    Model states hold only tensors and plain containers. The ZeRO optimizer's state in `*_optim_states.pt` adds
    `zero_stage` (a ZeroStageEnum) and `loss_scaler`: what DeepSpeed's CreateLossScaler built, a LossScaler
    (fp32, bf16: scale 1) or, with fp16 dynamic loss scaling, a DynamicLossScaler.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


@contextmanager
def weights_only_loads():
    """Inside: every torch.load uses the safe unpickler, which also accepts DeepSpeed's shard types.

    Process-wide while it lasts (an environment variable, read by each torch.load call): export and resume call
    it from their one working thread (the trainer's lock-heartbeat and launcher-watch threads never load), and
    the previous environment and allowlist are restored on the way out.
    """
    saved = {name: os.environ.pop(name, None) for name in (FORCE_WEIGHTS_ONLY, FORCE_FULL_PICKLE)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_shard_types()):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """torch's reason in one line, e.g. 'Unsupported global: GLOBAL getattr was not an allowed global by default',
    without its advice to re-run with weights_only=False (the unsafe load this module exists to prevent)."""
    detail = str(error).split("WeightsUnpickler error:", 1)[-1]
    advice = ("weights_only", "Weights only load failed", "Check the documentation", "file an issue")
    lines = (line.strip() for line in detail.splitlines())
    reason = next((line for line in lines if line and not any(words in line for words in advice)), "")
    return reason.split(". Please use", 1)[0].rstrip(".") or "torch's safe unpickler refused it"


def _globals_in_pickles(data: bytes) -> list[str]:
    """Every global (`module.name`) the pickles in `data` name, read from their opcodes, never run. A legacy torch
    file is several pickles in a row. STACK_GLOBAL takes the two strings pushed last (directly or from the memo),
    as Python's pickler writes them; a pickle that builds the names otherwise names fewer (the reason falls back
    to torch's)."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        memo: dict[int, object] = {}
        last = None  # what the previous opcode pushed, for the memo
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if opcode.name == "MEMOIZE":
                    memo[len(memo)] = last
                elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = last
                elif opcode.name not in ("FRAME", "PROTO"):
                    last = memo.get(arg) if opcode.name in ("GET", "BINGET", "LONG_BINGET") else arg
                    if isinstance(last, str) and opcode.name not in ("GLOBAL", "INST"):
                        strings.append(last)
        except ValueError:  # not a pickle (any more): what was read so far is all there is
            break
    return list(dict.fromkeys(found))


def forbidden_globals(shard: Path) -> list[str]:
    """The globals in `shard`'s pickle that the safe unpickler does not allow, DeepSpeed's types allowed; [] when
    none can be named. A torch.save zip file: torch's own check; any other pickle (DeepSpeed never writes one):
    every global outside torch."""
    allowed = {f"{kind.__module__}.{kind.__qualname__}" for kind in deepspeed_shard_types()}
    allowed.add("collections.OrderedDict")  # torch allows it; DeepSpeed's parameter shapes are one
    if zipfile.is_zipfile(shard):
        try:
            with torch.serialization.safe_globals(deepspeed_shard_types()):
                return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(shard))
        except Exception:  # a pickle torch's check cannot read (e.g. a newer protocol): read it ourselves
            with zipfile.ZipFile(shard) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
    else:
        data = shard.read_bytes()
    return [name for name in _globals_in_pickles(data) if name not in allowed and not name.startswith("torch.")]


def _refusal_reason(shard: Path, error: pickle.UnpicklingError) -> str:
    """'forbidden global: posix.system' where the pickle names one, else torch's reason (without its advice)."""
    try:
        names = forbidden_globals(shard)
    except (OSError, ValueError, RuntimeError, zipfile.BadZipFile):
        names = []
    if names:
        return f"forbidden global{'s' if len(names) > 1 else ''}: {', '.join(names)}"
    return _unpickler_reason(error)


def refused_shard(checkpoint: Path) -> tuple[Path, str] | None:
    """The first shard the safe unpickler refuses, and why (zero_to_fp32's error does not say which file). A shard
    that cannot be read at all (truncated) is not a refusal: the manifest's check names it."""
    for pattern in SHARD_PATTERNS:
        for shard in sorted(checkpoint.glob(pattern)):
            try:  # mmap where torch can: an optimizer shard's tensors are not read, only its pickle
                torch.load(shard, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(shard))
            except pickle.UnpicklingError as error:
                return shard, _refusal_reason(shard, error)
            except (RuntimeError, OSError, EOFError):
                continue
    return None
