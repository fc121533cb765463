"""Raw training data: MetaMathQA, Magpie, or local JSONL/Parquet, normalised to (prompt, response, group).

Why: each source names its fields differently (MetaMathQA `query`/`response` grouped by `original_question`;
Magpie `conversations` turns or `instruction`/`response`); downstream sees one shape. Also the seed-question split,
a pure function of (group text, split seed): independent of row order and of which rows survive tokenisation.
`datasets` is imported inside functions; nothing here downloads unless a recipe names a hub id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mtp_ds.config import ConfigError, DataConfig, resolve_path

METAMATHQA_HUB_ID = "meta-math/MetaMathQA"
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


@dataclass(frozen=True)
class SourceFields:
    """Column names of one source; `conversations` set means prompt/response come from chat turns."""

    prompt: str | None
    response: str | None
    group: str | None  # None: the prompt is the group
    conversations: str | None = None


def default_fields(data: DataConfig, columns: list[str]) -> SourceFields:
    """The recipe's field names, with each source's defaults for the ones it leaves out."""
    if data.source == "metamathqa":
        defaults = SourceFields("query", "response", "original_question")
    elif data.source == "magpie":
        conversations = data.conversations_field or ("conversations" if "conversations" in columns else None)
        if conversations is not None and data.prompt_field is None:
            return SourceFields(None, None, data.group_field, conversations)
        defaults = SourceFields("instruction", "response", None)
    else:
        defaults = SourceFields("prompt", "response", None)
    return SourceFields(
        data.prompt_field or defaults.prompt,
        data.response_field or defaults.response,
        data.group_field or defaults.group,
        data.conversations_field or defaults.conversations,
    )


def source_paths(data: DataConfig) -> list[str]:
    if data.path is None:
        return [METAMATHQA_HUB_ID]
    return [data.path] if isinstance(data.path, str) else list(data.path)


def _load_one(path: str, data: DataConfig):
    """One local file / directory / hub id as a datasets.Dataset (hub ids go through the HF cache)."""
    import datasets
    from datasets.data_files import EmptyDatasetError

    local = resolve_path(path)
    if local.is_file():
        suffix = local.suffix.lower()
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(suffix)
        if builder is None:
            raise ConfigError(
                f"data.path: {path!r} has an unknown extension {suffix!r} (use .jsonl, .json or .parquet)"
            )
        if builder == "json" and _is_blank(local):
            raise ConfigError(f"data set {path!r} is empty")
        try:
            return datasets.load_dataset(builder, data_files=str(local), split="train", cache_dir=data.cache_dir)
        except Exception:
            if builder == "json":
                _require_json_lines(local, path)  # name the bad line instead of datasets' generation error
            raise
    if local.is_dir():
        if (local / "dataset_info.json").exists() and (local / "state.json").exists():
            return datasets.load_from_disk(str(local))
        try:
            return datasets.load_dataset(str(local), split=data.split, cache_dir=data.cache_dir)
        except EmptyDatasetError:
            raise ConfigError(
                f"data.path: directory {path!r} holds no data file the datasets library reads "
                "(.jsonl, .json, .parquet, .csv, .arrow, ...)"
            ) from None
    if data.source in ("jsonl", "parquet"):
        raise ConfigError(f"data.path: file {path!r} does not exist")
    return datasets.load_dataset(path, split=data.split, cache_dir=data.cache_dir)


def _require_json_lines(file: Path, path: str) -> None:
    """Raise a ConfigError naming the first line of a JSON-lines file that is not a JSON object (a .json file
    holding one JSON document is left alone). Only called after `datasets` failed on the file."""
    import json

    with file.open(encoding="utf-8") as handle:
        first = handle.read(1)
        handle.seek(0)
        if file.suffix.lower() == ".json" and first == "[":
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ConfigError(f"data.path: {path!r} line {number} is not JSON ({error})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"data.path: {path!r} line {number} is a JSON {type(record).__name__}, not an object")


def _is_blank(file: Path) -> bool:
    with open(file, encoding="utf-8", errors="replace") as handle:
        return all(not line.strip() for line in handle)  # stops reading at the first non-blank line


def _require_columns(dataset, fields: SourceFields, path: str) -> None:
    named = {
        "prompt_field": fields.prompt,
        "response_field": fields.response,
        "group_field": fields.group,
        "conversations_field": fields.conversations,
    }
    for key, column in named.items():
        if column is not None and column not in dataset.column_names:
            raise ConfigError(
                f"data set {path!r} has no field {column!r} (data.{key}); its fields: {', '.join(dataset.column_names)}"
            )


def _first_exchange(turns) -> tuple[str, str]:
    """(first user message, the assistant message after it) of a list of {from,value} or {role,content} turns."""
    prompt = None
    for turn in turns or ():
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content")) or ""
        if prompt is None and role in USER_ROLES:
            prompt = text
        elif prompt is not None and role in ASSISTANT_ROLES:
            return prompt, text
    return prompt or "", ""


def _normalise_batch(batch, *, prompt, response, group, conversations):
    if conversations is not None:
        pairs = [_first_exchange(turns) for turns in batch[conversations]]
        prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    else:
        prompts = [text or "" for text in batch[prompt]]
        responses = [text or "" for text in batch[response]]
    groups = [text or "" for text in batch[group]] if group is not None else prompts
    return {"prompt": prompts, "response": responses, "group": groups}


def load_raw_dataset(data: DataConfig):
    """The source as one datasets.Dataset with string columns `prompt`, `response`, `group` (map is disk-cached).

    Raises ConfigError for an unknown source, a missing field (naming field and file) and an empty data set.
    """
    import datasets

    if data.source not in ("metamathqa", "magpie", "jsonl", "parquet"):
        raise ConfigError(f"data.source: unknown source {data.source!r}; valid: metamathqa, magpie, jsonl, parquet")
    parts = []
    for path in source_paths(data):
        dataset = _load_one(path, data)
        if len(dataset) == 0:
            raise ConfigError(f"data set {path!r} is empty")
        fields = default_fields(data, dataset.column_names)
        _require_columns(dataset, fields, path)
        parts.append(
            dataset.map(
                _normalise_batch,
                batched=True,
                remove_columns=dataset.column_names,
                num_proc=data.num_proc,
                fn_kwargs=dict(
                    prompt=fields.prompt,
                    response=fields.response,
                    group=fields.group,
                    conversations=fields.conversations,
                ),
                desc=f"normalise {Path(path).name}",
            )
        )
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if data.max_samples is not None:
        dataset = dataset.select(range(min(data.max_samples, len(dataset))))
    return dataset


# ---------------------------------------------------------------- the seed-question-stratified split


def group_hash(group: str) -> int:
    """A stable 63-bit id of a group's text (stored per tokenised row; independent of the split seed)."""
    return int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big") >> 1


def is_validation_group(group_id: int, fraction: float, seed: int) -> bool:
    """Whether a whole group is held out: a uniform draw from hash(seed, group), below `fraction`."""
    digest = hashlib.sha256(f"{seed}:{group_id}".encode()).digest()[:8]
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split_indices(group_ids, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train row indices, validation row indices): every row of one group lands on the same side."""
    decided: dict[int, bool] = {}
    train, validation = [], []
    for row, group_id in enumerate(group_ids):
        held_out = decided.get(group_id)
        if held_out is None:
            held_out = decided[group_id] = is_validation_group(int(group_id), fraction, seed)
        (validation if held_out else train).append(row)
    return train, validation
