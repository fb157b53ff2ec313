"""The layering rule of DESIGN.md: contracts (pgr/ outside pgr/app/) import no stage; nothing below the
application imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pgr.paths import REPO

STAGES = ("ingest", "reid", "matcher", "training")
CONTRACTS = sorted(p for p in (REPO / "pgr").rglob("*.py") if (REPO / "pgr" / "app") not in p.parents)
BELOW_APP = CONTRACTS + sorted(p for stage in STAGES for p in (REPO / stage).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement in the file names, at any depth (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from reid.retrieval import RetrievalParams\n    import matcher\n")
    assert {"reid.retrieval", "matcher"} <= imported_modules(source)


@pytest.mark.parametrize("path", CONTRACTS, ids=lambda p: str(p.relative_to(REPO)))
def test_contracts_import_no_stage(path: Path) -> None:
    bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in STAGES)
    assert not bad, f"{path.relative_to(REPO)} imports {bad}: contracts must not depend on a stage"


@pytest.mark.parametrize("path", BELOW_APP, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_below_the_application_imports_it(path: Path) -> None:
    bad = sorted(m for m in imported_modules(path) if m == "pgr.app" or m.startswith("pgr.app."))
    assert not bad, f"{path.relative_to(REPO)} imports {bad}: only the application may import pgr.app"


def test_importing_every_contract_loads_no_stage() -> None:
    """At run time too (importlib, package data look-ups): no stage package ends up in sys.modules."""
    parts = [p.relative_to(REPO).with_suffix("").parts for p in CONTRACTS]
    modules = [".".join(q[:-1] if q[-1] == "__init__" else q) for q in parts]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(s for s in {STAGES!r} if s in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_class_is_imported_from_the_module_that_defines_it() -> None:
    """One import path per type: no class reaches a module through another one that imports it."""
    files = sorted(p for top in ("pgr", *STAGES, "tests") for p in (REPO / top).rglob("*.py"))
    defined: dict[str, set[str]] = {}
    for path in files:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, set()).add(module)
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    homes = defined.get(alias.name, set())
                    if homes and node.module.split(".")[0] in ("pgr", *STAGES) and node.module not in homes:
                        bad.append(f"{path.relative_to(REPO)}: {alias.name} from {node.module}, not {homes}")
    assert not bad, "\n".join(bad)
