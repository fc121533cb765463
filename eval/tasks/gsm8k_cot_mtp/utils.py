"""Data loading for the `gsm8k_cot_mtp` task: a local GSM8K JSONL when given one, else the Hub copy.

The test split comes from, in order (why a `custom_dataset` function, and the file format: eval/README.md):
  1. `--metadata '{"gsm8k_path": "/data/gsm8k/test.jsonl"}'`  (simple_evaluate(metadata=...) likewise)
  2. the environment variable MTP_DS_GSM8K_PATH
  3. otherwise `datasets.load_dataset("openai/gsm8k", "main")` (needs the Hub or a warm HF cache).
"""

import json
import os
from pathlib import Path

PATH_METADATA_KEY = "gsm8k_path"
PATH_ENV_VAR = "MTP_DS_GSM8K_PATH"


def read_gsm8k_jsonl(path) -> list[dict]:
    """Rows of a GSM8K-schema JSONL file; a one-line error naming the file and line if one is malformed."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("question"), str) or "####" not in str(row.get("answer", "")):
            raise ValueError(f"{path}:{number}: expected GSM8K fields 'question' and 'answer' ending in '#### N'")
        rows.append({"question": row["question"], "answer": row["answer"]})
    if not rows:
        raise ValueError(f"{path}: no GSM8K rows")
    return rows


def load_gsm8k(**metadata):
    """lm-eval `custom_dataset` hook: a DatasetDict with a `test` split (see the module docstring)."""
    import datasets

    path = metadata.get(PATH_METADATA_KEY) or os.environ.get(PATH_ENV_VAR)
    if not path:
        return datasets.load_dataset("openai/gsm8k", "main")
    if not Path(path).is_file():
        source = f"metadata {PATH_METADATA_KEY}" if metadata.get(PATH_METADATA_KEY) else PATH_ENV_VAR
        raise FileNotFoundError(f"{source}={path!r}: no such GSM8K JSONL file")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_gsm8k_jsonl(path))})
