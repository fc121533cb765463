"""Typed values for nested config dataclasses: type checking, building from plain dicts, `key=value` overrides.

Why separate from `schema.py`: this is generic machinery (a root dataclass whose fields are section
dataclasses of scalars, lists and mappings); `schema.py` keeps only the recipe's sections, `recipe.py` its rules. Every
error is a one-line ConfigError naming the dotted key. Stdlib + yaml only.
"""

from __future__ import annotations

import types
import typing


class ConfigError(ValueError):
    """A bad recipe, override or DeepSpeed config; the message is one line that names the field."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


def section_classes(root) -> dict[str, type]:
    """{section name: section dataclass} of a root config dataclass."""
    return typing.get_type_hints(root)


def field_types(root, section: str) -> dict[str, typing.Any]:
    return typing.get_type_hints(section_classes(root)[section])


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value, tp, key: str):
    """`value` checked (and losslessly converted) against the annotation `tp`; ConfigError naming `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)] if args else list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:  # 1e5 written for 100000
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build_section(root, section: str, values, origin: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"recipe section '{section}' must be a mapping, got {values!r} ({origin})")
    known = field_types(root, section)
    unknown = [key for key in values if key not in known]
    if unknown:
        raise ConfigError(f"unknown recipe key '{section}.{unknown[0]}'; valid keys in '{section}': {', '.join(known)}")
    cls = section_classes(root)[section]
    return cls(**{key: coerce(value, known[key], f"{section}.{key}") for key, value in values.items()})


def build_config(root, values: dict, origin: str = "<dict>"):
    """An instance of `root` from nested plain values (unknown keys and wrong types are errors)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a recipe must be a mapping of sections, got {type(values).__name__} ({origin})")
    sections = section_classes(root)
    unknown = [key for key in values if key not in sections]
    if unknown:
        raise ConfigError(f"unknown recipe key '{unknown[0]}'; valid top-level keys: {', '.join(sections)}")
    return root(**{name: _build_section(root, name, values.get(name), origin) for name in sections})


def yaml_load(text: str):
    """yaml.safe_load, except that `1e-5` is a float (YAML 1.1 needs `1.0e-5`; every user writes `1e-5`)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return yaml.load(text, Loader=Loader)


def parse_value(text: str):
    import yaml

    try:
        return yaml_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def apply_overrides(root, values: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to nested plain values (in place; also returned).

    Values are YAML (`true`, `3`, `[2, 4]`, `null`, `"\\n\\n"`); a string field keeps the raw text when it
    does not read as a string (`model.name_or_path=123`). Keys below a mapping field address into it
    (`train.deepspeed_overrides.scheduler.params.warmup_num_steps=5`).
    """
    sections = section_classes(root)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=10)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        section = parts[0]
        if section not in sections:
            raise ConfigError(f"unknown recipe key '{key}'; valid top-level keys: {', '.join(sections)}")
        if len(parts) < 2:
            raise ConfigError(
                f"override {item!r} must name a key inside section '{section}' (e.g. {section}.<key>=...)"
            )
        known = field_types(root, section)
        name = parts[1]
        if name not in known:
            raise ConfigError(f"unknown recipe key '{section}.{name}'; valid keys in '{section}': {', '.join(known)}")
        value = parse_value(raw)
        allowed = (known[name], *typing.get_args(known[name]))
        if str in allowed and value is not None and not isinstance(value, (str, list, dict)):
            value = raw
        section_values = values.get(section) or {}
        values[section] = section_values
        if len(parts) == 2:
            section_values[name] = value
            continue
        if dict not in allowed:
            raise ConfigError(f"override {key!r}: '{section}.{name}' is not a mapping, so it has no sub-keys")
        target = section_values.get(name)
        if target is None:
            target = section_values[name] = {}
        for part in parts[2:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key!r}: '{part}' is not a mapping")
        target[parts[-1]] = value
    return values
