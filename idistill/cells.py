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
    """How many runs are missing (every cell, and seed of the sweep, without a finished or an
    unfinished run) and the fewest `idistill -m` sweeps found that make exactly those;
    'unfinished: ...' for runs that a resume would continue."""
    missing, resume = [], []
    for cell in cells:
        have = {r.data.params.get("seed") for r in cell.runs}
        started = {r.data.params.get("seed") if cell.seeds else None for r in cell.unfinished}
        for seed in cell.seeds or [None]:
            done = bool(cell.runs) if seed is None else seed in have
            if not done and seed not in started:
                missing.append((cell, seed))
        for run in cell.unfinished:  # the ones no finished run of the same seed replaces
            seed = run.data.params.get("seed") if cell.seeds else None
            if (seed in have) if cell.seeds else bool(cell.runs):
                continue
            resume.append(
                f"unfinished: run {run.info.run_id} is {run.info.status}; "
                f"continue it: {cell.command(seed)} trainer.resume=true"
            )
    out, commands = [], []
    if missing:
        commands = sweep_commands(missing)
        total = len(cells) * max(len(cells[0].seeds), 1)
        unit = "runs (cells x seeds)" if cells[0].seeds else "cells"
        which = "this command makes" if len(commands) == 1 else f"these {len(commands)} make"
        out.append(f"missing {len(missing)} of {total} {unit}; {which} them:")
        out += [f"missing: {c}" for c in commands]
    out += resume
    # more than one command: trainer.resume=true makes them one, the experiment's whole grid
    # (not for self-distillation: a chain resumes from its own folder)
    chains = any(_chain(c) for c in cells)
    if len(commands) + len(resume) > 1 and not chains:
        everything = sweep_commands([(c, s) for c in cells for s in c.seeds or [None]])
        if len(everything) == 1:
            out.append(f"or all at once (finished runs are skipped, stopped ones continue): "
                       f"{everything[0]} trainer.resume=true")  # fmt: skip
    return out


def _chain(cell: Cell) -> bool:
    """Whether the cell's runs are self-distillation chains."""
    name = getattr(getattr(cell.settings, "method", None), "name", None)
    return "self_distill" in (name, cell.values.get("method"))


def sweep_commands(points: Sequence[tuple[Cell, str | None]]) -> list[str]:
    """`idistill` commands that make exactly the runs `points` (cell, seed or None): each a
    sweep over a full grid of them, found by merging grids that differ in one key only (one
    command where the points form a grid)."""
    order: dict[tuple[str, str], int] = {}  # (key, value) -> its place in the experiment's grid
    boxes = []  # grid key -> the values swept
    for cell, seed in points:
        values = {**cell.values, **({"seed": seed} if seed is not None else {})}
        for kv in values.items():
            order.setdefault(kv, len(order))
        boxes.append({k: [v] for k, v in values.items()})
    changed = True
    while changed:  # exact: each box is a grid of missing runs, the boxes never overlap
        changed = False
        for key in list(boxes[0]):
            groups: dict[tuple, list[dict[str, list[str]]]] = {}
            for box in boxes:  # boxes equal but in `key` merge into one
                rest = tuple((k, frozenset(vs)) for k, vs in box.items() if k != key)
                groups.setdefault(rest, []).append(box)
            changed |= len(groups) < len(boxes)
            boxes = [
                {
                    **group[0],
                    key: sorted({v for b in group for v in b[key]}, key=lambda v: order[key, v]),
                }
                for group in groups.values()
            ]
    cell = points[0][0]
    base = [o for o in cell.overrides if o.partition("=")[0] not in (*cell.values, "seed")]
    commands = []
    for box in boxes:
        sweep = any(len(vs) > 1 for vs in box.values())
        swept = [f"{k}={','.join(vs)}" for k, vs in box.items()]
        commands.append(" ".join(["idistill", *(["-m"] if sweep else []), *base, *swept]))
    return commands
