"""The shape of the package (ARCHITECTURE.md): rooms, which room may import which, no cycles, stable entry points.

The import graph is read with `ast` from the source files (nothing is imported or executed), lazy imports
inside functions included: a lazy import is still a dependency. `check_graph` is tested on hand-made graphs
first, so a checker that finds nothing cannot pass for a clean tree.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "mtp_ds"

METHOD = (
    "mtp_ds.tokens",
    "mtp_ds.layout",
    "mtp_ds.batching",
    "mtp_ds.objective",
    "mtp_ds.metrics",
    "mtp_ds.acceptance",
    "mtp_ds.decoding",
)
ROOMS = {  # room -> module-name prefixes (a prefix matches itself and everything below it)
    "method": METHOD,
    "config": ("mtp_ds.config",),
    "data": ("mtp_ds.data",),
    "runtime": ("mtp_ds.models", "mtp_ds.checkpoint"),
    "train": ("mtp_ds.train",),
    "evaluation": ("mtp_ds.evaluation",),
    "demo": ("mtp_ds.demo",),
    "tools": ("mtp_ds.render",),
    "entry": ("mtp_ds.cli",),
    "io": ("mtp_ds.fileio",),
    "root": ("mtp_ds",),
}
MAY_IMPORT = {  # room -> rooms it may import (its own room always); "io" is the bottom room, below every other
    "method": {"io"},
    "config": {"root", "io"},
    "data": {"config", "method", "io"},
    "runtime": {"config", "method", "io"},
    "train": {"config", "data", "method", "runtime", "io"},
    "evaluation": {"method", "io"},
    "demo": {"config", "data", "method", "runtime", "evaluation", "io"},
    "tools": {"method", "io"},
    "entry": {"io"},
    "io": set(),
    "root": set(),
}
# third-party packages only some rooms may touch (anything else: stdlib, torch, transformers, yaml, ...)
EXTERNAL_ONLY_IN = {
    "deepspeed": {"runtime", "train"},
    "lm_eval": {"evaluation"},
    "datasets": {"data"},
}
# rooms limited to the standard library plus these: `import mtp_ds.config` must be instant, fileio is stdlib only
STDLIB_ROOMS = {"config": {"yaml"}, "io": set()}


def room_of(module: str) -> str:
    best = max(
        (
            (room, prefix)
            for room, prefixes in ROOMS.items()
            for prefix in prefixes
            if module == prefix or module.startswith(prefix + ".")
        ),
        key=lambda item: len(item[1]),
    )
    return best[0]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(internal edges, external top-level packages) per module of the package at `root`."""
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    internal: dict[str, set[str]] = {name: set() for name in files}
    external: dict[str, set[str]] = {name: set() for name in files}
    package = root.name
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    targets.append(candidate if candidate in files else base)
            for target in targets:
                if target == package or target.startswith(package + "."):
                    while target not in files:  # `import mtp_ds.x.y` of a name that is not a module
                        target = target.rsplit(".", 1)[0]
                    if target != name:
                        internal[name].add(target)
                elif target and target != "__future__":
                    external[name].add(target.split(".")[0])
    return internal, external


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def check_graph(internal: dict[str, set[str]], external: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each (empty: the tree follows ARCHITECTURE.md)."""
    problems = []
    cycle = find_cycle(internal)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    for module, targets in sorted(internal.items()):
        room = room_of(module)
        for target in sorted(targets):
            target_room = room_of(target)
            if target_room != room and target_room not in MAY_IMPORT[room]:
                problems.append(f"{module} ({room}) imports {target} ({target_room})")
    for module, packages in sorted(external.items()):
        room = room_of(module)
        for package in sorted(packages):
            if package in EXTERNAL_ONLY_IN and room not in EXTERNAL_ONLY_IN[package]:
                problems.append(f"{module} ({room}) imports {package}")
            allowed = STDLIB_ROOMS.get(room)
            if allowed is not None and package not in allowed and package not in sys.stdlib_module_names:
                problems.append(
                    f"{module} ({room}) imports {package}: the {room} room is stdlib + {allowed or 'nothing'}"
                )
    return problems


# ------------------------------------------------------------------------ the checker, on hand-made graphs --


def test_checker_finds_a_cycle():
    graph = {
        "mtp_ds.config.a": {"mtp_ds.config.b"},
        "mtp_ds.config.b": {"mtp_ds.config.c"},
        "mtp_ds.config.c": {"mtp_ds.config.a"},
    }
    assert find_cycle(graph) == ["mtp_ds.config.a", "mtp_ds.config.b", "mtp_ds.config.c", "mtp_ds.config.a"]
    assert find_cycle({"mtp_ds.config.a": {"mtp_ds.config.b"}, "mtp_ds.config.b": set()}) is None


@pytest.mark.parametrize(
    "importer, imported, broken",
    [
        ("mtp_ds.layout", "mtp_ds.config", True),  # the method reads no recipe
        ("mtp_ds.decoding.decoder", "mtp_ds.demo.run", True),  # nothing outside the demo imports it
        ("mtp_ds.models.student", "mtp_ds.train.loop", True),  # runtime below the loop
        ("mtp_ds.train.loop", "mtp_ds.models.student", False),
        ("mtp_ds.demo.run", "mtp_ds.decoding.decoder", False),
        ("mtp_ds.data.micro_batches", "mtp_ds.layout", False),
        ("mtp_ds.layout", "mtp_ds.fileio", False),  # every room may write files atomically
        ("mtp_ds.checkpoint.store", "mtp_ds.fileio", False),
        ("mtp_ds.fileio", "mtp_ds.config", True),  # the bottom room imports nothing of the package
        ("mtp_ds.fileio", "mtp_ds", True),
    ],
)
def test_checker_applies_the_room_rules(importer, imported, broken):
    problems = check_graph({importer: {imported}, imported: set()}, {importer: set(), imported: set()})
    assert bool(problems) == broken, problems


@pytest.mark.parametrize(
    "module, package, broken",
    [
        ("mtp_ds.objective", "deepspeed", True),
        ("mtp_ds.tokens", "deepspeed", True),
        ("mtp_ds.config.recipe", "torch", True),
        ("mtp_ds.decoding.decoder", "lm_eval", True),
        ("mtp_ds.models.teacher", "deepspeed", False),
        ("mtp_ds.config.recipe", "yaml", False),
        ("mtp_ds.fileio", "torch", True),
        ("mtp_ds.fileio", "yaml", True),
        ("mtp_ds.fileio", "json", False),
    ],
)
def test_checker_applies_the_external_rules(module, package, broken):
    assert bool(check_graph({module: set()}, {module: {package}})) == broken


def test_reader_sees_lazy_relative_and_submodule_imports(tmp_path):
    root = tmp_path / "mtp_ds"
    (root / "config").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "config" / "__init__.py").write_text("from .values import X\n")
    (root / "config" / "values.py").write_text("X = 1\n")
    (root / "layout.py").write_text("def f():\n    import deepspeed\n    from mtp_ds.config import values\n")
    internal, external = read_imports(root)
    assert internal["mtp_ds.config"] == {"mtp_ds.config.values"}
    assert internal["mtp_ds.layout"] == {"mtp_ds.config.values"}
    assert external["mtp_ds.layout"] == {"deepspeed"}


# ------------------------------------------------------------------------------------------ the real tree --


def test_package_follows_the_rooms_and_has_no_cycle():
    internal, external = read_imports(PACKAGE)
    assert len(internal) > 30  # the reader found the package
    assert check_graph(internal, external) == []


def test_every_module_belongs_to_a_room_that_is_a_folder_or_a_method_file():
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path, PACKAGE)
        room = room_of(name)
        top_level_file = path.parent == PACKAGE and path.name != "__init__.py"
        if top_level_file:  # files at the top are the method, the layout viewer, the CLI or fileio
            assert room in ("method", "tools", "entry", "io"), name
        elif path.parent != PACKAGE:
            assert room not in ("root",), name


def test_cli_table_points_at_modules_with_a_main():
    from mtp_ds.cli import SUBCOMMANDS

    assert set(SUBCOMMANDS) == {
        "train",
        "prepare-data",
        "pretrain",
        "export",
        "import",
        "generate",
        "show-layout",
        "demo",
    }
    for verb, (module, _) in SUBCOMMANDS.items():
        relative = Path(*module.split("."))
        path = REPO / relative.with_suffix(".py")
        path = path if path.exists() else REPO / relative / "__init__.py"
        tree = ast.parse(path.read_text())
        assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body), verb


def test_public_paths_of_the_method_are_importable():
    from mtp_ds.batching import KOffsetSampler, collate  # noqa: F401
    from mtp_ds.decoding import generate
    from mtp_ds.layout import pack
    from mtp_ds.objective import mtp_objective  # noqa: F401
    from mtp_ds.tokens import add_mtp_tokens  # noqa: F401

    assert pack.__module__ == "mtp_ds.layout" and generate.__module__ == "mtp_ds.decoding.decoder"


# ---------------------------------------------------------------------------------- paths after the moves --


def test_repo_root_is_the_checkout():
    from mtp_ds.config import REPO_ROOT
    from mtp_ds.config.paths import PACKAGE_DIR

    assert PACKAGE_DIR == PACKAGE and REPO_ROOT == REPO
    assert (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "recipes").is_dir()


def test_relative_recipe_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    from mtp_ds.config import load_recipe, resolve_path

    monkeypatch.chdir(tmp_path)
    assert resolve_path("recipes/tiny_cpu.yaml") == REPO / "recipes" / "tiny_cpu.yaml"
    recipe = load_recipe("recipes/tiny_cpu.yaml")  # names ds_configs/ and tests/fixtures/ relative to the repo
    assert resolve_path(recipe.train.deepspeed_config).is_file() and resolve_path(recipe.data.path).is_file()


def test_demo_and_eval_paths_exist():
    from mtp_ds.demo import run

    assert run.PRETRAIN_RECIPE.is_file() and run.MTP_RECIPE.is_file()
    assert (run.REPO_ROOT / "eval" / "tasks" / run.TASK).is_dir()


def test_lm_eval_pth_is_packaged_from_packaging():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"packaging/mtp_ds_lm_eval.pth" = "mtp_ds_lm_eval.pth"' in pyproject
    assert (REPO / "packaging" / "mtp_ds_lm_eval.pth").read_text().strip() == "import mtp_ds.evaluation.lm_eval_hook"
    assert not (REPO / "mtp_ds_lm_eval.pth").exists()


# ------------------------------------------------------------------------------------- docs match the tree --


def _module_map_paths() -> list[str]:
    """The paths in the first column of ARCHITECTURE.md's module map (the only copy of the map)."""
    architecture = (REPO / "ARCHITECTURE.md").read_text()
    section = architecture.split("## Module map", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [path for cell in cells for path in re.findall(r"`([^`]+)`", cell)]


def test_architecture_module_map_matches_the_tree():
    """Every path the map names exists; every module and folder of the package and every tracked top-level
    folder of the repository has a row (a new module gets its one line in ARCHITECTURE.md's module map)."""
    paths = _module_map_paths()
    assert paths, "ARCHITECTURE.md has no 'Module map' table"
    for path in paths:
        assert (REPO / path).exists(), f"ARCHITECTURE.md's module map names {path}, which does not exist"
    named = {p.rstrip("/") for p in paths}
    package = [
        f"mtp_ds/{child.relative_to(PACKAGE).as_posix()}"
        for child in sorted(PACKAGE.rglob("*"))
        if not any(part.startswith("__") for part in child.relative_to(PACKAGE).parts)
        and (child.is_dir() or child.suffix == ".py")
    ]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    folders = sorted({name.split("/", 1)[0] for name in tracked if "/" in name})
    missing = [path for path in package + folders if path not in named]
    assert missing == [], f"ARCHITECTURE.md's module map misses {missing}"


def test_no_reference_to_the_development_only_shared_folder():
    """Users have no ../shared: docs and comments cite docs/METHOD.md and ARCHITECTURE.md instead."""
    needle = "shared" + "/"  # spelled apart so that this file does not match itself
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = [
        name for name in tracked if (REPO / name).is_file() and needle in (REPO / name).read_text(errors="ignore")
    ]
    assert offenders == []
