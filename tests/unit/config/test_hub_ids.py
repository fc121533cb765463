"""Every Hub id a recipe or a document names is one of mtp_ds/config/hub_ids.py's, each checked against its page.

A misspelt id (the Llama recipes had `Llama-3.1-8B-MagpieAlign-SFT-v0.1`) passes every offline check and
fails on the cluster, on every rank, in `from_pretrained`."""

import re

import pytest
from helpers import REPO

from mtp_ds.config import load_recipe, resolve_path
from mtp_ds.config.hub_ids import HUB_DATASETS, HUB_IDS, HUB_MODELS
from mtp_ds.config.recipe import HUB_ID
from mtp_ds.data.sources import METAMATHQA_HUB_ID

RECIPES = sorted(path for path in (REPO / "recipes").glob("*.yaml") if path.name != "tiny_cpu_pretrain.yaml")
# where users read ids: the docs, the recipes' headers, the Slurm scripts' comments
DOCUMENTS = sorted(
    [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "ARCHITECTURE.md", *(REPO / "docs").glob("*.md")]
    + [*(REPO / "recipes").glob("*.yaml"), *(REPO / "slurm").glob("*.sh"), *(REPO / "eval").glob("*.md")]
)


def hub_ids(values) -> list[str]:
    """The values that name a Hub repo (`owner/name` that is not a local path)."""
    values = [values] if isinstance(values, str) else list(values or [])
    return [value for value in values if HUB_ID.match(value) and not resolve_path(value).exists()]


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_every_recipe_names_listed_ids(path):
    recipe = load_recipe(path, validate=False)
    for value in hub_ids([recipe.model.name_or_path or "", recipe.model.tokenizer or ""]):
        assert value in HUB_MODELS, f"{path.name}: model id {value!r} is not in mtp_ds/config/hub_ids.py"
    for value in hub_ids(recipe.data.path):
        assert value in HUB_DATASETS, f"{path.name}: data id {value!r} is not in mtp_ds/config/hub_ids.py"


def test_the_paper_recipes_use_the_authors_checkpoints_and_data():
    names = {
        path.name: load_recipe(path, validate=False) for path in RECIPES if path.name.startswith(("qwen3", "llama31"))
    }
    assert {recipe.model.name_or_path for recipe in names.values()} == set(HUB_MODELS)
    ablation = names["llama31_8b_magpie_ablation.yaml"]
    assert ablation.model.name_or_path == "Magpie-Align/Llama-3.1-8B-Magpie-Align-SFT-v0.1"
    assert ablation.data.path == ["Magpie-Align/Magpie-Pro-MT-300K-v0.1", "Magpie-Align/Magpie-Reasoning-V1-150K"]
    assert METAMATHQA_HUB_ID in HUB_DATASETS  # the metamathqa source's default path


def test_every_mention_of_these_owners_in_the_docs_is_a_listed_id():
    owners = sorted({hub_id.split("/")[0] for hub_id in HUB_IDS})
    mention = re.compile(rf"(?<![\w.-])(?:{'|'.join(map(re.escape, owners))})/[\w.-]*\w")
    unknown = {
        f"{path.relative_to(REPO)}: {found}"
        for path in DOCUMENTS
        for found in mention.findall(path.read_text())
        if found not in HUB_IDS
    }
    assert not unknown, f"not in mtp_ds/config/hub_ids.py (check the id's page, then add it): {sorted(unknown)}"


def test_every_listed_id_has_its_page():
    for hub_id, page in HUB_IDS.items():
        kind = "datasets/" if hub_id in HUB_DATASETS else ""
        assert page == f"https://huggingface.co/{kind}{hub_id}"
