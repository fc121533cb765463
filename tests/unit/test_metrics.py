"""`MetricSums`: its sums by name, added across micro-batches and all-reduced in one flat collective."""

import torch

from mtp_ds.metrics import MetricSums


def sums(scale: float, slots: int = 3) -> MetricSums:
    return MetricSums(
        slot_agree=torch.arange(slots, dtype=torch.float32) * scale,
        slot_confidence=torch.full((slots,), 0.5 * scale),
        slot_count=torch.full((slots,), 2.0 * scale),
        accept_length=torch.tensor([4.0, 2.0]) * scale,
        regions=torch.tensor(2.0 * scale),
        slot_loss=torch.tensor(6.0 * scale),
        entropy=torch.tensor(3.0 * scale),
        prefix_loss=torch.tensor(1.5 * scale),
        thresholds=(0.9, 0.5),
    )


def test_sums_add_by_name_and_pad_to_the_longer_slot_axis():
    total = sums(1.0) + sums(2.0, slots=5)
    assert total.slot_count.tolist() == [6.0, 6.0, 6.0, 4.0, 4.0]
    assert (float(total.regions), float(total.slot_loss), float(total.entropy), float(total.prefix_loss)) == (
        6.0,
        18.0,
        9.0,
        4.5,
    )
    assert total.thresholds == (0.9, 0.5)


def test_summary_divides_by_supervised_slots_and_regions():
    summary = sums(1.0).summary()
    assert summary["slot_loss"] == 1.0 and summary["entropy"] == 0.5  # 6 slots
    assert summary["accept_length@0.9"] == 2.0 and summary["accept_length@0.5"] == 1.0  # 2 regions
    assert summary["agreement/slot2"] == 1.0


def test_all_reduce_is_one_flat_collective_that_keeps_every_field(monkeypatch):
    calls = []

    def all_reduce(flat, group=None):
        calls.append(flat.shape)
        flat.mul_(2)  # two ranks holding the same sums

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    reduced = sums(1.0).all_reduce()
    assert calls == [torch.Size([3 * 3 + 2 + 4])]
    doubled = sums(2.0)
    for name in ("slot_agree", "slot_confidence", "slot_count", "accept_length", "regions", "slot_loss", "entropy"):
        assert torch.equal(getattr(reduced, name), getattr(doubled, name)), name
    assert reduced.prefix_loss.shape == () and float(reduced.prefix_loss) == 3.0
