"""Host-device synchronisations per decoding pass. On a GPU, reading a tensor on the host (`.tolist()`, `.item()`,
`bool()`, `int()`) waits for every queued kernel, and so does a copy of a host list to the device
(`torch.tensor(list, device=...)`, a pageable copy). Once a pass's forward is queued the decoder must not wait
for it before queuing the read of its logits: the only synchronisation after the forward is the read itself.

Counted on CPU with a `TorchFunctionMode` that records, in order, the decoder's reads and copies (by the line
of mtp_ds that makes them) and the model's forward calls.
"""

import traceback

import pytest
import torch
from helpers import make_mtp_model
from torch.overrides import TorchFunctionMode

from mtp_ds.decoding import generate, generate_many

READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__"}


class HostDeviceEvents(TorchFunctionMode):
    """("read" | "copy" | "forward", where) in order: reads of tensors on the host and host-list copies to a
    device made by mtp_ds code, and the model's forward calls."""

    def __init__(self):
        super().__init__()
        self.events = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in READS or (func is torch.tensor and "device" in kwargs):
            ours = [frame for frame in traceback.extract_stack()[:-1] if "/mtp_ds/" in frame.filename]
            if ours:
                where = f"{ours[-1].filename.split('/mtp_ds/')[-1]}:{ours[-1].lineno}"
                self.events.append(("copy" if func is torch.tensor else "read", where))
        return func(*args, **kwargs)


def after_each_forward(events):
    """Per forward: the host-device events after it, up to the next forward."""
    forwards = [i for i, (kind, _) in enumerate(events) if kind == "forward"]
    return [events[at + 1 : end] for at, end in zip(forwards, [*forwards[1:], len(events)])]


@pytest.mark.parametrize(
    "mode, setting",
    [
        ("generate", dict(strategy="confadapt", k_max=4, threshold=0.5)),
        ("generate_many", dict(strategy="confadapt", k_max=4, threshold=0.5)),
        ("generate", dict(strategy="static", k=3)),
        ("generate_many", dict(strategy="selfspec", k_max=4)),
    ],
    ids=["confadapt", "confadapt-stream", "static", "selfspec-stream"],
)
def test_after_a_forward_the_first_synchronisation_is_the_read_of_its_logits(setting, mode):
    model, _, mask_tokens = make_mtp_model("qwen3")
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # confidences spread over (0, 1): ConfAdapt rows keep different counts
    recorder = HostDeviceEvents()
    model.register_forward_pre_hook(lambda *args: recorder.events.append(("forward", "model")))
    prompts = [[1, 5, 6, 7], [1, 8, 9, 10, 11, 12], [1, 5, 6, 7, 9], [1, 5, 5]]
    with recorder:
        if mode == "generate":
            width = max(map(len, prompts))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
            result = generate(
                model, ids, attention_mask=ids != 0, mtp_token_id=mask_tokens, max_new_tokens=16, **setting
            )
        else:
            result = generate_many(model, prompts, max_rows=2, mtp_token_id=mask_tokens, max_new_tokens=16, **setting)
    passes = after_each_forward(recorder.events)
    assert len(passes) == result.num_forward_passes > 4
    if setting["strategy"] == "confadapt":
        assert len({count for row in result.tokens_per_pass for count in row[:3]}) > 1  # ragged passes happened
    for after in passes:
        assert after and after[0][0] == "read", after  # the read of its logits first: nothing waits before it
    # per pass: the read, the next inputs' copy, selfspec's kept-prefix copy, a row leaving, a prefill's prompt
    assert sum(map(len, passes)) <= 4 * len(passes), recorder.events
