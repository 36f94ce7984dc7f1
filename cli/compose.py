"""Configs composed as `idistill` composes them, and an experiment's sweep expanded into its
cells as `idistill -m` runs them: Hydra's compose, its override grammar, hydra.sweeper.params.
What leaves this module is plain data (dicts, override strings, RunSettings) for the library."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from idistill.cells import Cell
from idistill.config import settings_from_dict


def compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    """The config `idistill` composes from these overrides (with the hydra node: for sweeps)."""
    with initialize_config_module("idistill.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=hydra)


def resolved(overrides: list[str]) -> dict[str, Any]:
    """The composed config as plain data, interpolations resolved."""
    return OmegaConf.to_container(compose(overrides), resolve=True)


def parse_sweeps(overrides: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(plain overrides, sweeps {key: values}), read with Hydra's override grammar, so
    `seed=range(1,4)` or `method=baseline, sage` are the sweeps `idistill -m` runs."""
    plain, sweeps = [], {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_sweep_override():
            sweeps[o.key_or_group] = [str(v) for v in o.sweep_string_iterator()]
        else:
            plain.append(o.input_line)
    return plain, sweeps


def sweep_grid(
    params: dict[str, list[str]], given: dict[str, list[str]]
) -> tuple[list[dict], list[str]]:
    """The cells of a sweep without the seed, and its seeds. `params`: the experiment's
    hydra.sweeper.params; `given`: the command line's keys, which replace or add sweeps as they
    do for `idistill -m`."""
    values = {**params, **given}
    seeds = values.pop("seed", [])
    keys = sorted(values)
    combos = itertools.product(*(values[k] for k in keys))
    return [dict(zip(keys, c, strict=True)) for c in combos], seeds


def grid_cells(experiment: str, overrides: list[str]) -> list[Cell]:
    """The cells of `experiment`'s sweep with the command line's `overrides`, each composed as
    `idistill -m experiment=<experiment> ...` composes its job; their settings give the hash."""
    plain, sweeps = parse_sweeps(overrides)
    base = [f"experiment={experiment}", *plain]
    params = compose(base, hydra=True).hydra.sweeper.params  # None in a file without sweeps
    params = OmegaConf.to_container(params) if params else {}
    single, params = parse_sweeps([f"{k}={v}" for k, v in params.items()])
    params.update((key, [value]) for key, value in _plain_values(single))  # `method.k: "2"`
    grid_keys = set(params) | set(sweeps) | {"seed"}  # a plain override narrows a sweep
    given = dict(sweeps)
    for key, value in _plain_values(plain):
        if key in grid_keys:
            given[key] = [value]
    base = [o for o in base if o.partition("=")[0].lstrip("+~") not in given]
    grid, seeds = sweep_grid(params, given)
    cells = []
    for values in grid:
        cell = base + [f"{k}={v}" for k, v in values.items()]
        cells.append(Cell(values, cell, settings_from_dict(resolved(cell)), seeds))
    return cells


def _plain_values(plain: Sequence[str]) -> list[tuple[str, str]]:
    parsed = OverridesParser.create().parse_overrides(list(plain))
    return [(o.key_or_group, o.get_value_element_as_str()) for o in parsed]
