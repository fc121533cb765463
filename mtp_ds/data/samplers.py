"""The order of samples: global batches of dataset indices, a pure function of (seed, epoch).

Why: a resumed run must continue with the next unseen global batch, on any number of ranks, so the order
is never drawn from a stateful RNG: each epoch's permutation is seeded by (seed, epoch), and the sampler's
whole state is its (epoch, position) in that stream.
"""

from __future__ import annotations


class EpochShuffleSampler:
    """Global batches of sample indices; each epoch is a fresh permutation seeded by (seed, epoch).

    The samples form one endless stream (epoch 0's permutation, then epoch 1's, ...); a global batch may span
    an epoch boundary. State is (epoch, position) in that stream, so `load_state_dict(state_dict())` continues
    exactly where the saved run stopped. `indices_for_step(step)` is the same stream, addressed statelessly
    (valid while the global batch size has not changed).
    """

    def __init__(self, num_samples: int, *, global_batch_size: int, seed: int = 0, shuffle: bool = True):
        if num_samples < 1:
            raise ValueError(f"EpochShuffleSampler needs at least one sample, got {num_samples}")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        self.num_samples, self.global_batch_size, self.seed, self.shuffle = (
            num_samples,
            global_batch_size,
            seed,
            shuffle,
        )
        self.epoch, self.position = 0, 0
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        """The permutation of epoch `epoch` (a pure function of seed and epoch)."""
        if epoch not in self._orders:
            import numpy as np

            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples).tolist()
            else:
                order = list(range(self.num_samples))
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return self._orders[epoch]

    def _take(self, epoch: int, position: int, count: int) -> tuple[list[int], int, int]:
        indices = []
        while count:
            chunk = self.order(epoch)[position : position + count]
            indices += chunk
            count -= len(chunk)
            position += len(chunk)
            if position == self.num_samples:
                epoch, position = epoch + 1, 0
        return indices, epoch, position

    def next_batch(self) -> list[int]:
        """The next global batch (global_batch_size indices), advancing the state."""
        indices, self.epoch, self.position = self._take(self.epoch, self.position, self.global_batch_size)
        return indices

    def indices_for_step(self, step: int) -> list[int]:
        """Global batch of step `step` of an uninterrupted run (does not change the state)."""
        start = step * self.global_batch_size
        return self._take(start // self.num_samples, start % self.num_samples, self.global_batch_size)[0]

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["num_samples"] != self.num_samples:
            raise ValueError(
                f"sampler state is for {state['num_samples']} samples with seed {state['seed']}, but this run has "
                f"{self.num_samples} samples with seed {self.seed}: the data set or seed changed since the checkpoint"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def validation_batches(dataset, *, global_batch_size: int, num_batches: int) -> list[list[int]]:
    """Fixed global batches of the validation split (the first num_batches * B rows, in order, wrapping)."""
    if len(dataset) == 0:
        return []
    sampler = EpochShuffleSampler(len(dataset), global_batch_size=global_batch_size, shuffle=False)
    return [sampler.next_batch() for _ in range(num_batches)]
