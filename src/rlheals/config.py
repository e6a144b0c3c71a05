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
    _check_cross_keys(config)


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
