"""The library (idistill/) imports neither Hydra nor omegaconf: only cli/ composes configs."""

from __future__ import annotations

import ast
from pathlib import Path

import idistill

LIBRARY = Path(idistill.__file__).parent
CLI_ONLY = ("hydra", "omegaconf")


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import, at module level or inside a function."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_library_module_imports_hydra_or_omegaconf():
    offending = [
        f"{path.relative_to(LIBRARY.parent)}:{line} imports {module}"
        for path in sorted(LIBRARY.rglob("*.py"))
        for line, module in _imported(ast.parse(path.read_text(encoding="utf-8")))
        if module.split(".")[0] in CLI_ONLY
    ]
    assert not offending, "move Hydra/omegaconf code to cli/: " + "; ".join(offending)
