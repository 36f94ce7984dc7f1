"""idistill's Hydra configs (installed as package data); importing registers the schema."""

from idistill.cli.schema import register

register()
