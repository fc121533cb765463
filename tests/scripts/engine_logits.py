"""Run under torchrun: rebuild the trainer's engines from a recipe, load a checkpoint, and save the student's
logits on a fixed input (gathered from the ZeRO-3 shards by the engine's own hooks).

    torchrun --nproc_per_node=2 tests/scripts/engine_logits.py RECIPE CHECKPOINT OUT.pt [key=value ...]
"""

import sys
from pathlib import Path

import torch

from mtp_ds.checkpoint.store import load_checkpoint
from mtp_ds.config import load_recipe, plan_run
from mtp_ds.train.distributed import setup_distributed
from mtp_ds.train.state import TrainState

recipe_path, checkpoint, out, *overrides = sys.argv[1:]
recipe = load_recipe(recipe_path, overrides)
rank, world, local_rank = setup_distributed("cpu")
state = TrainState.build(recipe, plan_run(recipe, world, device_type="cpu"), rank, local_rank)
load_checkpoint(state.engine, Path(checkpoint))
probe = torch.arange(4, 36).reshape(2, 16)
with torch.no_grad():
    logits = state.student(input_ids=probe).logits
if rank == 0:
    torch.save(logits, out)
torch.distributed.destroy_process_group()
