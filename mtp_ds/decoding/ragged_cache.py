"""The KV cache of a batch whose rows advance by different amounts: which cached keys are real, and compaction.

Why: with ConfAdapt, rows of one batch accept different numbers of tokens per pass, yet they share one HF
cache (one forward for the whole batch). The rejected masks and the padding of shorter rows stay in the cache
as holes; `key_valid` marks them and the 4D additive mask hides them, so each row attends exactly to its own
real keys. Compaction moves real entries right (stable order, keys already carry their rotary positions)
once holes waste `COMPACT_MIN_HOLES` columns.
"""

from __future__ import annotations

import torch

COMPACT_MIN_HOLES = 64  # compact once this many cache columns are wasted on holes in the widest row


class RaggedCache:
    """A HF cache (`mtp_ds.decoding.kv_cache.make_cache`) shared by rows that advance by different amounts, plus which keys are real.

    `real_counts` (host ints, one per row: real keys in the cache) mirrors `key_valid.sum(dim=1)`, so deciding
    whether to compact, or whether the cache has any hole at all, never reads the device.
    """

    def __init__(self, cache, batch_size: int, device):
        self.cache = cache
        self.key_valid = torch.zeros((batch_size, 0), dtype=torch.bool, device=device)
        self.real_counts = [0] * batch_size

    @property
    def width(self) -> int:
        return self.key_valid.shape[1]

    @property
    def dense(self) -> bool:
        """True when every cached key of every row is real (no left padding, no holes)."""
        return all(count == self.width for count in self.real_counts)

    def attention_mask(
        self, new_valid: torch.Tensor, dtype: torch.dtype, new_allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 1, q, cache+q) additive mask: cached keys if real; new keys if real and causal (or the diagonal).

        `new_allowed` (B, q, q) bool replaces "real and causal" among the new keys (selfspec's mask groups).
        """
        q_len = new_valid.shape[1]
        # causal among the new keys, plus the diagonal so that no query row is fully masked
        causal = torch.ones((q_len, q_len), dtype=torch.bool, device=new_valid.device).tril()
        among_new = causal[None] & new_valid[:, None, :] if new_allowed is None else new_allowed
        new_part = among_new | causal.diagonal().diag_embed()[None]
        cached_part = self.key_valid[:, None, :].expand(-1, q_len, -1)
        allowed = torch.cat([cached_part, new_part], dim=2)[:, None]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=new_valid.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)

    def commit(self, block_len: int, kept_valid: torch.Tensor, kept_counts: list[int]) -> None:
        """After a pass over `block_len` new entries, keep the first kept_valid.shape[1] of them.

        `kept_counts[b]` = kept_valid[b].sum(), given by the caller from host values.
        """
        to_remove = block_len - kept_valid.shape[1]
        if to_remove > 0:
            self.cache.crop(-to_remove)  # negative = number of entries to drop (transformers 5 contract)
        self.key_valid = torch.cat([self.key_valid, kept_valid], dim=1)
        self.real_counts = [count + kept for count, kept in zip(self.real_counts, kept_counts)]
        self._compact_if_sparse()

    def select_rows(self, rows: list[int], device) -> None:
        index = torch.tensor(rows, device=device)
        self.cache.batch_select_indices(index)
        self.key_valid = self.key_valid[index]
        self.real_counts = [self.real_counts[row] for row in rows]
        self._compact_if_sparse()

    @property
    def allocated_columns(self) -> int:
        """Entries per row the cache's buffers hold (spare capacity included): the memory it keeps."""
        layers = getattr(self.cache, "layers", None) or []
        return max(
            (getattr(x, "capacity", None) or (0 if x.keys is None else x.keys.shape[-2]) for x in layers), default=0
        )

    def add_rows(self, other: RaggedCache, rows: list[int] | None = None) -> None:
        """Append the rows of `other` (a cache of the same model, e.g. prefilled prompts), or only `rows` of them,
        to this batch; `other` is left as it was (drop the moved rows from it with `select_rows`).

        Both are right-aligned in the wider width: the narrower one gets hole columns on the LEFT, False in
        `key_valid` (keys carry their rotary positions, so a left hole changes no row's attention); columns that
        end up holes in every row are dropped by the next compaction.
        """
        index = None if rows is None else torch.tensor(rows, device=other.key_valid.device)
        width = max(self.width, other.width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            if hasattr(mine, "add_rows"):
                mine.add_rows(theirs, width, index)
                continue
            for name in ("keys", "values"):  # any DynamicLayer-like layer: concatenate, zero hole columns
                a, b = getattr(mine, name), getattr(theirs, name)
                b = b if index is None else b[index]
                setattr(
                    mine,
                    name,
                    torch.cat(
                        [
                            torch.nn.functional.pad(a, (0, 0, width - a.shape[2], 0)),
                            torch.nn.functional.pad(b, (0, 0, width - b.shape[2], 0)),
                        ]
                    ),
                )
        theirs_valid = other.key_valid if index is None else other.key_valid[index]
        self.key_valid = torch.cat(
            [
                torch.nn.functional.pad(valid, (width - valid.shape[1], 0), value=False)
                for valid in (self.key_valid, theirs_valid.to(self.key_valid.device))
            ]
        )
        self.real_counts = self.real_counts + (
            other.real_counts if rows is None else [other.real_counts[row] for row in rows]
        )
        self._compact_if_sparse()

    def replace_rows(self, slots: list[int], other: RaggedCache, rows: list[int]) -> bool:
        """Overwrite this batch's rows `slots` (finished requests) with `other`'s rows `rows`, in place; False
        (nothing changed) when `other` is wider than this cache, so that its rows would not fit.

        Why: merging with `add_rows` and dropping finished rows with `select_rows` each copy the whole batch's
        cache; a request that takes a finished request's slot only copies its own entries (right-aligned; the
        columns left of them become holes, zeroed, hidden by `key_valid`).
        """
        width, theirs_width = self.width, other.width
        if theirs_width > width or not slots:
            return not slots
        at = torch.tensor(slots, device=self.key_valid.device)
        source = torch.tensor(rows, device=other.key_valid.device)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            for name in ("keys", "values"):
                target, given = getattr(mine, name), getattr(theirs, name)[source]
                target[at, :, : width - theirs_width] = 0
                target[at, :, width - theirs_width : width] = given.to(target.device)
        self.key_valid[at] = torch.nn.functional.pad(
            other.key_valid[source].to(self.key_valid.device), (width - theirs_width, 0), value=False
        )
        for slot, row in zip(slots, rows):
            self.real_counts[slot] = other.real_counts[row]
        self._compact_if_sparse()
        return True

    def _compact_if_sparse(self, min_holes: int | None = None) -> None:
        min_holes = COMPACT_MIN_HOLES if min_holes is None else min_holes
        width = self.width
        max_real = max(self.real_counts, default=0)
        layers = getattr(self.cache, "layers", None)
        if width - max_real < max(min_holes, 1) or not layers or not all(hasattr(x, "keys") for x in layers):
            return
        # Stable sort on validity moves holes left and keeps the real keys in their order; then drop the
        # columns that are holes in every row.
        order = torch.sort(self.key_valid.to(torch.int8), dim=1, stable=True).indices[:, width - max_real :]
        for layer in layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = torch.gather(layer.keys, 2, index)
            layer.values = torch.gather(layer.values, 2, index.expand(-1, -1, -1, layer.values.shape[3]))
        self.key_valid = torch.gather(self.key_valid, 1, order)
