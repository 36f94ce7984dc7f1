"""The command line's overrides checked against the config's groups and keys before Hydra
composes, so that a near miss (`metod.alpha=1`, `task=iwslt`) is refused with a "did you mean"
instead of Hydra's advice to append a new key."""

from __future__ import annotations

import difflib
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf


def override_problems(overrides: list[str]) -> list[str]:
    """One message per override that names no option of its group or no key of the config.
    Overrides Hydra cannot parse, and keys added with `+`, are left to Hydra."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return []
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra") and not o.is_delete()]
    with initialize_config_module("idistill.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = {g: loader.get_group_options(g) for g in loader.list_groups("") if g != "hydra"}
        problems, choices, keys, unsure = [], [], [], set()
        for o in parsed:
            name = o.key_or_group
            if name in groups and o.package is None:
                values = _values(o)
                bad = [v for v in values if v not in groups[name]]
                problems += [_unknown_option(name, v, groups[name]) for v in bad]
                if values and not bad:  # the first job's choice shapes the config
                    choices.append(f"{'+' if o.is_add() else ''}{name}={values[0]}")
                elif bad:  # the keys of the option meant are unknown here
                    unsure.add(name)
            elif not (o.is_add() or o.is_force_add()):
                keys.append(name)
        keys = [k for k in keys if k.split(".")[0] not in unsure]
        if not keys or "experiment" in unsure:  # an experiment may add to any group
            return problems
        try:
            cfg = OmegaConf.to_container(compose("config", overrides=choices), resolve=False)
        except HydraException:
            return problems  # Hydra says what else is wrong
    return problems + [p for p in (_unknown_key(cfg, key) for key in keys) if p]


def nearest(word: str, known) -> str | None:
    """The known name closest to a mistyped one, if any (difflib's ratio >= 0.6)."""
    match = difflib.get_close_matches(word, sorted(known), n=1)
    return match[0] if match else None


def _values(override) -> list[str]:
    """The options an override picks: one, or each of a sweep's (none for glob())."""
    try:
        if override.is_sweep_override():
            return list(override.sweep_string_iterator())
        value = override.value()
        return [override.get_value_element_as_str()] if isinstance(value, str) else []
    except (HydraException, TypeError, ValueError):  # glob(), intervals: Hydra decides
        return []


def _unknown_option(group: str, value: str, options: list[str]) -> str:
    near = nearest(value, options)
    hint = f"did you mean {group}={near}? " if near else ""
    return f"no {group} named {value!r} ({hint}options: {', '.join(options)})"


def _unknown_key(cfg: dict[str, Any], key: str) -> str | None:
    """The problem with `key` in the composed config, or None where it exists (or where the
    path runs through something that is no mapping: Hydra's to explain)."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return None
        if part not in node:
            near = nearest(part, node)
            if near:  # `metod.alpha`: the whole key, corrected
                fixed = ".".join([*parts[:i], near, *parts[i + 1 :]])
                return f"unknown key {key} (did you mean {fixed}?)"
            where = ".".join(parts[:i]) or "the top level"
            return f"unknown key {key} ({where} has: {', '.join(sorted(node))})"
        node = node[part]
    return None
