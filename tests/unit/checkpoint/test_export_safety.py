"""`mtp-ds export` never loses a model and never ends in a traceback: it refuses an OUT_DIR that holds another
model (`--overwrite` moves it into OUT_DIR/replaced/), verifies the checkpoint's COMPLETE manifest before DeepSpeed
reads a shard, names a crafted shard's forbidden global, and says in one line when OUT_DIR cannot be written.

The checkpoints are DeepSpeed-format ZeRO-3 files of a tiny model made in milliseconds (`helpers.zero3_checkpoint`);
`mtp-ds export` of a real run's shards is in the integration tier.
"""

import os
import pickle
import stat

import pytest
import torch
import transformers
from helpers import snapshot, zero3_checkpoint

from mtp_ds.checkpoint.export import EXPORT_MARKER, main
from mtp_ds.checkpoint.manifest import COMPLETE, checkpoint_files, describe, write_marker
from mtp_ds.checkpoint.ownership import REPLACED_DIR
from mtp_ds.models.tiny import tiny_model

PREFIX = "mtp-ds export: "


def checkpoint_of(root, seed=0, run_id="run-a", step=4):
    """A tiny model's checkpoint with a real manifest (sizes, SHA-256, run id), as training writes it."""
    path = zero3_checkpoint(root / f"step{step:08d}", tiny_model("qwen3", seed=seed))
    write_marker(path, step=step, run_id=run_id, world_size=2, files=describe(path, checkpoint_files(path)))
    return path


def export(capfd, *args) -> tuple[int, list[str]]:
    """The exit code and stderr's lines without DeepSpeed's and transformers' progress output."""
    code = main([str(arg) for arg in args])
    err = capfd.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith(PREFIX) or "Traceback" in line]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return checkpoint_of(root / "a", seed=0, run_id="run-a"), checkpoint_of(root / "b", seed=1, run_id="run-b")


def test_export_refuses_a_directory_holding_another_model_and_overwrite_moves_it_aside(
    two_checkpoints, tmp_path, capfd
):
    first, second = two_checkpoints
    out = tmp_path / "mtp"
    assert export(capfd, first, out)[0] == 0
    before = snapshot(out)
    assert export(capfd, first, out)[0] == 0, "a re-export of the same checkpoint is allowed"

    code, lines = export(capfd, second, out)
    assert code == 2 and lines == [
        f"{PREFIX}OUT_DIR {str(out)!r} holds an export of another checkpoint ({first.resolve()}); choose another "
        f"OUT_DIR, or pass --overwrite to move what it holds into {out / REPLACED_DIR}/"
    ]
    assert snapshot(out) == before, "the refused export changed OUT_DIR"

    code, lines = export(capfd, second, out, "--overwrite")
    assert code == 0 and lines == []
    [aside] = (out / REPLACED_DIR).iterdir()
    assert snapshot(aside) == before, "the old model is kept, byte for byte"
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert str(second.resolve()) in (out / EXPORT_MARKER).read_text()


def test_export_refuses_a_non_empty_directory_that_is_no_export(two_checkpoints, tmp_path, capfd):
    first, _ = two_checkpoints
    out = tmp_path / "someone-elses-model"
    tiny_model("llama").save_pretrained(out)
    before = snapshot(out)
    code, lines = export(capfd, first, out)
    assert code == 2 and lines == [
        f"{PREFIX}OUT_DIR {str(out)!r} is not empty (config.json, generation_config.json, model.safetensors) and "
        f"is not an export of this checkpoint; choose another OUT_DIR, or pass --overwrite to move what it holds "
        f"into {out / REPLACED_DIR}/"
    ]
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["the checkpoint itself", "its run directory", "inside the checkpoint"])
def test_export_refuses_an_out_dir_that_would_touch_the_checkpoint(two_checkpoints, capfd, where):
    first, _ = two_checkpoints
    out = {"the checkpoint itself": first, "its run directory": first.parent, "inside the checkpoint": first / "hf"}
    before = snapshot(first.parent)
    code, lines = export(capfd, first, out[where], "--overwrite")
    assert code == 2 and len(lines) == 1 and "OUT_DIR" in lines[0] and "outside the checkpoint" in lines[0]
    assert snapshot(first.parent) == before


@pytest.mark.parametrize("damage", ["truncated", "bit flip"])
def test_export_verifies_the_manifest_before_reading_a_shard(tmp_path, capfd, damage):
    checkpoint = checkpoint_of(tmp_path / "run")
    shard = checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[:500])
        problem = f"{shard.name} has 500 bytes, the manifest says {len(data)}"
    else:
        shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        problem = f"{shard.name} does not match its SHA-256 in {COMPLETE}"
    code, lines = export(capfd, checkpoint, tmp_path / "out")
    assert code == 2 and lines == [
        f"{PREFIX}CHECKPOINT {str(checkpoint)!r} is damaged: {problem}; export an intact copy or an older checkpoint"
    ]
    assert not (tmp_path / "out").exists()


def test_a_truncated_shard_without_a_manifest_is_one_line(tmp_path, capfd):
    """A COMPLETE from before manifests vouches for no file: DeepSpeed's own error becomes the line."""
    checkpoint = zero3_checkpoint(tmp_path / "run" / "step00000004", tiny_model("qwen3"))
    shard = checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:500])
    code, lines = export(capfd, checkpoint, tmp_path / "out")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{PREFIX}CHECKPOINT {str(checkpoint)!r}: its shards cannot be read (")
    assert lines[0].endswith(f"its {COMPLETE} has no file manifest to name the damaged file")


class MakeDirectoryOnUnpickle:
    """Unpickling it calls `os.mkdir(marker)`: code from a module torch's safe unpickler blocks outright
    (posix), whose refusal in torch's words advises re-running with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("kind", ["torch.save zip", "plain pickle"])
def test_a_crafted_shard_is_refused_naming_its_forbidden_global(tmp_path, capfd, kind):
    checkpoint = zero3_checkpoint(tmp_path / "run" / "step00000004", tiny_model("qwen3"))
    shard, marker = checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt", tmp_path / "the_payload_ran"
    payload = {"optimizer_state_dict": MakeDirectoryOnUnpickle(marker)}
    if kind == "torch.save zip":
        torch.save(payload, shard)
    else:
        shard.write_bytes(pickle.dumps(payload))
    # the whole checkpoint is crafted: its manifest matches the shard
    write_marker(
        checkpoint, step=4, run_id="run-a", world_size=2, files=describe(checkpoint, checkpoint_files(checkpoint))
    )
    code, lines = export(capfd, checkpoint, tmp_path / "out")
    assert not marker.exists(), "export ran the shard's pickle code"
    assert code == 2 and lines == [
        f"{PREFIX}{shard}: refusing to unpickle it (forbidden global: {os.mkdir.__module__}.mkdir): export reads "
        "DeepSpeed's shards with torch.load(weights_only=True), which allows tensors, plain containers and "
        "ZeroStageEnum, LossScaler, DynamicLossScaler only"
    ]
    assert not (tmp_path / "out").exists()


def test_export_into_a_read_only_directory_is_one_line(two_checkpoints, tmp_path, capfd):
    first, _ = two_checkpoints
    read_only = tmp_path / "mount"
    read_only.mkdir()
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("this user (root) may write into a 0555 directory")
        code, lines = export(capfd, first, read_only / "mtp")
    finally:
        read_only.chmod(0o755)
    assert code == 2 and lines == [
        f"{PREFIX}OUT_DIR {str(read_only / 'mtp')!r} cannot be written: {str(read_only)!r} is not writable "
        "(read-only, or not yours); choose another OUT_DIR"
    ]
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("failure", ["name too long", "a directory in the way"])
def test_an_out_dir_the_file_system_refuses_is_one_line(two_checkpoints, tmp_path, capfd, failure):
    """Failures of the file system, not of permissions, so that they fail for root too: a name longer than it
    allows (found by the checks), and a folder where the export writes config.json (found while writing, like a
    full disk)."""
    first, _ = two_checkpoints
    out = tmp_path / ("x" * 300 if failure == "name too long" else "mtp")
    errno = 36
    if failure == "a directory in the way":
        assert export(capfd, first, out)[0] == 0
        (out / "config.json").unlink()
        (out / "config.json").mkdir()
        errno = 21
    code, lines = export(capfd, first, out)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{PREFIX}cannot write the export into OUT_DIR {str(out)!r}: [Errno {errno}]")


def test_export_sets_dtype_without_the_torch_dtype_deprecation(two_checkpoints, tmp_path, capfd, caplog):
    first, _ = two_checkpoints
    transformers.utils.logging.warning_once.cache_clear()  # a warning given earlier in this process is given again
    code = main([str(first), str(tmp_path / "out")])
    said = capfd.readouterr().err + caplog.text
    assert code == 0 and "torch_dtype" not in said, said
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").dtype == torch.bfloat16
