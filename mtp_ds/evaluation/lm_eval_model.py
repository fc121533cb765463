"""`lm_eval --model mtp`: lm-eval's HFLM with generation replaced by multi-token decoding.

Only `_model_generate` is replaced, so an `mtp` run differs from an `hf` run of the same checkpoint only in how
tokens are decoded. Model args besides HFLM's: strategy, k, k_max, threshold, mask_layout, propose_threshold,
max_groups (a `DecodeSpec`), stats_path, continuous_batching (default true: a task's requests are one
`generate_many` stream with batch_size rows in flight), mtp_token_id (a checkpoint whose config records none;
default: its tokenizer's mask token). A bad model arg is one stderr line and exit 2 in the CLI. Decoding
statistics, summed over the data-parallel ranks, land in the results JSON under `config.mtp_decoding`. docs/DECODING.md has the details.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from mtp_ds.decoding import generate, generate_many
from mtp_ds.decoding.decoder import check_model, max_positions
from mtp_ds.decoding.spec import DEFAULT_MASK_LAYOUT, MASK_LAYOUTS, STRATEGIES, DecodeSpec
from mtp_ds.evaluation.decoding_stats import DecodingStats
from mtp_ds.evaluation.model_args import (
    ModelArgError,
    adopt_mask_tokens_arg,
    as_bool,
    check_pretrained,
    exit_like_argparse,
    model_arg,
)
from mtp_ds.fileio import atomic_write_json
from mtp_ds.tokens import mask_tokens_from_config

logger = logging.getLogger("lm_eval.mtp_ds")

_SAMPLING_KWARGS = ("do_sample", "temperature")  # the only generation kwargs the MTP decoder honours


@register_model("mtp")
class MTPLM(HFLM):
    """HFLM whose `generate_until` decodes with `mtp_ds.decoding.generate` (Static k, ConfAdapt or selfspec)."""

    def __init__(
        self,
        pretrained,
        strategy: str = "static",
        k: int = 1,
        k_max: int = 16,
        threshold: float = 0.9,
        mask_layout: str = DEFAULT_MASK_LAYOUT,
        propose_threshold=None,
        max_groups=None,
        stats_path: str | None = None,
        continuous_batching=True,
        mtp_token_id=None,
        **kwargs,
    ):
        self.mask_tokens = None
        self.continuous_batching = model_arg(
            "continuous_batching", continuous_batching, as_bool, lambda v: True, "true or false"
        )
        self._streaming = False  # True while generate_until streams a task's requests (`batch_size`)
        self._warned_unstreamed = False  # batch_size=auto with continuous batching: said once
        self.set_decoding(
            strategy=strategy,
            k=k,
            k_max=k_max,
            threshold=threshold,
            mask_layout=mask_layout,
            propose_threshold=propose_threshold,
            max_groups=max_groups,
        )
        check_pretrained(pretrained)
        self.stats_path = Path(stats_path) if stats_path else None
        super().__init__(pretrained=pretrained, **kwargs)
        self._pretrained_name = getattr(pretrained, "name_or_path", pretrained)
        # the config's mask tokens, else the model arg's or the tokenizer's (the authors' release records none)
        self.mask_tokens = adopt_mask_tokens_arg(self.model.config, self.tokenizer, mtp_token_id, self._pretrained_name)
        try:  # parallelize=True / device_map, flash attention: refused here, not at the first generation request
            check_model(self.model)
        except ValueError as error:
            raise ModelArgError(f"model args of pretrained={self._pretrained_name!r}: {error}") from None
        self._check_model_fits_setting()
        self._check_max_length()
        self.stop_token_ids = self._stop_token_ids()
        self.reset_stats()

    def _check_max_length(self) -> None:
        """Prompts too long for the model are left-truncated by HFLM (to max_length - max_gen_toks, with its
        "Left truncation applied" warning), as with `--model hf`; a max_length past the model's positions would
        let them through to the decoder, which refuses them (docs/DECODING.md, "Prompt length")."""
        limit = max_positions(self.model)
        if limit is not None and self.max_length > limit:
            raise ModelArgError(
                f"model arg max_length={self.max_length}: more than the max_position_embeddings={limit} of "
                f"pretrained={self._pretrained_name!r}; leave it unset (lm-eval then uses {limit})"
            )

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        """How lm-eval (its CLI, `simple_evaluate(model="mtp", ...)`) builds the model from `--model_args`."""
        with exit_like_argparse():
            return super().create_from_arg_obj(arg_dict, additional_config)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        with exit_like_argparse():
            return super().create_from_arg_string(arg_string, additional_config)

    def _stop_token_ids(self) -> list[int]:
        """The tokenizer's end-of-text id plus every id of the model's `generation_config.eos_token_id` (an int
        or a list: Llama 3.1 and Qwen3 define several), i.e. every id at which HF `generate` (`--model hf`) stops."""
        ids = [self.eot_token_id]
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if configured is not None:
            ids += [configured] if isinstance(configured, int) else list(configured)
        return list(dict.fromkeys(int(i) for i in ids if i is not None))

    # --- settings and statistics -------------------------------------------------------------------------

    def set_decoding(
        self,
        spec: DecodeSpec | None = None,
        *,
        strategy: str = "static",
        k: int = 1,
        k_max: int = 16,
        threshold: float = 0.9,
        mask_layout: str = DEFAULT_MASK_LAYOUT,
        propose_threshold=None,
        max_groups=None,
    ) -> None:
        """Validate and set the decoding setting: a `DecodeSpec`, or its fields as (possibly string) model args
        (the sweep reuses one loaded model for many settings)."""
        if spec is not None:
            strategy, k, k_max, threshold, mask_layout, propose_threshold, max_groups = (
                spec.strategy,
                spec.k,
                spec.k_max,
                spec.threshold,
                spec.mask_layout,
                spec.propose_threshold,
                spec.max_groups,
            )
        strategy = model_arg(
            "strategy",
            strategy,
            lambda v: str(v).strip().lower(),
            lambda v: v in STRATEGIES,
            "one of " + ", ".join(STRATEGIES),
        )
        k = model_arg("k", k, int, lambda v: v >= 1, "an integer >= 1")
        k_max = model_arg("k_max", k_max, int, lambda v: v >= 1, "an integer >= 1")
        threshold = model_arg("threshold", threshold, float, lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")
        mask_layout = model_arg(
            "mask_layout",
            mask_layout,
            lambda v: str(v).strip().lower(),
            lambda v: v in MASK_LAYOUTS,
            "one of " + ", ".join(MASK_LAYOUTS),
        )
        if propose_threshold is not None and str(propose_threshold).strip().lower() not in ("", "none"):
            propose_threshold = model_arg(
                "propose_threshold", propose_threshold, float, lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"
            )
        else:
            propose_threshold = None
        if max_groups is not None and str(max_groups).strip().lower() not in ("", "none"):
            max_groups = model_arg("max_groups", max_groups, int, lambda v: v >= 1, "an integer >= 1")
        else:
            max_groups = None
        if strategy == "static" and k > k_max:  # k is Static k's alone (DecodeSpec); here before any model loads
            raise ModelArgError(f"model args k={k} and k_max={k_max}: k must be <= k_max")
        previous = getattr(self, "spec", None)
        self.spec = DecodeSpec(
            strategy=strategy,
            k=k,
            k_max=k_max,
            threshold=threshold,
            mask_layout=mask_layout,
            propose_threshold=propose_threshold,
            max_groups=max_groups,
        )
        if hasattr(self, "_pretrained_name"):  # the model is loaded: check it can decode this setting
            try:
                self._check_model_fits_setting()
            except ModelArgError:
                self.spec = previous  # a refused setting leaves the model as it was
                raise

    def _check_model_fits_setting(self) -> None:
        """A base model (no mask tokens) decodes only at Static k=1; distinct slot tokens must cover the block."""
        name = f"model arg pretrained={self._pretrained_name!r}"
        if self.mask_tokens is None:
            if self.spec.strategy == "static" and self.spec.k == 1:
                return  # a plain causal LM (e.g. the teacher) decoded greedily by the same loop
            try:
                mask_tokens_from_config(self.model.config)
            except ValueError as err:
                raise ModelArgError(
                    f"{name}: {err}; only strategy=static,k=1 runs without one, not {self._settings_label()}"
                ) from None
        block_arg = "k" if self.spec.strategy == "static" else "k_max"
        try:
            self.mask_tokens.ids_for_masks(self.spec.block - 1)
        except ValueError as err:
            raise ModelArgError(
                f"model arg {block_arg}={self.spec.block}: {err} in the config of {self._pretrained_name!r}"
            ) from None

    def reset_stats(self) -> None:
        self.task_stats: dict[str, DecodingStats] = {}  # this rank's
        # rank 0 of a data-parallel run: the other ranks' task_stats, gathered at the end of each generate_until
        self._other_ranks_stats: list[dict[str, DecodingStats]] = []
        self._active_stats: DecodingStats | None = None
        self._warned_kwargs: set[str] = set()

    def decoding_settings(self) -> dict:
        """The args the strategy uses (threshold is ConfAdapt's, mask_layout selfspec's; k is Static k's)."""
        return self.spec.settings()

    def ranks_task_stats(self) -> dict[str, DecodingStats]:
        """Per task, the statistics of every rank whose statistics this process holds (rank 0: all of them, after
        a generate_until; the other ranks: their own)."""
        merged: dict[str, DecodingStats] = {}
        for part in (self.task_stats, *self._other_ranks_stats):
            for task, stats in part.items():
                merged.setdefault(task, DecodingStats()).merge(stats)
        return merged

    def run_stats(self) -> DecodingStats:
        total = DecodingStats()
        for stats in self.ranks_task_stats().values():
            total.merge(stats)
        return total

    def decoding_report(self) -> dict:
        """Settings plus run-wide and per-task statistics (what lands in the results JSON), summed over `ranks`
        data-parallel ranks (tokens_per_second is then per rank: tokens over the ranks' summed decoding time)."""
        return {
            **self.decoding_settings(),
            "setting": self.spec.label,
            "ranks": 1 + len(self._other_ranks_stats),
            **self.run_stats().summary(),
            "per_task": {task: stats.summary() for task, stats in self.ranks_task_stats().items()},
        }

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "mtp_decoding": self.decoding_report()}

    def _write_stats(self) -> None:
        if self.stats_path is None:
            return
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.stats_path, self.decoding_report(), indent=2)

    # --- generation ---------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """lm-eval's own generate_until, run once per task so the statistics can be told apart by task."""
        indices_by_task: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            indices_by_task[getattr(request, "task_name", None) or "unknown"].append(index)
        outputs: list[str | None] = [None] * len(requests)
        for task, indices in indices_by_task.items():
            self._active_stats = self.task_stats.setdefault(task, DecodingStats())
            texts = self._generate_until_task([requests[i] for i in indices], disable_tqdm)
            for index, text in zip(indices, texts, strict=True):
                outputs[index] = text
        self._active_stats = None
        self._gather_ranks_stats()
        if self.rank == 0:
            merged = self.ranks_task_stats()
            for task in indices_by_task:
                logger.info(merged[task].log_line(f"{task}, {self._settings_label()}"))
            self._write_stats()
        return outputs

    def _gather_ranks_stats(self) -> None:
        """Collective in a data-parallel run (lm-eval calls generate_until on every rank alike): rank 0 receives
        every other rank's statistics, so the report covers all requests, not rank 0's share."""
        if self.world_size <= 1:
            return
        gathered = self.gather_object(self.task_stats)
        if self.rank == 0:
            self._other_ranks_stats = [stats for rank, stats in enumerate(gathered) if rank != self.rank]

    def _generate_until_task(self, requests, disable_tqdm: bool) -> list[str]:
        """lm-eval's generate_until; with continuous batching every generation-kwargs group is one chunk (lm-eval's
        chunk size 0, `batch_size` below), decoded by one `generate_many` stream with batch_size rows in flight."""
        rows = self.batch_size_per_gpu
        self._streaming = self.continuous_batching and isinstance(rows, int) and rows >= 1
        if self.continuous_batching and not self._streaming and not self._warned_unstreamed:
            self._warned_unstreamed = True
            logger.warning(
                f"batch_size={rows}: continuous batching is off (a stream keeps a fixed number of rows in flight: "
                "set batch_size=N for N rows); lm-eval's batches are each decoded until their slowest row"
            )
        try:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self._streaming = False

    @property
    def batch_size(self):
        """lm-eval's chunk size for `generate_until`: 0 (no chunking) while a task streams; `batch_size_per_gpu`,
        the rows in flight, is left as the user set it."""
        return 0 if self._streaming else super().batch_size

    def _settings_label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.decoding_settings().items())

    def _sampling_temperature(self, generation_kwargs: dict) -> float | None:
        for key, value in generation_kwargs.items():
            if key not in _SAMPLING_KWARGS and value is not None and key not in self._warned_kwargs:
                self._warned_kwargs.add(key)
                logger.warning(f"MTP decoding ignores generation kwarg {key}={value!r}")
        temperature = float(generation_kwargs.get("temperature") or 0.0)
        do_sample = generation_kwargs.get("do_sample")
        return temperature if (do_sample or (do_sample is None and temperature > 0)) else None

    def _model_call(self, inps, attn_mask=None, labels=None):
        """Log-likelihoods read a plain next-token distribution: no mass on `<MTP>` or the padding rows."""
        logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        if self.mask_tokens is None:
            return logits
        never = torch.tensor(self.mask_tokens.never_emitted, device=logits.device)
        return logits.index_fill(-1, never, float("-inf"))

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        """Same contract as HFLM's: return (batch, context_len + new) ids; rows are padded after their end."""
        attention_mask = generation_kwargs.pop("attention_mask", None)
        temperature = self._sampling_temperature(generation_kwargs)
        started = time.perf_counter()
        with torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        ):
            spec = replace(self.spec, temperature=temperature)
            settings = dict(
                mtp_token_id=self.mask_tokens,
                max_new_tokens=max(0, max_length - context.shape[1]),
                eos_token_id=self.stop_token_ids,
                tokenizer=self.tokenizer,
                stop_strings=list(stop or []),
            )
            if self._streaming:  # the task's requests as one stream (`_generate_until_task`)
                real = (
                    torch.ones_like(context, dtype=torch.bool)
                    if attention_mask is None
                    else attention_mask.to(torch.bool)
                )
                prompts = [row[keep].tolist() for row, keep in zip(context, real)]
                result = generate_many(self.model, prompts, spec, max_rows=self.batch_size_per_gpu, **settings)
            else:
                result = generate(self.model, context, spec, attention_mask=attention_mask, **settings)
        seconds = time.perf_counter() - started
        if self._active_stats is None:  # called outside generate_until (e.g. directly): count it anyway
            self._active_stats = self.task_stats.setdefault("unknown", DecodingStats())
        self._active_stats.add(result, seconds)
        return self._pad_continuations(context, result.sequences)

    def _pad_continuations(self, context: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        width = max((len(row) for row in sequences), default=0)
        continuation = torch.full((context.shape[0], width), pad_id, dtype=context.dtype, device=context.device)
        for row, ids in enumerate(sequences):
            if ids:
                continuation[row, : len(ids)] = torch.tensor(ids, dtype=context.dtype, device=context.device)
        return torch.cat([context, continuation], dim=1)
