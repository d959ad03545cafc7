"""Imports flow one way: cli -> commands -> tasks -> factory -> model -> layers -> core (read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import cvt.core

SRC = Path(cvt.core.__file__).resolve().parent.parent  # src/cvt

# Lower rank = lower layer. A module may import modules of its own rank or below, never above.
RANKS = {
    "core": 0,
    "runtime": 1,
    "layers": 1,
    "model": 2,
    "fusion": 2,  # the explicit inference rewrite; CvT.fuse() delegates to it
    "weights": 3,
    "data": 3,
    "factory": 4,
    "keras": 4,  # the Keras 3 front-end: core only (torch only inside tests, for parity)
    "flax": 4,  # the Flax NNX front-end: core only
    "explain": 5,
    "eval": 5,
    "predict": 6,
    "export": 6,
    "bench": 6,
    "train": 6,
    "commands": 8,
    "cli": 9,
    "__main__": 10,
}
FRAMEWORKS = {"torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "transformers"}


def _top(module: Path) -> str:
    parts = module.relative_to(SRC).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(absolute module name, line)`` of every import outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("cvt", *path.relative_to(SRC).with_suffix("").parts[:-1]))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, node.lineno))
    return out


def test_imports_flow_one_way():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == SRC:
            continue  # the package root re-exports lazily
        own = _top(path)
        rank = RANKS.get(own)
        assert rank is not None, f"{path.relative_to(SRC)}: add the module to RANKS (its layer)"
        for name, line in _imports(path):
            parts = name.split(".")
            if parts[0] in FRAMEWORKS and own == "core":
                problems.append(f"{path.relative_to(SRC)}:{line}: the core imports {name}")
            if parts[0] != "cvt" or len(parts) < 2:
                continue
            target = RANKS.get(parts[1])
            if target is not None and target > rank:
                problems.append(f"{path.relative_to(SRC)}:{line}: {own} (rank {rank}) imports {name} (rank {target})")
    assert not problems, "\n".join(problems)
