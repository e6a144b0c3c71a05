"""Config checks with messages that name the offending key, before any job runs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    pass


def merged(base: Mapping, over: Mapping) -> dict:
    """Snakemake's merge of config files: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def read(*paths: str | Path) -> dict:
    """Config files merged in order, as `snakemake --configfile` merges them (schema defaults not filled)."""
    config: dict = {}
    for path in paths:
        config = merged(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


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
    _check_cross_keys(config)


def type_command_line(config: dict, given: Mapping, schema_path: str | Path) -> None:
    """Give the values set with `--config` the types the schema asks for, in `config`. Snakemake reads a
    nested value (`--config 'eval={"episodes": 4}'`) as strings; a string that reads as what its key
    takes (an integer, a number, true/false, null) becomes one. Anything else stays as given, for `check`
    to name."""
    schema = yaml.safe_load(Path(schema_path).read_text())

    def walk(value, node, where: dict, key):
        if isinstance(value, Mapping) and isinstance(where.get(key), dict):
            for name, item in value.items():
                walk(item, _property(schema, node, name), where[key], name)
        elif isinstance(value, (str, list)):
            where[key] = _typed(schema, node, value)

    for name, value in given.items():
        walk(value, _property(schema, schema, name), config, name)


def _resolve(schema: Mapping, node: Mapping | None) -> Mapping:
    while node and "$ref" in node:  # local references only: "#/definitions/name"
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return node or {}


def _alternatives(schema: Mapping, node: Mapping | None) -> list[Mapping]:
    node = _resolve(schema, node)
    subs = node.get("oneOf") or node.get("anyOf")
    return [alt for sub in subs for alt in _alternatives(schema, sub)] if subs else [node]


def _property(schema: Mapping, node: Mapping | None, name: str) -> Mapping | None:
    for alt in _alternatives(schema, node):
        if name in alt.get("properties", {}):
            return alt["properties"][name]
    return None


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _typed(schema: Mapping, node: Mapping | None, value):
    alts = _alternatives(schema, node)
    if isinstance(value, list):
        items = [alt["items"] for alt in alts if "items" in alt]
        return [_typed(schema, items[0], v) for v in value] if items else value
    types = set()
    for alt in alts:
        kinds = alt.get("type", [])
        types.update([kinds] if isinstance(kinds, str) else kinds)
        if value == alt.get("const") or value in alt.get("enum", []):
            return value  # a string the key takes as it is
    if "null" in types and value in ("null", "~"):
        return None  # YAML's null, even where a string is also allowed
    if "string" in types:
        return value
    if "integer" in types and re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    if "number" in types and _NUMBER.fullmatch(value):
        return float(value)
    if "boolean" in types and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _check_cross_keys(config: Mapping) -> None:
    """What the schema cannot express: keys that must agree with each other."""
    rules = config.get("game", {}).get("rules") or {"id": None, "ood": None}
    for split, spec in config["data"]["splits"].items():
        if spec["rule"] not in rules:
            raise ConfigError(f"config key data.splits.{split}.rule: unknown rule {spec['rule']!r} (game.rules has {sorted(rules)})")
    sft = config.get("sft", {})
    steps, max_steps = sft.get("save_steps", []), sft.get("max_steps")
    if max_steps is not None and any(s > max_steps for s in steps):
        raise ConfigError(f"config key sft.save_steps: steps {sorted(s for s in steps if s > max_steps)} exceed sft.max_steps={max_steps}")
    if sft.get("batch_size", 1) % sft.get("grad_accum", 1):
        raise ConfigError("config key sft.grad_accum: must divide sft.batch_size")
    rl = config.get("rl", {})
    from_steps = rl.get("from_steps", "all")
    numbered = set() if from_steps == "all" else {s for s in from_steps if isinstance(s, int)}
    if steps and numbered - set(steps):
        raise ConfigError(f"config key rl.from_steps: steps {sorted(numbered - set(steps))} are not in sft.save_steps {sorted(steps)}")
    if any(u >= rl.get("updates", 1 << 30) for u in rl.get("save_updates", [])):
        raise ConfigError(f"config key rl.save_updates: updates must be below rl.updates={rl.get('updates')} (the last is always saved)")
    model = config.get("model", {})
    if model.get("source") == "local" and not model.get("local_path"):
        raise ConfigError("config key model.local_path: needed when model.source is 'local'")
    tiny = model.get("tiny", {})
    if tiny.get("num_heads", 1) % tiny.get("num_kv_heads", 1) or tiny.get("hidden_size", 8) % tiny.get("num_heads", 1):
        raise ConfigError("config key model.tiny.num_kv_heads: num_kv_heads must divide num_heads, and num_heads hidden_size")
