"""Under torchrun: build the trainer's models from a saved (non-random) checkpoint, so the student is loaded
under HfDeepSpeedConfig + ZeRO-3 and gets its mask token through the partitioned branch of add_mtp_tokens;
save the gathered embedding rows of the mask token.

    torchrun --nproc_per_node=2 tests/scripts/zero3_mask_token.py CHECKPOINT_DIR OUT.pt
"""

import sys

import deepspeed
import torch

from mtp_ds.config import load_recipe, plan_run
from mtp_ds.models.loading import device_for_rank, load_tokenizer
from mtp_ds.models.student import build_models
from mtp_ds.train.distributed import setup_distributed

checkpoint, out = sys.argv[1:]
recipe = load_recipe(
    "recipes/tiny_cpu.yaml",
    [f"model.name_or_path={checkpoint}", "model.tiny_config=null", "model.tokenizer=null", "train.seed=5"],
)
rank, world, local_rank = setup_distributed("cpu")
plan = plan_run(recipe, world, device_type="cpu")
models = build_models(recipe, plan, tokenizer=load_tokenizer(recipe.model), device=device_for_rank(local_rank))
student = models.student
embedding, head = student.get_input_embeddings().weight, student.get_output_embeddings().weight
partitioned = hasattr(embedding, "ds_id") and embedding.numel() < int(embedding.ds_shape.numel())
with deepspeed.zero.GatheredParameters([embedding, head]):
    ids = list(models.mask_tokens.ids)
    rows = {
        "ids": ids,
        "input": embedding[ids].detach().clone(),
        "output": head[ids].detach().clone(),
        "rows": embedding.shape[0],
        "partitioned": partitioned,
    }
if rank == 0:
    torch.save(rows, out)
torch.distributed.destroy_process_group()
