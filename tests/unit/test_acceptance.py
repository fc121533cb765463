"""ConfAdapt's acceptance rule (docs/METHOD.md section 2): one function, the paper's rule, in the decoder and the metric.

The reference here is written from the paper's words, independently of `mtp_ds.acceptance` (a loop, not a
cumulative product): keep the leading run of slots whose top-1 probability is >= tau, starting at slot 0,
and at least one token.
"""

from types import SimpleNamespace

import pytest
import torch
from references import paper_rule

from mtp_ds.acceptance import confident_run_length
from mtp_ds.metrics import MetricSums

HAND_MADE = [  # (confidences per slot, tau, tokens kept)
    ([0.5, 0.95, 0.95, 0.2], 0.9, 1),  # slot 0 unsure: one token, whatever follows (the example)
    ([0.95, 0.92, 0.85, 0.97], 0.9, 2),  # the run stops at the first unsure slot
    ([0.99, 0.99, 0.99, 0.99], 0.9, 4),
    ([0.9, 0.9, 0.89], 0.9, 2),  # >= tau counts
    ([0.1, 0.2, 0.3], 0.9, 1),  # nothing confident: still one token
    ([0.3], 0.9, 1),
    ([0.6, 0.7, 0.8, 0.9], 0.0, 4),  # tau 0 keeps everything
    ([1.0, 1.0], 1.0, 2),
]


@pytest.mark.parametrize("confidences, tau, kept", HAND_MADE)
def test_hand_made_cases(confidences, tau, kept):
    assert paper_rule(confidences, tau) == kept
    assert int(confident_run_length(torch.tensor(confidences), tau)) == kept


def test_batched_with_invalid_slots_matches_the_reference():
    generator = torch.Generator().manual_seed(0)
    confidences = torch.rand((6, 5, 7), generator=generator) ** 0.3  # many runs of several confident slots
    lengths = torch.randint(1, 8, (6, 5), generator=generator)  # regions with fewer slots than K
    valid = torch.arange(7) < lengths[..., None]
    runs = confident_run_length(confidences, 0.8, valid)
    for row in range(6):
        for region in range(5):
            slots = confidences[row, region, : lengths[row, region]].tolist()
            assert int(runs[row, region]) == paper_rule(slots, 0.8)


def test_training_metric_uses_the_rule():
    """accept_length@tau of MetricSums on hand-made confidences: mean over regions of the paper's count."""
    regions = [[0.5, 0.95, 0.95, 0.2], [0.95, 0.92, 0.85, 0.97], [0.99, 0.91, 0.93, 0.95]]
    grid = torch.tensor(regions)[None]  # (1 row, 3 regions, 4 slots)
    batch = SimpleNamespace(
        slot_index=torch.zeros(grid.shape, dtype=torch.long), slot_valid=torch.ones(grid.shape, dtype=torch.bool)
    )
    rows, region_index, slots = batch.slot_valid.nonzero(as_tuple=True)
    confidences = grid[rows, region_index, slots]
    sums = MetricSums.from_slots(
        batch,
        regions=region_index,
        rows=rows,
        slots=slots,
        proposals=slots * 0,
        targets=slots * 0,
        confidences=confidences,
        thresholds=(0.9, 0.5),
        num_slot_metrics=4,
        slot_loss=torch.zeros(()),
        entropy=torch.zeros(()),
    )
    summary = sums.summary()
    assert summary["accept_length@0.9"] == pytest.approx((1 + 2 + 4) / 3)
    assert summary["accept_length@0.5"] == pytest.approx(sum(paper_rule(r, 0.5) for r in regions) / 3)
