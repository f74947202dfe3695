"""Layered YAML configs with strict keys.

A stage's defaults live in ``configs/<stage>/default.yaml``. An experiment file names a
``base`` (another file, relative to itself, or a stage preset name) and holds only
overrides. ``key=value`` arguments on the command line override last; values are parsed
as YAML. Every override must name a key that exists in the defaults and carry a value of
the default's type, otherwise a :class:`ConfigError` names the key, where it came from and
the closest valid keys.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
# Keys whose default is a mapping that accepts new sub-keys (e.g. free-form kwargs).
OPEN_KEY_MARKER = "_open"
# A mapping whose default holds ``_shorthand: name`` also takes a plain value, which sets its
# sub-key ``name``: ``backbone=PATH`` means ``backbone.source=PATH`` beside ``backbone.weights``.
SHORTHAND_KEY_MARKER = "_shorthand"
# A defaults file's top-level ``_types`` maps dotted keys whose default is null to the types
# they take (``int``, ``int | list``...), so ``train.max_steps=abc`` is refused like any
# other wrong type. It is read with the defaults and never part of a config.
TYPES_KEY = "_types"
_TYPE_NAMES = ("bool", "int", "float", "str", "list", "mapping")
# YAML 1.1 reads "5e-4" (no dot) as a string; we read it as the float users mean.
_SCI_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message says how to fix it."""


class Config(dict):
    """A nested dict with attribute access (``cfg.train.lr``) that stays a plain dict for YAML."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.keys()), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise AttributeError(f"config has no key '{name}'.{hint}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __deepcopy__(self, memo: dict) -> Config:
        return to_config(copy.deepcopy(to_dict(self), memo))


def to_config(value: Any) -> Any:
    """Wrap nested mappings into :class:`Config` recursively."""
    if isinstance(value, Mapping):
        return Config({k: to_config(v) for k, v in value.items()})
    if isinstance(value, list):
        return [to_config(v) for v in value]
    return value


def to_dict(value: Any) -> Any:
    """Unwrap :class:`Config` into plain dicts (for YAML / JSON)."""
    if isinstance(value, Mapping):
        return {k: to_dict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_dict(v) for v in value]
    return value


def _flat_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, Mapping):
            keys.extend(_flat_keys(v, path + "."))
    return keys


def _suggest(key: str, tree: Mapping) -> str:
    candidates = _flat_keys(tree)
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf][:3]
    return f" Closest valid keys: {', '.join(close)}." if close else ""


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list"}.get(
        type(value), "mapping" if isinstance(value, Mapping) else type(value).__name__
    )


def _declared_type(key: str, spec: str, value: Any, source: str) -> Any:
    """Return ``value`` if it is one of the types ``spec`` names (``"int | list"``)."""
    names = [n.strip() for n in spec.split("|")]
    unknown = [n for n in names if n not in _TYPE_NAMES]
    if unknown:
        raise ConfigError(
            f"{TYPES_KEY} of '{key}' names unknown types {unknown}; use {_TYPE_NAMES}"
        )
    for name in names:
        if name == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if name == "list" and isinstance(value, (list, tuple)):
            return list(value)
        if name != "float" and _type_name(value) == name:
            return value
    raise ConfigError(
        f"config key '{key}' (from {source}) expects {spec} or null, got "
        f"{_type_name(value)} {value!r}. Fix the value, or write {key}=null for the default."
    )


def _check_type(
    key: str, default: Any, value: Any, source: str, declared: str | None = None
) -> Any:
    """Return ``value`` coerced to the default's (or declared) type, or raise a ConfigError."""
    if isinstance(value, str) and _SCI_FLOAT.match(value.strip()):
        value = float(value)
    if value is None:
        return value
    if default is None:
        return value if declared is None else _declared_type(key, declared, value, source)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, Mapping):
        if isinstance(value, Mapping):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"config key '{key}' (from {source}) expects {_type_name(default)}, got "
        f"{_type_name(value)} {value!r}. Fix the value, e.g. {key}={default!r}."
    )


def merge(
    base: Mapping,
    override: Mapping,
    source: str,
    prefix: str = "",
    root: Mapping | None = None,
    types: Mapping[str, str] | None = None,
) -> dict:
    """Return ``base`` updated by ``override`` with strict keys and type checks.

    ``root`` is the whole tree (for suggesting full dotted keys); defaults to ``base``.
    ``types`` declares the types of keys whose default is null (dotted key: type names).
    """
    types = types or {}
    root = base if root is None else root
    out = copy.deepcopy(dict(base))
    open_keys = bool(base.get(OPEN_KEY_MARKER, False))
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in out:
            if open_keys:
                out[key] = value
                continue
            raise ConfigError(f"unknown config key '{path}' in {source}.{_suggest(path, root)}")
        default = out[key]
        shorthand = default.get(SHORTHAND_KEY_MARKER) if isinstance(default, Mapping) else None
        if shorthand and not isinstance(value, Mapping):
            value = {shorthand: value}
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            out[key] = merge(default, value, source, path + ".", root, types)
        else:
            out[key] = _check_type(path, default, value, source, types.get(path))
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(data)}")
    return data


def resolve_config_path(
    name_or_path: str | Path, stage: str | None = None, config_root: Path = CONFIG_ROOT
) -> Path:
    """Accept a path, or a preset name such as ``fashion_tiny`` looked up in configs/<stage>/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if stage is not None:
        for cand in (config_root / stage / path, config_root / stage / f"{path}.yaml"):
            if cand.is_file():
                return cand
    presets = sorted(p.stem for p in (config_root / (stage or "")).glob("*.yaml"))
    raise ConfigError(
        f"config '{name_or_path}' not found (as a path or a preset of stage '{stage}'). "
        f"Available presets: {', '.join(presets) or 'none'}."
    )


def _layers(
    path: Path, stage: str, config_root: Path, seen: tuple[Path, ...] = ()
) -> list[tuple[dict, str]]:
    """The chain of (overrides, source) from the outermost base to ``path``."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files form a cycle through 'base': {path}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return [(data, str(path))]
    base_path = path.parent / base
    if not base_path.is_file():
        base_path = resolve_config_path(base, stage, config_root)
    return _layers(base_path, stage, config_root, seen + (path,)) + [(data, str(path))]


def parse_override(arg: str) -> tuple[str, Any]:
    """Split ``a.b=value`` into the dotted key and the YAML-parsed value."""
    if "=" not in arg:
        raise ConfigError(f"override '{arg}' must look like key=value (e.g. train.lr=0.001)")
    key, raw = arg.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _SCI_FLOAT.match(value.strip()):
        value = float(value)
    return key.strip(), value


def _nest(key: str, value: Any) -> dict:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def declared_types(stage: str, config_root: Path = CONFIG_ROOT) -> dict[str, str]:
    """The ``_types`` of a stage's defaults file: dotted key -> the types its null default takes."""
    return _read_yaml(config_root / stage / "default.yaml").get(TYPES_KEY) or {}


def load_config(
    stage: str,
    config: str | Path | None = None,
    overrides: Iterable[str] = (),
    config_root: Path = CONFIG_ROOT,
) -> Config:
    """Defaults of ``stage``, then the layers of ``config``, then ``key=value`` overrides."""
    defaults_path = config_root / stage / "default.yaml"
    cfg = _read_yaml(defaults_path)
    cfg.pop("base", None)
    types = cfg.pop(TYPES_KEY, None) or {}
    if config is not None:
        path = resolve_config_path(config, stage, config_root)
        for layer, source in _layers(path, stage, config_root):
            if layer.get("stage", stage) != stage:
                raise ConfigError(
                    f"{source} is a config for stage '{layer['stage']}', not '{stage}'. "
                    f"Use `python -m {layer['stage']}` or a configs/{stage}/ file."
                )
            if Path(source).resolve() != defaults_path.resolve():
                cfg = merge(cfg, layer, source, types=types)
    for arg in overrides:
        key, value = parse_override(arg)
        cfg = merge(cfg, _nest(key, value), f"command-line override '{arg}'", types=types)
    return to_config(cfg)


def save_config(cfg: Mapping, path: str | Path) -> None:
    """Write the resolved config as YAML (stable key order, loadable by load_config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def diff_configs(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        path = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.extend(diff_configs(va, vb, path + "."))
        elif va != vb:
            out.append(path)
    return out
