"""The frozen teacher (the paper: a frozen copy of the initial checkpoint): every way of running it, behind one call.

The objective asks one question (`teacher(batch, input_ids, rows, cols, want=...)`: argmax ids or log-probs at
given slots of a student-forced packed batch), whatever `teacher.mode` (docs/METHOD.md section 3): `replica`
(`LocalTeacher`, a plain copy per rank), `inference` (`TensorParallelTeacher`: `deepspeed.init_inference`, AutoTP
over `tp_size` consecutive ranks; its TP group gathers the ranks' packed inputs, runs once, each keeps its slots)
or `zero3` (optimizer-less ZeRO-3, optionally offloading to CPU). Always causal: slot j is blind to later proposals.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from mtp_ds.batching import PackedBatch
from mtp_ds.objective import packed_hidden_states, suppress_mask_tokens


class LocalTeacher:
    """The frozen teacher as a plain module on this rank ("replica" mode; the DeepSpeed inference engine's
    module in "inference" mode). Always causal: the chain rule needs slot j blind to later proposals."""

    def __init__(self, model, *, chunk_size: int = 4096):
        self.model = model
        self.chunk_size = chunk_size

    @torch.no_grad()
    def __call__(
        self, batch: PackedBatch, input_ids, rows, cols, *, want: str, mask_token_ids=(), temperature: float = 1.0
    ):
        hidden = packed_hidden_states(self.model, batch, input_ids, bidirectional=False)[rows, cols]
        head = self.model.get_output_embeddings()
        outputs = []
        for chunk in hidden.split(self.chunk_size):
            # (1, rows, H): DeepSpeed AutoTP's sharded LM head slices a 3-D input
            logits = suppress_mask_tokens(head(chunk.unsqueeze(0))[0].float(), mask_token_ids)
            outputs.append(logits.argmax(-1) if want == "argmax" else F.log_softmax(logits / temperature, -1))
        if not outputs:
            return torch.zeros((0,), dtype=torch.long, device=hidden.device)
        return torch.cat(outputs)


DESCRIPTOR_FIELDS = ("position_ids", "anchor_of", "region_of", "mask_slot", "valid")


def _gather_padded(tensor: torch.Tensor, group, world: int, pad_value) -> list[torch.Tensor]:
    """all_gather of tensors whose first two dims differ across ranks (padded, then trimmed back)."""
    import torch.distributed as dist

    shape = torch.tensor(list(tensor.shape) + [0] * (2 - tensor.dim()), device=tensor.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    target = [int(max(s[d] for s in shapes)) for d in range(tensor.dim())]
    padded = torch.full(target, pad_value, dtype=tensor.dtype, device=tensor.device)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return [g[tuple(slice(0, int(s[d])) for d in range(tensor.dim()))] for g, s in zip(gathered, shapes)]


class TensorParallelTeacher:
    """A teacher whose weights are split over a TP group: all its ranks must run the same forward.

    Each rank contributes its micro-batch (teacher input ids, positions, mask descriptors, slot coordinates,
    a few KB), the group runs ONE forward on the concatenation, and each rank takes back only its slots."""

    def __init__(self, module, group, *, chunk_size: int = 4096):
        import torch.distributed as dist

        self.local = LocalTeacher(module, chunk_size=chunk_size)
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    @torch.no_grad()
    def __call__(self, batch: PackedBatch, input_ids, rows, cols, *, want: str, mask_token_ids=(), temperature=1.0):
        tokens = _gather_padded(input_ids, self.group, self.world, 0)
        descriptors = {
            name: _gather_padded(getattr(batch, name), self.group, self.world, False if name == "valid" else 0)
            for name in DESCRIPTOR_FIELDS
        }
        all_rows = _gather_padded(rows, self.group, self.world, 0)
        all_cols = _gather_padded(cols, self.group, self.world, 0)
        length = max(t.shape[1] for t in tokens)

        def stack(parts, fill):
            return torch.cat([torch.nn.functional.pad(p, (0, length - p.shape[1]), value=fill) for p in parts])

        combined = PackedBatch(
            input_ids=stack(tokens, 0),
            **{name: stack(descriptors[name], False if name == "valid" else 0) for name in DESCRIPTOR_FIELDS},
            source_index=None,
            slot_index=None,
            slot_valid=None,
            target_ids=None,
            eos_fill=None,
            ks=[],
            bidirectional=False,
        )
        row_offsets = [0]
        for part in tokens:
            row_offsets.append(row_offsets[-1] + part.shape[0])
        combined_rows = torch.cat([r + row_offsets[i] for i, r in enumerate(all_rows)])
        outputs = self.local(
            combined,
            combined.input_ids,
            combined_rows,
            torch.cat(all_cols),
            want=want,
            mask_token_ids=mask_token_ids,
            temperature=temperature,
        )
        start = sum(r.numel() for r in all_rows[: self.rank])
        return outputs[start : start + rows.numel()]


def tensor_parallel_group(tp_size: int):
    """Consecutive ranks [i*tp, (i+1)*tp) form one TP group (GPUs of one node with the launch scripts)."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    if world % tp_size:
        raise ValueError(f"teacher.tp_size={tp_size} must divide the world size {world}")
    mine = None
    for start in range(0, world, tp_size):
        group = dist.new_group(list(range(start, start + tp_size)))  # every rank creates every group
        if start <= rank < start + tp_size:
            mine = group
    return mine


def build_teacher(base_model, teacher_config, settings: dict, *, device):
    """Freeze `base_model` and wrap it for `teacher_config.mode`; returns (objective's teacher, module).

    `settings` is the run plan's `teacher` (`mtp_ds.config.resolve_teacher_config`): init_inference kwargs (inference), a
    DeepSpeed config (zero3), or {"dtype"} (replica)."""
    base_model.eval()
    for parameter in base_model.parameters():
        parameter.requires_grad_(False)
    mode = teacher_config.mode
    if mode == "replica":
        return LocalTeacher(base_model.to(device)), base_model
    import deepspeed

    if mode == "inference":
        tp_size = teacher_config.tp_size
        group = tensor_parallel_group(tp_size) if tp_size > 1 else None
        settings = copy.deepcopy(settings)
        settings.setdefault("replace_with_kernel_inject", False)
        if group is not None:
            settings["tensor_parallel"]["tp_group"] = group
        engine = deepspeed.init_inference(base_model, **settings)
        module = engine.module.to(device)
        teacher = TensorParallelTeacher(module, group) if group is not None else LocalTeacher(module)
        return teacher, module
    if mode == "zero3":
        engine, *_ = deepspeed.initialize(model=base_model, config=settings)
        engine.eval()
        return LocalTeacher(engine.module), engine.module
    raise ValueError(f"teacher.mode must be inference, zero3 or replica, got {mode!r}")
