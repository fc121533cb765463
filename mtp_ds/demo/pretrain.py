"""Plain next-token pretraining of a small model from a config: the demo's teacher, before its MTP conversion.

Why one process: a model of a few million parameters trains fastest as one process on every core (DeepSpeed's
sharding buys nothing). It reads the trainer's `model` and `data` sections (same tokenisation and prompt format),
runs AdamW with warm-up and cosine decay, keeps a resumable state every `pretrain.save_every` steps, and writes
a plain Hugging Face checkpoint (+ tokenizer) with a DONE marker.
Usage: mtp-ds pretrain recipes/tiny_cpu_pretrain.yaml [section.key=value ...]   (or python -m mtp_ds.demo.pretrain)
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtp_ds.config import ConfigError, DataConfig, ModelConfig, read_recipe_file, resolve_path
from mtp_ds.config import values as config_values
from mtp_ds.fileio import atomic_write_text, atomic_writer, fsync_tree

STATE_FILE = "pretrain_state.pt"
DONE_FILE = "DONE"


@dataclass
class PretrainSettings:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * this
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    loss_on_prompt: bool = False  # False: loss on response tokens (and the closing EOS) only, as in SFT
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; default all cores
    save_every: int = 200  # resumable state every this many steps
    out_dir: str = "outputs/pretrain"


@dataclass
class PretrainRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)


def load_pretrain_recipe(path: str, overrides: list[str] = ()) -> PretrainRecipe:
    values = config_values.apply_overrides(PretrainRecipe, read_recipe_file(path), list(overrides))
    recipe = config_values.build_config(PretrainRecipe, values, origin=str(path))
    if recipe.model.tiny_config is None or recipe.model.tokenizer is None:
        raise ConfigError("model: pretraining needs model.tiny_config (architecture) and model.tokenizer (a local dir)")
    for key in ("steps", "batch_size", "save_every"):
        if getattr(recipe.pretrain, key) < 1:
            raise ConfigError(f"pretrain.{key}: must be >= 1, got {getattr(recipe.pretrain, key)}")
    for key, value, ok, requirement in (
        ("lr", recipe.pretrain.lr, recipe.pretrain.lr > 0, "> 0"),
        ("warmup_steps", recipe.pretrain.warmup_steps, recipe.pretrain.warmup_steps >= 0, ">= 0"),
        ("min_lr_ratio", recipe.pretrain.min_lr_ratio, 0 <= recipe.pretrain.min_lr_ratio <= 1, "in [0, 1]"),
    ):
        if not ok:
            raise ConfigError(f"pretrain.{key}: must be {requirement}, got {value}")
    if not resolve_path(str(recipe.data.path)).exists():
        raise ConfigError(f"data.path: file {recipe.data.path!r} does not exist")
    return recipe


def learning_rate(step: int, settings: PretrainSettings) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = settings.min_lr_ratio
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def ntp_batch(rows: list[dict], *, loss_on_prompt: bool, ignore_index: int = -100):
    """(input_ids, labels) cut to the longest sample of the batch, in Hugging Face's `labels` convention.

    labels[i] is the token at i where it is a target (the model shifts: position i-1 predicts it), else
    ignore: prompt tokens (unless loss_on_prompt) and the EOS padding after a sample's own EOS. Padding sits
    at the end, so causal attention never lets a real token see it and no attention mask is needed.
    """
    width = max(row["length"] for row in rows)
    input_ids = torch.tensor([row["input_ids"][:width] for row in rows], dtype=torch.long)
    labels = torch.full_like(input_ids, ignore_index)
    for index, row in enumerate(rows):
        first = 1 if loss_on_prompt else max(row["response_start"], 1)
        labels[index, first : row["length"]] = input_ids[index, first : row["length"]]
    return input_ids, labels


class LengthBucketSampler:
    """Batches of similar length (so little compute goes to padding), a pure function of (seed, epoch).

    Each epoch shuffles the samples, sorts every window of `window` batches by length, cuts it into batches
    and shuffles the batches. State is (epoch, batch position): a resumed run continues with the next batch.
    """

    def __init__(self, lengths: list[int], batch_size: int, *, seed: int, window: int = 32):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.epoch, self.position, self._batches = 0, 0, None

    def batches(self, epoch: int) -> list[list[int]]:
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        order, span = rng.permutation(len(self.lengths)).tolist(), self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            window = sorted(order[start : start + span], key=self.lengths.__getitem__)
            batches += [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def next_batch(self) -> list[int]:
        if self._batches is None:
            self._batches = self.batches(self.epoch)
        if self.position == len(self._batches):
            self.epoch, self.position, self._batches = self.epoch + 1, 0, self.batches(self.epoch + 1)
        self.position += 1
        return self._batches[self.position - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._batches = state["epoch"], state["position"], None


def _save_state(path: Path, model, optimizer, step: int, sampler) -> None:
    from mtp_ds.checkpoint.store import rng_state

    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
    }
    with atomic_writer(path, "wb") as handle:  # a crash while saving keeps the previous state
        torch.save(state, handle)


def pretrain(recipe: PretrainRecipe) -> Path:
    """Train (or resume, or skip when DONE) and return the Hugging Face checkpoint directory."""
    from tqdm.auto import tqdm

    from mtp_ds.checkpoint.store import set_rng_state
    from mtp_ds.data.sources import load_raw_dataset
    from mtp_ds.data.tokenize import tokenize_dataset
    from mtp_ds.models.loading import load_base_model, load_tokenizer

    settings = recipe.pretrain
    out_dir = Path(settings.out_dir)
    if (out_dir / DONE_FILE).exists():
        print(f"skip: {out_dir} is complete (DONE)")
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(recipe.model)
    dataset = tokenize_dataset(load_raw_dataset(recipe.data), tokenizer, recipe.data).with_format("python")
    model = load_base_model(
        recipe.model, dtype=torch.float32, attn_implementation="sdpa", vocab_size=len(tokenizer), seed=settings.seed
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    sampler = LengthBucketSampler(dataset["length"], settings.batch_size, seed=settings.seed)
    state_path, start = out_dir / STATE_FILE, 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        start = state["step"]
        print(f"pretrain: resuming at step {start} from {state_path}")
    else:
        torch.manual_seed(settings.seed)
    model.train()
    progress = tqdm(
        range(start, settings.steps), initial=start, total=settings.steps, desc="pretrain (NTP)", dynamic_ncols=True
    )
    tokens, started = 0, time.perf_counter()
    for step in progress:
        input_ids, labels = ntp_batch(_rows(dataset, sampler.next_batch()), loss_on_prompt=settings.loss_on_prompt)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss = model(input_ids=input_ids, labels=labels).loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretrain: non-finite loss {loss.item()} at step {step}; lower pretrain.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        tokens += int((labels != -100).sum())
        progress.set_postfix(
            loss=f"{loss.item():.3f}",
            lr=f"{learning_rate(step, settings):.1e}",
            tok_s=f"{tokens / (time.perf_counter() - started):.0f}",
        )
        if (step + 1) % settings.save_every == 0 and step + 1 < settings.steps:
            _save_state(state_path, model, optimizer, step + 1, sampler)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    fsync_tree(out_dir)  # the checkpoint is on disk before DONE vouches for it
    atomic_write_text(out_dir / DONE_FILE, f"{settings.steps}\n")
    state_path.unlink(missing_ok=True)
    return out_dir


def _rows(dataset, indices: list[int]) -> list[dict]:
    batch = dataset[indices]
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


USAGE = """usage: mtp-ds pretrain RECIPE.yaml [section.key=value ...]

Pretrain a small model as a plain next-token model, in one process: the demo's teacher. The recipe has the
trainer's model and data sections plus a pretrain section (PretrainSettings); section.key=value overrides a key.
A stopped run resumes from its last state with the same command.

example (after `mtp-ds demo` has written the data and the tokenizer):
  mtp-ds pretrain recipes/tiny_cpu_pretrain.yaml model.tokenizer=outputs/demo/tokenizer pretrain.steps=200"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not argv or "=" in argv[0]:
        print(USAGE.splitlines()[0], file=sys.stderr)
        return 2
    try:
        recipe = load_pretrain_recipe(argv[0], argv[1:])
    except ConfigError as error:
        print(f"mtp-ds pretrain: {error}", file=sys.stderr)
        return 2
    print(f"pretrained model and tokenizer: {pretrain(recipe)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
