"""Docstrings point at what exists: every Sphinx-style reference (``:mod:``, ``:class:``, ``:func:``,
``:meth:``, ``:data:``, ``:attr:``) in the project's modules resolves, so a move or a rename cannot leave
a dangling name behind."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "models", "serve", "cluster", "bench")
ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc):`~?([A-Za-z_][\w.]*)`")


def modules() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def resolve(name: str, home: Any) -> bool:
    """``name`` relative to the module ``home`` (its globals, or a class in it), else absolute."""
    first, *rest = name.split(".")
    if hasattr(home, first):
        obj = getattr(home, first)
        for part in rest:
            if not hasattr(obj, part) and not _annotated(obj, part):
                return False
            obj = getattr(obj, part, None)
        return True
    if not rest and any(hasattr(c, first) for c in vars(home).values() if isinstance(c, type)):
        return True  # a method or attribute named inside its class's docstring
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            if not hasattr(obj, part) and not _annotated(obj, part):
                return False
            obj = getattr(obj, part, None)
        return True
    return False


def _annotated(obj: Any, attr: str) -> bool:
    """Dataclass fields and annotated attributes count though they have no class attribute."""
    return isinstance(obj, type) and any(attr in getattr(c, "__annotations__", {}) for c in obj.__mro__)


@pytest.mark.parametrize("module", modules())
def test_docstring_references_resolve(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__file__
    text = Path(mod.__file__).read_text()
    dangling = sorted({m for m in ROLE.findall(text) if not resolve(m, mod)})
    assert not dangling, f"{module}: references to names that do not exist: {dangling}"
