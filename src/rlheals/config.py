"""Config checks with messages that name the offending key, before any job runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    pass


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def check(config: Mapping, schema_path: str | Path) -> None:
    """Raise ConfigError for the first problem: the key's dotted path, then what is wrong with it."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        key = _dotted(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            key = _dotted([*err.absolute_path, *extra[:1]])
            raise ConfigError(f"config key {key}: unknown key (allowed here: {sorted(err.schema.get('properties', {}))})")
        raise ConfigError(f"config key {key}: {err.message}")
    rules = config.get("game", {}).get("rules") or {"id": None, "ood": None}
    for split, spec in config["data"]["splits"].items():
        if spec["rule"] not in rules:
            raise ConfigError(f"config key data.splits.{split}.rule: unknown rule {spec['rule']!r} (game.rules has {sorted(rules)})")
