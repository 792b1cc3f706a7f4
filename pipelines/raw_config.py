"""Raw (not yet validated) configs: YAML files under `conf/`, group files and dotted overrides.

Nothing here knows a section's schema, so both `pipelines.config` (which validates) and
`pipelines.sweep` (which builds trial configs from raw ones) can use it without importing
each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_CONFIG = CONF_DIR / "quickstart.yaml"


def read_config_file(path: str | Path | None = None) -> dict[str, Any]:
    """The sections of a YAML config (default: conf/quickstart.yaml), group names resolved."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return {name: resolve_group(name, value) for name, value in raw.items()}


def resolve_group(section: str, value: Any) -> Any:
    """A string section value names `conf/<section>/<value>.yaml`."""
    if not isinstance(value, str):
        return value
    group = CONF_DIR / section
    choices = sorted(p.stem for p in group.glob("*.yaml")) if group.is_dir() else []
    file = group / f"{value}.yaml"
    if not file.is_file():
        raise ConfigError(f"{section}={value!r}: no file {file}; valid choices: {choices}")
    return yaml.safe_load(file.read_text()) or {}


def group_choices(section: str) -> list[str]:
    """The file names (without .yaml) of `conf/<section>/`."""
    return sorted(p.stem for p in (CONF_DIR / section).glob("*.yaml"))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=yaml value` command-line override."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key=value (e.g. shard.samples_per_shard=500)")
    dotted, text = override.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({problem}); quote the whole "
                          "override for the shell, e.g. 'runs=[{name: ce, loss: cross_entropy}]'") from None
    apply_value(raw, keys, value, f"override {override!r}")


def apply_value(raw: dict[str, Any], keys: list[str] | str, value: Any, what: str | None = None) -> None:
    """Set a dotted key of a raw (unvalidated) config as an override would (`loss` → conf/loss/…)."""
    keys = keys.split(".") if isinstance(keys, str) else keys
    what = what or f"key {'.'.join(keys)!r}"
    if len(keys) == 1:
        raw[keys[0]] = resolve_group(keys[0], value)
        return
    if keys == ["data", "source"] and raw.get("data", {}).get("source") != value:
        raw["data"] = {}  # another source: the old source's keys do not apply
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(keys[:depth + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value
