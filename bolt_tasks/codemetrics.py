"""What the analysis kind measures in a Python file: functions, classes, complexity, imports."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

# Each of these adds one path through a function.
_BRANCHES = frozenset(
    {ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.match_case}
)
_FUNCTIONS = frozenset({ast.FunctionDef, ast.AsyncFunctionDef})
_SCOPES = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda})
# Statement fields that hold nested statements (try's handlers and match's cases aside).
_BLOCK_FIELDS = ("body", "orelse", "finalbody")


@dataclass
class FunctionMetrics:
    """One function or method: its qualified name, first line and cyclomatic complexity."""

    name: str
    line: int
    complexity: int


@dataclass
class FileMetrics:
    """What the analysis of one file found."""

    path: str
    lines: int
    code_lines: int
    classes: int
    imports: list[str]
    functions: list[FunctionMetrics] = field(default_factory=list)


def _children(node: ast.AST) -> list[ast.AST]:
    found = []
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, ast.AST):
            found.append(value)
        elif isinstance(value, list):
            found.extend(item for item in value if isinstance(item, ast.AST))
    return found


def complexity(node: ast.AST) -> int:
    """McCabe complexity of a function: 1 + its branches, not counting nested functions.

    Branches: if/elif, conditional expressions, for, while, except clauses, match cases, each
    extra operand of and/or, and each for and if of a comprehension.
    """
    total = 1
    pending = _children(node)
    while pending:
        child = pending.pop()
        kind = type(child)
        if kind in _SCOPES:
            continue  # a nested function or class is measured on its own
        if kind in _BRANCHES:
            total += 1
        elif kind is ast.BoolOp:
            total += len(child.values) - 1
        elif kind is ast.comprehension:
            total += 1 + len(child.ifs)
        pending.extend(_children(child))
    return total


def _walk_scopes(statements: list[ast.stmt], prefix: str, out: FileMetrics) -> None:
    """Find functions, classes and imports; they are statements, so expressions are skipped."""
    for stmt in statements:
        kind = type(stmt)
        if kind in _FUNCTIONS:
            name = prefix + stmt.name
            out.functions.append(FunctionMetrics(name, stmt.lineno, complexity(stmt)))
            _walk_scopes(stmt.body, name + ".", out)
        elif kind is ast.ClassDef:
            out.classes += 1
            _walk_scopes(stmt.body, prefix + stmt.name + ".", out)
        elif kind is ast.Import:
            out.imports.extend(alias.name for alias in stmt.names)
        elif kind is ast.ImportFrom:
            out.imports.append("." * stmt.level + (stmt.module or ""))
        else:
            for block in _nested_blocks(stmt):
                _walk_scopes(block, prefix, out)


def _nested_blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    blocks = [getattr(stmt, name) for name in _BLOCK_FIELDS if getattr(stmt, name, None)]
    for holder in getattr(stmt, "handlers", ()) or getattr(stmt, "cases", ()):
        blocks.append(holder.body)
    # In source order (a try's handlers come before its else and finally).
    return sorted(blocks, key=lambda block: block[0].lineno)


def count_lines(text: str) -> tuple[int, int]:
    """(all lines, code lines): code lines are those neither blank nor only a comment."""
    lines = text.splitlines()
    code = 0
    for line in lines:
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#"):
            code += 1
    return len(lines), code


def analyze_source(text: str, path: str = "<string>") -> FileMetrics:
    """Parse Python source and measure it; SyntaxError (or ValueError) when it does not parse."""
    tree = ast.parse(text, filename=path)
    lines, code_lines = count_lines(text)
    metrics = FileMetrics(path=path, lines=lines, code_lines=code_lines, classes=0, imports=[])
    _walk_scopes(tree.body, "", metrics)
    return metrics
