"""A tiny checkpoint laid out exactly as the paper authors' released MTP checkpoints (tomg-group-umd/mtp-lm).

Their script (litgpt/scripts/add_mtp_tokens.py in jwkirchenbauer/mtp-lm) adds 32 special tokens
`<|mtp_special_token_0|>` .. `_31|>` (only the first is the mask), `<|pad|>` if the tokenizer has none, and resizes
the embedding with mean resizing to a multiple of 128 rows. Their config.json records no mask id and has an
`auto_map` to their own configuration_llama.py / modeling_llama.py (remote code); here those two files raise when
imported, so a test that loads this checkpoint proves no loader ran them. generation_config.json lists EOS ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken

from mtp_ds.models.tiny import tiny_model, word_tokenizer
from mtp_ds.tokens import AUTHORS_MASK_TOKEN

AUTHORS_TOKENS = [f"<|mtp_special_token_{i}|>" for i in range(32)]
# In Magpie's tokenizer three added tokens already sat before theirs (mask id 128259, not len(base))
EARLIER_ADDED = ["<|reserved_a|>", "<|reserved_b|>", "<|reserved_c|>"]
AUTO_MAP = {"AutoConfig": "configuration_llama.LlamaConfig", "AutoModelForCausalLM": "modeling_llama.LlamaForCausalLM"}
REMOTE_CODE = 'raise RuntimeError("the checkpoint\'s remote code {name} was imported")\n'
ROW_MULTIPLE = 128


def authors_checkpoint(directory: Path, *, seed: int = 0) -> Path:
    """Write the checkpoint into `directory` (created); returns it. The mask id is `mask_id(directory)`."""
    tokenizer = word_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer), seed=seed)
    tokenizer.pad_token = None  # as Llama 3.1's: their script then adds <|pad|>
    tokenizer.add_tokens(EARLIER_ADDED, special_tokens=True)
    new_tokens = [AddedToken(text, special=True, normalized=False) for text in AUTHORS_TOKENS]
    tokenizer.add_special_tokens({"extra_special_tokens": new_tokens}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        torch.manual_seed(seed)  # mean resizing draws the new rows (the padding rows too: they are not zero)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True, pad_to_multiple_of=ROW_MULTIPLE)
    eos = tokenizer.eos_token_id
    model.generation_config.eos_token_id = [eos, tokenizer.convert_tokens_to_ids("###")]
    model.generation_config.pad_token_id = None
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    assert not any(key.startswith("mtp_") for key in config)  # their config names no mask id
    config["auto_map"] = AUTO_MAP
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("configuration_llama.py", "modeling_llama.py"):
        (directory / name).write_text(REMOTE_CODE.format(name=name))
    return directory


def mask_id(directory: Path) -> int:
    """The id of `<|mtp_special_token_0|>` in the checkpoint's tokenizer (not len(base): three tokens came first)."""
    added = json.loads((directory / "tokenizer.json").read_text())["added_tokens"]
    return next(token["id"] for token in added if token["content"] == AUTHORS_MASK_TOKEN)
