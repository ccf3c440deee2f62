"""Code shape: no function in mn_node or mn_tui is longer than 80 lines (def to last line).

A long function decides too many things at once; split it by what each part decides."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mn_node", "mn_tui")
MAX_LINES = 80


def long_functions(max_lines: int = MAX_LINES) -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > max_lines:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    return found


def test_no_function_over_80_lines() -> None:
    found = long_functions()
    assert not found, f"functions over {MAX_LINES} lines (split them by what each part decides):\n" + "\n".join(found)


def test_the_check_sees_long_functions() -> None:
    assert long_functions(max_lines=5), "the walk found no function over 5 lines: it is not looking"
