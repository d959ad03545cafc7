"""The package's three levels, read from the source (every import outside ``if TYPE_CHECKING:``):

1. ``cvt.core`` imports no deep-learning framework and nothing of ``cvt`` outside itself.
2. The front-ends ``cvt.torch``, ``cvt.keras``, ``cvt.flax`` import only the core, their own package and their
   own framework: never another front-end, another framework, or the application.
3. The application (everything else: predict, eval, train, data, bench, timm, serve, commands, cli) imports
   front-ends and the core, never the reverse; inside it imports flow one way: cli -> commands -> tasks -> data.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cvt.core

SRC = Path(cvt.core.__file__).resolve().parent.parent  # src/cvt

FRAMEWORKS = {"torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "orbax", "transformers", "timm"}
CORE = "core"
# front-end -> the third-party frameworks it may import (torch's export stack: onnx, onnxruntime, onnxscript)
FRONT_ENDS = {
    "torch": {"torch"},
    "keras": {"keras", "tensorflow"},
    "flax": {"jax", "jaxlib", "flax", "optax", "orbax"},
}
# the application, lower rank = lower layer: a module may import application modules of its own rank or below
APP_RANKS = {
    "data": 1,
    "explain": 2,
    "eval": 2,
    "predict": 3,
    "bench": 3,
    "train": 3,
    "timm": 3,  # timm's registry entries: cvt.torch models under timm's names (an adapter, not a front-end)
    "serve": 3,  # the HTTP server: predict's Predictor behind an ASGI app
    "commands": 4,
    "cli": 5,
    "__main__": 6,
}


def _top(module: Path, root: Path) -> str:
    return module.relative_to(root).with_suffix("").parts[0]


def _imports(path: Path, root: Path) -> list[tuple[str, int]]:
    """``(absolute module name, line)`` of every import outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("cvt", *path.relative_to(root).with_suffix("").parts[:-1]))
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


def layering_problems(root: Path) -> list[str]:
    """Every import in the package tree at ``root`` (``src/cvt``) that breaks the three-level rule."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == root:
            continue  # the package root re-exports lazily
        where = path.relative_to(root)
        own = _top(path, root)
        if own not in (CORE, *FRONT_ENDS, *APP_RANKS):
            problems.append(f"{where}: unknown top-level module {own!r}: place it in a level (tests/test_layout.py)")
            continue
        for name, line in _imports(path, root):
            parts = name.split(".")
            if own == CORE:
                if parts[0] in FRAMEWORKS or (parts[0] == "cvt" and len(parts) > 1 and parts[1] != CORE):
                    problems.append(f"{where}:{line}: the core imports {name}")
            elif own in FRONT_ENDS:
                if parts[0] in FRAMEWORKS and parts[0] not in FRONT_ENDS[own]:
                    problems.append(f"{where}:{line}: front-end {own} imports another framework, {name}")
                elif parts[0] == "cvt" and len(parts) > 1 and parts[1] not in (CORE, own):
                    kind = "another front-end" if parts[1] in FRONT_ENDS else "the application"
                    problems.append(f"{where}:{line}: front-end {own} imports {kind}, {name}")
            elif parts[0] == "cvt" and len(parts) > 1 and APP_RANKS.get(parts[1], 0) > APP_RANKS[own]:
                problems.append(
                    f"{where}:{line}: {own} (rank {APP_RANKS[own]}) imports {name} (rank {APP_RANKS[parts[1]]})"
                )
    return problems


def test_the_package_keeps_its_three_levels():
    problems = layering_problems(SRC)
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "cvt"
    for name, text in {"core/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_rule_catches_a_front_end_importing_another(tmp_path):
    """The checker itself: each kind of violation in a made-up tree is reported, and a clean tree is not."""
    clean = _tree(
        tmp_path / "ok",
        {
            "core/config.py": "import numpy\n",
            "keras/weights.py": "import keras\nfrom ..core import config\n",
            "predict.py": "from .torch import model\nfrom .keras import weights\n",
            "torch/model.py": "import torch\nfrom ..core.config import X\n",
        },
    )
    assert layering_problems(clean) == []
    bad = _tree(
        tmp_path / "bad",
        {
            "keras/weights.py": "from ..torch.weights import load_pickle\n",
            "flax/model.py": "import torch\n",
            "torch/model.py": "from ..predict import Predictor\n",
            "core/weights.py": "import jax\n",
            "data/sets.py": "from ..commands import eval\n",
        },
    )
    found = "\n".join(layering_problems(bad))
    assert "front-end keras imports another front-end, cvt.torch.weights" in found
    assert "front-end flax imports another framework, torch" in found
    assert "front-end torch imports the application, cvt.predict" in found
    assert "the core imports jax" in found
    assert "data (rank 1) imports cvt.commands (rank 4)" in found
