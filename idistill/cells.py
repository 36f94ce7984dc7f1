"""The cells of a report's grid: one point of an experiment's sweep (seeds pooled) and its
MLflow runs, found by the cell's hash; the notes on cells that are missing or unfinished."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Cell:
    """One point of an experiment's grid (seeds pooled) and its runs."""

    values: dict[str, str]  # grid key -> value, e.g. {"lang": "de", "method": "sage"}
    overrides: list[str]  # what `idistill` is given to make this cell's runs
    settings: Any  # the composed RunSettings
    seeds: list[str]  # the sweep's seeds, or [] (the config's seed)
    runs: list[Any] = field(default_factory=list)  # FINISHED runs: the newest per seed (round)
    unfinished: list[Any] = field(default_factory=list)  # RUNNING / FAILED / KILLED ones

    def command(self, seed: str | None = None) -> str:
        """The `idistill` command that makes this cell's run (of `seed`)."""
        return " ".join(["idistill", *self.overrides, *([f"seed={seed}"] if seed else [])])


def attach_runs(cells: Sequence[Cell], client, logged: Callable[[Cell, Any], bool]) -> None:
    """Each cell's runs, found by the tag `cell` (or the legacy hash that earlier versions
    tagged them with): the newest FINISHED run per seed (and self-distillation round) that
    `logged` what the target needs, and the unfinished ones."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    for cell in cells:
        found = [
            run
            for tag in cell.settings.hashes(cell=True)
            for run in client.search_runs(experiments, filter_string=f"tags.cell = '{tag}'")
        ]
        found.sort(key=lambda run: run.info.start_time, reverse=True)
        newest: dict[tuple, Any] = {}
        for run in found:  # newest first
            if cell.seeds and run.data.params.get("seed") not in cell.seeds:
                continue
            if run.info.status != "FINISHED":
                cell.unfinished.append(run)
            elif logged(cell, run):
                newest.setdefault((run.data.params.get("seed"), run.data.tags.get("round")), run)
        cell.runs = list(newest.values())


def missing_notes(cells: Sequence[Cell]) -> list[str]:
    """'missing: idistill ...' for every cell (and seed of the sweep) without a finished run;
    'unfinished: ...' for runs that a resume would continue."""
    out = []
    for cell in cells:
        have = {r.data.params.get("seed") for r in cell.runs}
        for seed in cell.seeds or [None]:
            if (seed is None and not cell.runs) or (seed is not None and seed not in have):
                out.append(f"missing: {cell.command(seed)}")
        for run in cell.unfinished:  # the ones no finished run of the same seed replaces
            seed = run.data.params.get("seed") if cell.seeds else None
            if (seed in have) if cell.seeds else bool(cell.runs):
                continue
            out.append(
                f"unfinished: run {run.info.run_id} is {run.info.status}; "
                f"continue it: {cell.command(seed)} trainer.resume=true"
            )
    return out
