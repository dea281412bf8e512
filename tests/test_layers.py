"""The package's import structure: the layers contract in pyproject.toml holds, and no module
imports itself back through others, type-checking imports included."""

import pathlib
import shutil
import subprocess
import sys

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    executable = shutil.which("lint-imports") or str(
        pathlib.Path(sys.executable).parent / "lint-imports"
    )
    return executable


def test_layers_contract_is_kept():
    result = subprocess.run(
        [_lint_imports(), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def _import_graph():
    # grimp reads every import statement, those under `if TYPE_CHECKING:` included.
    return grimp.build_graph("pcgraph", include_external_packages=False)


def test_no_import_cycle():
    graph = _import_graph()
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            # A package importing its own submodules (an `__init__` re-export) is not a cycle.
            if imported.startswith(module + "."):
                continue
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain is not None:
                cycles.append((module, *chain))
    assert not cycles, f"import cycles: {cycles}"


def test_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above would fail on a package with a type-checking cycle."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic", include_external_packages=False)
    assert graph.find_shortest_chain(importer="cyclic.b", imported="cyclic.a") is not None
    assert graph.find_shortest_chain(importer="cyclic.a", imported="cyclic.b") is not None


@pytest.mark.parametrize(
    "module, algorithm",
    [("_il", "IL"), ("_fpa", "FPA"), ("_epc", "EPC"), ("_ipc", "IPC"), ("_zil", "ZIL")],
)
def test_one_algorithm_per_file(module, algorithm):
    import importlib

    import pcgraph

    defined = importlib.import_module(f"pcgraph._algorithms.{module}")
    assert getattr(pcgraph, algorithm).__module__ == defined.__name__
