"""A KV cache that appends in place: the decoder's cache, instead of transformers' `DynamicCache` layers.

`DynamicLayer.update` concatenates (copies) every layer's whole cache on every pass. Here each layer keeps a
buffer with spare capacity (doubled when it runs out) and cropping only moves `length` back. The layer keeps
`DynamicLayer`'s interface, so `RaggedCache` and the models' mask code work unchanged (docs/DECODING.md).
"""

from __future__ import annotations

import functools
import inspect

import torch

_MIN_CAPACITY = 64  # entries; the first pass (the prompt) allocates at least this much headroom


def cache_argument(model) -> str:
    """Name of the model forward's KV-cache argument: `cache` where transformers renamed it (it warns that
    `past_key_values` goes away in 5.40), `past_key_values` in the releases before the rename."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _grow_capacity(needed: int, capacity: int) -> int:
    return max(needed, 2 * capacity, _MIN_CAPACITY)


def make_cache(reserve: int = 0):
    """An empty transformers `Cache` whose layers (created on first use) are `AppendLayer`s.

    `reserve`: entries to allocate at the first update (e.g. prompt + new tokens + masks), so that a decode that
    stays within it never reallocates; more is still fine (the capacity doubles).
    """
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(_append_layer_class(), reserve=reserve)
    return cache


_LAYER_CLASS = None


def _append_layer_class():
    """The layer class, built on first use so that importing this module does not import transformers."""
    global _LAYER_CLASS
    if _LAYER_CLASS is not None:
        return _LAYER_CLASS
    from transformers.cache_utils import DynamicLayer

    class AppendLayer(DynamicLayer):
        """`DynamicLayer` whose update writes into spare capacity instead of concatenating.

        Keys and values keep their own lengths because callers assign them one after the other (a compaction
        reads `values` after it has assigned `keys`); `update`, `crop` and the batch methods move both.
        """

        def __init__(self, reserve: int = 0, **kwargs):
            self._reserve_at_first_update = reserve
            self._key_buffer = self._value_buffer = None
            self._key_length = self._value_length = 0
            super().__init__(**kwargs)  # sets keys/values to None through the setters below

        @staticmethod
        def _length_of(tensor) -> int:
            return 0 if tensor is None or tensor.dim() < 3 else tensor.shape[-2]

        @property
        def keys(self):
            return None if self._key_buffer is None else self._key_buffer[:, :, : self._key_length]

        @keys.setter
        def keys(self, tensor):  # assigning replaces the cache (DynamicLayer's API; the decoder's compaction)
            self._key_buffer, self._key_length = tensor, self._length_of(tensor)

        @property
        def values(self):
            return None if self._value_buffer is None else self._value_buffer[:, :, : self._value_length]

        @values.setter
        def values(self, tensor):
            self._value_buffer, self._value_length = tensor, self._length_of(tensor)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.dtype, self.device = key_states.dtype, key_states.device
                self.is_initialized = True
            if self._key_length != self._value_length:
                raise RuntimeError(f"KV cache layer holds {self._key_length} keys but {self._value_length} values")
            length = self._key_length
            needed = length + key_states.shape[-2]
            if needed > self._length_of(self._key_buffer) or needed > self._length_of(self._value_buffer):
                self._reserve(key_states, value_states, length, needed)
            self._key_buffer[:, :, length:needed].copy_(key_states)
            self._value_buffer[:, :, length:needed].copy_(value_states)
            self._key_length = self._value_length = needed
            return self.keys, self.values

        def _reserve(self, key_states, value_states, length: int, needed: int) -> None:
            capacity = max(_grow_capacity(needed, self._length_of(self._key_buffer)), self._reserve_at_first_update)
            self._reserve_at_first_update = 0
            new_keys = key_states.new_empty((*key_states.shape[:2], capacity, key_states.shape[-1]))
            new_values = value_states.new_empty((*value_states.shape[:2], capacity, value_states.shape[-1]))
            if length:
                new_keys[:, :, :length].copy_(self._key_buffer[:, :, :length])
                new_values[:, :, :length].copy_(self._value_buffer[:, :, :length])
            self._key_buffer, self._value_buffer = new_keys, new_values

        def get_seq_length(self) -> int:
            return self._key_length if self.is_initialized else 0

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError(f"crop takes a negative number of entries to remove, got {tokens_to_remove}")
            self._key_length = max(0, self._key_length + tokens_to_remove)
            self._value_length = max(0, self._value_length + tokens_to_remove)

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self._key_buffer is not None and self._key_length:
                self._key_buffer = self._key_buffer[indices]
                self._value_buffer = self._value_buffer[indices]

        @property
        def capacity(self) -> int:
            """Allocated entries per row (the buffer), >= the cached length."""
            return self._length_of(self._key_buffer)

        def add_rows(self, other, width: int, rows: torch.Tensor | None = None) -> None:
            """Append `other`'s rows (another layer of the same model; only `rows` of them if given) to the
            batch, both right-aligned in `width` columns: the columns left of a row's entries are zeros (finite,
            so a hidden key can never turn attention into NaN); the caller marks them as holes. Spare capacity
            is kept."""
            if self._key_length != self._value_length or other._key_length != other._value_length:
                raise RuntimeError("KV cache layer holds different numbers of keys and values")
            spare = max(self.capacity - self._key_length, other.capacity - other._key_length, 0)
            buffers = []
            for mine, theirs in ((self.keys, other.keys), (self.values, other.values)):
                theirs = theirs if rows is None else theirs[rows]
                shape = (mine.shape[0] + theirs.shape[0], mine.shape[1], width + spare, mine.shape[3])
                merged = mine.new_zeros(shape)
                merged[: mine.shape[0], :, width - mine.shape[2] : width].copy_(mine)
                merged[mine.shape[0] :, :, width - theirs.shape[2] : width].copy_(theirs)
                buffers.append(merged)
            self._key_buffer, self._value_buffer = buffers
            self._key_length = self._value_length = width

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._key_buffer is not None and self._key_length:
                self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
                self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)

        def reset(self) -> None:
            self._key_buffer = self._value_buffer = None
            self._key_length = self._value_length = 0
            self.is_initialized = False

    _LAYER_CLASS = AppendLayer
    return _LAYER_CLASS
