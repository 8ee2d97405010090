"""The layers hold: the import-linter contract in ``pyproject.toml`` passes on the tree, fails on a
deliberate violation, and no module imports another module's private names."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "models", "serve", "cluster", "bench")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's packages and pyproject.toml, to break on purpose."""
    root = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def with_import(root: Path, module: Path, line: str) -> subprocess.CompletedProcess[str]:
    """lint-imports on the tree with ``line`` appended to ``module``, which is restored afterwards."""
    original = module.read_text()
    module.write_text(original + f"\n{line}  # deliberate violation\n")
    try:
        return lint_imports(root)
    finally:
        module.write_text(original)


def test_contract_holds_and_catches_serving_importing_a_stage(tree_copy: Path) -> None:
    assert LINT_IMPORTS.exists(), "make test installs import-linter (requirements/dev.txt)"
    kept = lint_imports(tree_copy)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    broken = with_import(tree_copy, tree_copy / "serve" / "feed.py", "from pipelines.train.stage import run")
    assert broken.returncode != 0
    assert "serve/ imports only models/" in broken.stdout
    assert "serve.feed -> pipelines.train.stage" in broken.stdout


def test_contract_catches_a_library_importing_a_stage(tree_copy: Path) -> None:
    pit = tree_copy / "pipelines" / "features" / "pit.py"
    broken = with_import(tree_copy, pit, "from pipelines.ingest.stage import run")
    assert broken.returncode != 0
    assert "Libraries never import a stage" in broken.stdout


def project_modules() -> list[Path]:
    return sorted(p for package in (*PACKAGES, "tests") for p in (REPO / package).rglob("*.py"))


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for path in project_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in PACKAGES
                and (
                    private := [
                        a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")
                    ]
                )
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module} {private}")
    assert not offenders, "\n".join(offenders)
