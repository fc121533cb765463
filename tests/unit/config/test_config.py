"""Recipe loading, overrides, validation, DeepSpeed JSON resolution and the effective-config round trip."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from mtp_ds.config import (
    ConfigError,
    Recipe,
    apply_overrides,
    effective_config,
    gradient_accumulation_steps,
    load_recipe,
    parse_cli,
    resolve_deepspeed_config,
    resolve_model_dtype,
    resolve_teacher_config,
    save_effective_config,
)

PRETRAIN_RECIPES = {"tiny_cpu_pretrain.yaml"}  # mtp_ds.pretrain's schema (tests/test_demo.py)
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if p.name not in PRETRAIN_RECIPES)
# recipes whose inputs another stage writes first (the demo's teacher and data): stand-ins that exist
STAGE_INPUTS = {"tiny_cpu_demo.yaml": ["model.name_or_path=tests/fixtures", "data.path=tests/fixtures/gsm8k_3.jsonl"]}
DS_CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))
TINY = REPO / "recipes" / "tiny_cpu.yaml"


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_repo_ships_recipes_and_ds_configs():
    names = {p.name for p in RECIPES}
    assert {
        "qwen3_4b_metamath.yaml",
        "llama31_8b_magpie_metamath.yaml",
        "llama31_8b_magpie_ablation.yaml",
        "tiny_cpu.yaml",
    } <= names
    assert {
        "zero3_bf16.json",
        "zero3_offload.json",
        "zero3_cpu.json",
        "teacher_inference.json",
        "teacher_inference_cpu.json",
    } <= {p.name for p in DS_CONFIGS}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_resolves(path):
    header = path.read_text().splitlines()[0:12]
    assert any("torchrun" in line or "sbatch" in line for line in header), "header must give the launch command"
    recipe = load_recipe(path, STAGE_INPUTS.get(path.name, []))
    world_size = 2 if recipe.model.tiny_config or path.name in STAGE_INPUTS else 4
    for device_type in ("cuda", "cpu"):
        ds = resolve_deepspeed_config(recipe, world_size, device_type=device_type)
        assert ds["train_batch_size"] == recipe.train.global_batch_size
        assert (
            ds["train_batch_size"]
            == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world_size
        )
        resolve_teacher_config(recipe, world_size, device_type=device_type)
    assert recipe.num_regions == (recipe.packing.num_regions or recipe.data.seq_len // (2 * recipe.packing.k_max))


def test_paper_recipes_match_method():
    qwen = load_recipe(REPO / "recipes/qwen3_4b_metamath.yaml")
    assert (qwen.data.seq_len, qwen.train.global_batch_size, qwen.packing.k_min, qwen.packing.k_max) == (
        160,
        128,
        2,
        16,
    )
    assert qwen.data.chat_template is False and qwen.data.separator == "\n\n" and qwen.objective.kind == "hard"
    llama = load_recipe(REPO / "recipes/llama31_8b_magpie_metamath.yaml")
    assert llama.data.chat_template is True
    ablation = load_recipe(REPO / "recipes/llama31_8b_magpie_ablation.yaml")
    assert (ablation.data.seq_len, ablation.train.global_batch_size, ablation.data.source) == (1024, 16, "magpie")
    assert resolve_deepspeed_config(qwen, 4, device_type="cuda")["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_every_ds_config_resolves(path):
    recipe = load_recipe(TINY)
    if "teacher_inference" in path.name:
        recipe = load_recipe(TINY, [f"teacher.ds_config={path}"])
        config = resolve_teacher_config(recipe, 2, device_type="cuda")
        assert config["tensor_parallel"]["tp_size"] == 1 and config["replace_with_kernel_inject"] is False
    elif "teacher_zero3" in path.name:
        recipe = load_recipe(TINY, [f"teacher.ds_config={path}", "teacher.mode=zero3", "teacher.offload=true"])
        config = resolve_teacher_config(recipe, 2, device_type="cuda")
        assert "optimizer" not in config and config["zero_optimization"]["offload_param"]["device"] == "cpu"
    else:
        recipe = load_recipe(TINY, [f"train.deepspeed_config={path}"])
        config = resolve_deepspeed_config(recipe, 2, device_type="cuda")
        assert config["zero_optimization"]["stage"] == 3
    assert "auto" not in json.dumps(config)


def test_overrides_are_typed():
    recipe = load_recipe(
        TINY,
        [
            "train.steps=10",
            "objective.kind=soft",
            "objective.temperature=2",
            'data.separator="\\n"',
            "packing.static_k=4",
            "packing.static_k=null",
            "objective.accept_thresholds=[0.5, 0.7]",
            "model.tiny_config.hidden_size=32",
            "train.deepspeed_overrides.scheduler.params.warmup_num_steps=3",
            "checkpoint.dir=123",
            "objective.prefix_ntp_weight=1e-3",
        ],
    )
    assert recipe.train.steps == 10 and recipe.objective.kind == "soft"
    assert recipe.objective.temperature == 2.0 and isinstance(recipe.objective.temperature, float)
    assert recipe.data.separator == "\n" and recipe.packing.static_k is None
    assert recipe.objective.accept_thresholds == [0.5, 0.7]
    assert recipe.model.tiny_config["hidden_size"] == 32 and recipe.model.tiny_config["arch"] == "qwen3"
    assert recipe.checkpoint.dir == "123" and recipe.objective.prefix_ntp_weight == 1e-3
    ds = resolve_deepspeed_config(recipe, 1, device_type="cpu")
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 3
    assert ds["scheduler"]["params"]["warmup_max_lr"] == 1e-4  # the rest of the block is kept


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.steps=ten", "train.steps: expected int, got 'ten'"),
        ("train.steps=1.5", "train.steps"),
        ("data.chat_template=maybe", "data.chat_template: expected bool"),
        ("objective.accept_thresholds=[0.9, high]", "objective.accept_thresholds[1]"),
        ("packing.bidirectional=1", "packing.bidirectional: expected bool"),
        ("train.steps", "is not key=value"),
    ],
)
def test_override_type_errors(override, fragment):
    with pytest.raises(ConfigError) as error:
        load_recipe(TINY, [override])
    assert_one_line(error, fragment)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as error:
        load_recipe(TINY, ["train.stepz=3"])
    assert_one_line(
        error, "unknown recipe key 'train.stepz'; valid keys in 'train': global_batch_size, micro_batch_size, steps"
    )
    with pytest.raises(ConfigError) as error:
        load_recipe(TINY, ["trian.steps=3"])
    assert_one_line(error, "unknown recipe key 'trian.steps'", "valid top-level keys: model, data, packing")


def test_unknown_key_in_yaml_file(tmp_path):
    values = yaml.safe_load(TINY.read_text())
    values["packing"]["kmax"] = 4
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    assert_one_line(error, "unknown recipe key 'packing.kmax'; valid keys in 'packing': k_min, k_max")


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["packing.k_max=40"], ["packing.k_max=40", "data.seq_len=64"]),
        (["packing.k_min=9"], ["packing.k_min"]),
        (["packing.static_k=9"], ["packing.static_k"]),
        (["objective.kind=softer"], ["objective.kind", "hard, soft, ground_truth"]),
        (["data.source=csv"], ["data.source", "metamathqa"]),
        (["data.validation_fraction=1.0"], ["data.validation_fraction"]),
        (["train.micro_batch_size=16"], ["train.micro_batch_size=16", "train.global_batch_size=8"]),
        (["teacher.mode=remote"], ["teacher.mode"]),
        (["train.deepspeed_config=ds_configs/nope.json"], ["train.deepspeed_config", "nope.json"]),
        (["data.path=/nonexistent/data.jsonl", "data.source=jsonl"], ["data.path", "/nonexistent/data.jsonl"]),
        (["data.path=tests/fixtures/missing.jsonl"], ["data.path", "missing.jsonl"]),
        (["model.tiny_config=null"], ["model.name_or_path", "model.tiny_config"]),
        (["checkpoint.resume=/no/such/ckpt"], ["checkpoint.resume"]),
        (["model.pad_vocab_to_multiple_of=0"], ["model.pad_vocab_to_multiple_of"]),
    ],
)
def test_validation_errors(overrides, fragments):
    with pytest.raises(ConfigError) as error:
        load_recipe(TINY, overrides)
    assert_one_line(error, *fragments)


def test_model_path_rules(tmp_path):
    base = ["model.tiny_config=null"]
    hub = load_recipe(TINY, base + ["model.name_or_path=Qwen/Qwen3-4B-Instruct-2507"])  # not touched
    assert hub.model.name_or_path == "Qwen/Qwen3-4B-Instruct-2507"
    assert load_recipe(TINY, base + [f"model.name_or_path={tmp_path}"]).model.name_or_path == str(tmp_path)
    for missing in ("/does/not/exist", "./models/qwen", "~/nope/model", "a/b/c"):
        with pytest.raises(ConfigError) as error:
            load_recipe(TINY, base + [f"model.name_or_path={missing}"])
        assert_one_line(error, "model.name_or_path", missing)
    with pytest.raises(ConfigError) as error:
        load_recipe(TINY, ["model.name_or_path=Qwen/Qwen3-4B-Instruct-2507"])  # and tiny_config: both set
    assert_one_line(error, "exactly one of")


def test_world_size_divisibility():
    recipe = load_recipe(TINY)  # global 8, micro 2
    assert gradient_accumulation_steps(recipe, 1) == 4 and gradient_accumulation_steps(recipe, 4) == 1
    with pytest.raises(ConfigError) as error:
        gradient_accumulation_steps(recipe, 3)
    assert_one_line(error, "train.global_batch_size=8", "train.micro_batch_size * world_size = 2 * 3 = 6")
    with pytest.raises(ConfigError):
        resolve_deepspeed_config(recipe, 3, device_type="cpu")


def _recipe_with_ds(tmp_path, **fields):
    base = json.loads((REPO / "ds_configs/zero3_bf16.json").read_text())
    base.update(fields)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(base))
    return load_recipe(TINY, [f"train.deepspeed_config={path}"])


def test_ds_auto_filling_and_precision(tmp_path):
    recipe = load_recipe(TINY, ["train.deepspeed_config=ds_configs/zero3_bf16.json"])
    gpu = resolve_deepspeed_config(recipe, 2, device_type="cuda")
    assert (gpu["train_batch_size"], gpu["train_micro_batch_size_per_gpu"], gpu["gradient_accumulation_steps"]) == (
        8,
        2,
        2,
    )
    assert gpu["bf16"]["enabled"] is True and gpu["fp16"]["enabled"] is False
    cpu = resolve_deepspeed_config(recipe, 2, device_type="cpu")
    assert cpu["bf16"]["enabled"] is False
    assert resolve_model_dtype(recipe, gpu) == "bfloat16" and resolve_model_dtype(recipe, cpu) == "float32"
    with pytest.raises(ConfigError) as error:
        resolve_model_dtype(load_recipe(TINY, ["model.dtype=float16"]), gpu)
    assert_one_line(error, "model.dtype=float16", "bfloat16")
    # absent batch fields are filled too; explicit agreeing values are kept
    sparse = _recipe_with_ds(tmp_path, train_batch_size=8)
    del_config = json.loads(Path(sparse.train.deepspeed_config).read_text())
    del del_config["gradient_accumulation_steps"]
    Path(sparse.train.deepspeed_config).write_text(json.dumps(del_config))
    assert resolve_deepspeed_config(sparse, 4, device_type="cpu")["gradient_accumulation_steps"] == 1


def test_decaying_schedule_total_steps_auto_is_the_run_length():
    decay = {"scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto", "warmup_max_lr": 1e-3}}}
    recipe = load_recipe(TINY, ["train.steps=37", f"train.deepspeed_overrides={json.dumps(decay)}"])
    params = resolve_deepspeed_config(recipe, 2, device_type="cpu")["scheduler"]["params"]
    assert params["total_num_steps"] == 37 and params["warmup_max_lr"] == 1e-3
    assert params["warmup_num_steps"] == 10  # the JSON's other params are kept


@pytest.mark.parametrize(
    "field, value, fragments",
    [
        ("train_batch_size", 64, ["train_batch_size=64", "train.global_batch_size gives 8"]),
        ("train_micro_batch_size_per_gpu", 4, ["train_micro_batch_size_per_gpu=4", "train.micro_batch_size gives 2"]),
        ("gradient_accumulation_steps", 1, ["gradient_accumulation_steps=1", "gives 2"]),
    ],
)
def test_ds_batch_conflict_shows_both_values(tmp_path, field, value, fragments):
    recipe = _recipe_with_ds(tmp_path, **{field: value})
    with pytest.raises(ConfigError) as error:
        resolve_deepspeed_config(recipe, 2, device_type="cuda")
    assert_one_line(error, *fragments)


def test_ds_unsupported_auto_and_teacher_tp_conflict(tmp_path):
    recipe = _recipe_with_ds(tmp_path, optimizer={"type": "AdamW", "params": {"lr": "auto"}})
    with pytest.raises(ConfigError) as error:
        resolve_deepspeed_config(recipe, 2, device_type="cuda")
    assert_one_line(error, "optimizer.params.lr")
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"dtype": "auto", "tensor_parallel": {"tp_size": 2}}))
    recipe = load_recipe(TINY, [f"teacher.ds_config={teacher}"])
    with pytest.raises(ConfigError) as error:
        resolve_teacher_config(recipe, 2, device_type="cuda")
    assert_one_line(error, "tp_size=2", "teacher.tp_size gives 1")


def test_effective_config_round_trip(tmp_path):
    recipe = load_recipe(
        TINY,
        [
            "train.steps=7",
            "objective.kind=soft",
            'data.separator="\\n"',
            "train.deepspeed_overrides={gradient_clipping: 0.5}",
        ],
    )
    ds = resolve_deepspeed_config(recipe, 2, device_type="cpu")
    effective = effective_config(recipe, ds, world_size=2, device_type="cpu")
    for name in ("effective.yaml", "effective.json"):
        save_effective_config(tmp_path / name, effective)
        again = load_recipe(tmp_path / name)
        assert again == recipe and isinstance(again, Recipe)
        assert resolve_deepspeed_config(again, 2, device_type="cpu") == ds
    saved = yaml.safe_load((tmp_path / "effective.yaml").read_text())
    assert saved["deepspeed"]["gradient_clipping"] == 0.5 and saved["world_size"] == 2


def test_parse_cli_and_dict_overrides():
    recipe = parse_cli([str(TINY), "train.steps=3"])
    assert recipe.train.steps == 3
    with pytest.raises(ConfigError):
        parse_cli(["train.steps=3"])
    values = apply_overrides({}, ["data.seq_len=32", "packing.k_max=4"])
    assert values == {"data": {"seq_len": 32}, "packing": {"k_max": 4}}


def test_exponent_floats_are_floats_in_overrides_and_files(tmp_path):
    """YAML 1.1 reads `1e-5` as a string; users write it everywhere (learning rates)."""
    recipe = load_recipe("recipes/tiny_cpu.yaml", ["train.deepspeed_overrides.optimizer.params.lr=3e-3"])
    assert recipe.train.deepspeed_overrides["optimizer"]["params"]["lr"] == 0.003


PAPER_RECIPES = ["qwen3_4b_metamath.yaml", "llama31_8b_magpie_metamath.yaml", "llama31_8b_magpie_ablation.yaml"]


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_use_adamw_at_pytorch_defaults_without_clipping(name):
    """docs/METHOD.md section 5: AdamW at PyTorch defaults (lr 1e-5 set), 2000 linear warm-up steps then
    constant; nothing the paper does not do, such as gradient clipping."""
    recipe = load_recipe(REPO / "recipes" / name, validate=False)
    resolved = resolve_deepspeed_config(recipe, 4, device_type="cuda")
    assert resolved.get("gradient_clipping", 0.0) == 0.0
    optimizer = resolved["optimizer"]
    assert optimizer["type"] == "AdamW"
    hyperparameters = {key: optimizer["params"][key] for key in ("lr", "betas", "eps", "weight_decay")}
    assert hyperparameters == {"lr": 1e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    scheduler = resolved["scheduler"]
    assert scheduler["type"] == "WarmupLR" and scheduler["params"]["warmup_num_steps"] == 2000
    assert scheduler["params"]["warmup_max_lr"] == 1e-5 and scheduler["params"]["warmup_type"] == "linear"


def deepspeed_optimizer_class(resolved: dict) -> type:
    """The optimizer class DeepSpeed's own selection code picks for a resolved config's Adam / AdamW block
    (`DeepSpeedEngine.get_optimizer_configuration`, on a stand-in engine: nothing is built or initialised)."""
    from types import SimpleNamespace

    from deepspeed.runtime.engine import DeepSpeedEngine

    offload = (resolved["zero_optimization"].get("offload_optimizer") or {}).get("device", "none")
    engine = SimpleNamespace(
        zero_use_cpu_optimizer=lambda: offload in ("cpu", "nvme"), zenflow=False, bf16_optimizer_states=lambda: False
    )
    params = dict(resolved["optimizer"]["params"])
    chosen, _ = DeepSpeedEngine.get_optimizer_configuration(engine, params, resolved["optimizer"]["type"] == "AdamW")
    return chosen


TRAINING_DS_CONFIGS = [path for path in DS_CONFIGS if "optimizer" in json.loads(path.read_text())]


@pytest.mark.parametrize("path", [*RECIPES, *TRAINING_DS_CONFIGS], ids=lambda p: p.name)
def test_gpu_optimizer_needs_no_build_on_the_compute_node(path):
    """Adam / AdamW without `torch_adam` is DeepSpeed's FusedAdam (DeepSpeedCPUAdam with optimizer offload),
    JIT-compiled at deepspeed.initialize with nvcc + ninja, which compute nodes often lack. Every recipe and every
    shipped training JSON, resolved for a GPU, must select torch's AdamW instead (fused: its prebuilt kernel), and
    torch must accept the JSON's parameters."""
    import torch

    if path.suffix == ".json":
        recipe = load_recipe(TINY, [f"train.deepspeed_config={path}"])
    else:
        recipe = load_recipe(path, STAGE_INPUTS.get(path.name, []), validate=False)
    resolved = resolve_deepspeed_config(recipe, 1, device_type="cuda")
    chosen = deepspeed_optimizer_class(resolved)
    assert chosen.__module__.startswith("torch.optim"), f"{path.name}: DeepSpeed would build {chosen.__name__}"
    params = {k: v for k, v in resolved["optimizer"]["params"].items() if k != "torch_adam"}
    chosen([torch.nn.Parameter(torch.zeros(2))], **params)  # CPU here: the fused kernel exists on both


def without_packages(monkeypatch, *names: str) -> None:
    """importlib.util.find_spec as in an environment where `names` are not installed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


@pytest.mark.parametrize("key, package", [("logging.tensorboard", "tensorboard"), ("logging.wandb", "wandb")])
@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_an_optional_dependency_switched_on_but_missing_stops_the_recipe_with_the_pip_command(
    name, key, package, monkeypatch
):
    """Not after the models have loaded (rank 0 died in train/tracking.py); the Slurm scripts and their dry run
    parse the recipe with the same code (slurm/common.sh, mtp_check_recipe), so they stop there too."""
    without_packages(monkeypatch, package)
    load_recipe(REPO / "recipes" / name)  # off by default: the default install runs every recipe
    for load in (
        lambda: load_recipe(REPO / "recipes" / name, [f"{key}=true"]),
        lambda: parse_cli([str(REPO / "recipes" / name), f"{key}=true"]),
    ):
        with pytest.raises(ConfigError) as error:
            load()
        assert_one_line(error, f"{key}=true", package, f"pip install -e '.[{package}]'", f"{key}=false")
