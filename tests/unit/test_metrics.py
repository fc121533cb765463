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


# ---------------------------------------------------------------- the metrics file: every line has a step


def test_the_metrics_file_never_gets_a_line_without_a_step(tmp_path):
    """Before: a run with an empty validation split wrote a literal `{}` line, and readers keyed on `step` broke."""
    import json

    import pytest

    from mtp_ds.train.tracking import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.0}\n')
    writer = MetricsWriter(str(path), enabled=True, resume_step=2)  # a resume also drops the old step-less lines
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    with pytest.raises(ValueError, match=r"^a metrics record needs an integer 'step', got keys \[\]$"):
        writer.write({})
    with pytest.raises(ValueError, match=r"'step', got keys \['val/loss'\]$"):
        writer.write({"val/loss": 1.0})
    writer.write({"step": 3, "val/loss": 1.0})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
