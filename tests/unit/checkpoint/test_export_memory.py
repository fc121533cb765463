"""`mtp-ds export`'s host memory: the fp32 state dict is converted tensor by tensor, so a bf16 export holds about
2 bytes per parameter (plus one fp32 tensor), not the fp32 dict and its bf16 copy at once (6 bytes per parameter).

The checkpoint is a ZeRO-3 checkpoint of 2 ranks written in DeepSpeed's file format (the model-states and
optimizer-states files zero_to_fp32 reads) for a model of a few million parameters, so that it is made in
milliseconds without a process group; `mtp-ds export` of a real run's shards is in the integration tier.
"""

import ctypes
import threading
import time

import pytest
import torch
from helpers import zero3_checkpoint

from mtp_ds.checkpoint.export import export_checkpoint
from mtp_ds.models.tiny import tiny_model


def anonymous_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise OSError("no RssAnon in /proc/self/status")


def peak_anonymous_growth(work) -> int:
    """Bytes of anonymous memory (not the page cache of mapped files) that `work()` adds at its peak, sampled
    every 0.5 ms. Allocations of 64 KiB and more are mapped fresh while it runs, so memory that the allocator
    kept from earlier tests cannot hide a peak."""
    libc = ctypes.CDLL("libc.so.6")
    m_mmap_threshold = -3
    libc.malloc_trim(0)
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    baseline, peak, done = anonymous_kib(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anonymous_kib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's own threshold once it has adapted
    return (peak[0] - baseline) * 1024


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt"), reason="glibc's mallopt (Linux) is needed")
def test_a_bf16_export_holds_under_5_bytes_per_parameter(tmp_path):
    model = tiny_model("qwen3", vocab_size=4096, hidden_size=256, num_layers=4, intermediate_size=1024)
    params = sum(p.numel() for p in model.parameters())
    checkpoint = zero3_checkpoint(tmp_path / "step00000004", model)
    del model
    export_checkpoint(checkpoint, tmp_path / "warm-up")  # imports and first-call setup are not the export's memory
    growth = peak_anonymous_growth(lambda: export_checkpoint(checkpoint, tmp_path / "out"))
    assert params > 3_000_000 and growth / params < 5.0, f"{growth / params:.2f} bytes per parameter"

    from safetensors.torch import load_file

    exported = load_file(tmp_path / "out" / "model.safetensors")
    reference = tiny_model("qwen3", vocab_size=4096, hidden_size=256, num_layers=4, intermediate_size=1024)
    assert exported.keys() == reference.state_dict().keys()
    assert all(torch.equal(exported[name], value.bfloat16()) for name, value in reference.state_dict().items())
