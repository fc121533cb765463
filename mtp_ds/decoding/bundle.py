"""What `mtp-ds export` ships in OUT_DIR/custom_generate/: `hf_generate.py` as `generate.py`, plus every module of
this package it imports, flat, their `mtp_ds.*` imports made relative.

Why a copy and not a `mtp-ds` requirement: an export must decode in stock transformers with torch and
transformers alone (no DeepSpeed, lm-eval or this checkout), the way transformers loads a `custom_generate`
folder from a local directory or the Hub (relative imports of sibling files). The closure is read from the
imports themselves (`ast`), so a new import in the decoder is shipped without a list to update. Stdlib only.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

ENTRY = "mtp_ds.decoding.hf_generate"
FOLDER = "custom_generate"
# What the shipped code imports besides the stdlib: pyproject's floors (tests/unit/decoding/test_custom_generate.py
# holds them equal)
REQUIREMENTS = ("torch>=2.6", "transformers>=5.5")
_IMPORT = re.compile(r"^(\s*)from mtp_ds\.(?:[\w.]*\.)?(\w+) import ", re.MULTILINE)


def _source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or spec.submodule_search_locations is not None:
        raise ValueError(f"custom_generate ships modules, not packages: {module!r} is not a module file")
    return Path(spec.origin)


def _imported_modules(path: Path) -> list[str]:
    """mtp_ds modules `path` imports, top-level and lazy; a form the flat copy cannot keep is refused."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "mtp_ds" for alias in node.names):
            raise ValueError(f"{path}: `import mtp_ds...` cannot be made relative; use `from mtp_ds.x import y`")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mtp_ds":
            found.append(node.module)
    return found


def shipped_sources() -> dict[str, str]:
    """File name -> text of every file in custom_generate/ except requirements.txt."""
    version = _package_version()
    files: dict[str, str] = {}
    todo, seen = [ENTRY], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _source(module)
        todo.extend(_imported_modules(path))
        name = "generate.py" if module == ENTRY else f"{module.rsplit('.', 1)[-1]}.py"
        if name in files:
            raise ValueError(f"custom_generate would hold two files named {name} ({module})")
        relative = module.replace(".", "/") + ".py"
        header = f"# Shipped by mtp-ds {version} from {relative}: edit that file, not this copy.\n"
        files[name] = header + _IMPORT.sub(r"\1from .\2 import ", path.read_text())
    files["generate.py"] += _every_file_imported(sorted(files))
    return files


def _every_file_imported(names: list[str]) -> str:
    """Lines making generate.py import every shipped file itself: transformers 5.5 copies a local folder's files
    only one import deep (later versions follow the imports)."""
    modules = [name.removesuffix(".py") for name in names if name != "generate.py"]
    lines = [f"from .{module} import __name__ as _{module}_shipped  # noqa: E402, F401" for module in modules]
    return (
        "\n# transformers 5.5 copies only the files generate.py imports itself: each shipped file, named\n"
        + "\n".join(lines)
        + "\n"
    )


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtp-ds")
    except PackageNotFoundError:
        return "(not installed)"


def write_custom_generate(out_dir: str | Path) -> Path:
    """Write OUT_DIR/custom_generate/ (the decoder and requirements.txt); returns the folder."""
    from mtp_ds.fileio import atomic_write_text

    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in shipped_sources().items():
        atomic_write_text(folder / name, text)
    atomic_write_text(folder / "requirements.txt", "\n".join(REQUIREMENTS) + "\n")
    return folder
