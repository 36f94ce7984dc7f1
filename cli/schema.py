"""Structured schema of the top-level config keys, so that a typo such as `alpah=5` is refused."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class Schema:
    """Top-level keys; each group's own keys are checked by its YAML (struct mode)."""

    task: Any = field(default_factory=dict)
    model: Any = field(default_factory=dict)
    method: Any = field(default_factory=dict)
    divergence: Any = field(default_factory=dict)
    schedule: Any = field(default_factory=dict)
    trainer: Any = field(default_factory=dict)
    tracking: Any = field(default_factory=dict)
    analysis: Any = field(default_factory=dict)
    lang: Any = None
    glue_task: Any = None
    seed: int = 1
    data_dir: str = "~/.cache/idistill"


def register() -> None:
    """Make `schema` available to the defaults list of config.yaml."""
    ConfigStore.instance().store(name="schema", node=Schema)
