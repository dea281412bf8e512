"""The public surface: every exported name is documented and in the API reference."""

import importlib
import pathlib

import pcgraph

API_PAGE = pathlib.Path(__file__).parents[1] / "docs" / "api.md"
SUBPACKAGES = ("nn", "theory", "datasets")


def _public_names() -> dict:
    names = {name: getattr(pcgraph, name) for name in pcgraph.__all__}
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"pcgraph.{sub}")
        names |= {f"{sub}.{name}": getattr(module, name) for name in module.__all__}
    return names


def test_every_public_name_is_in_the_api_reference():
    documented = {
        line.removeprefix("::: pcgraph.").strip()
        for line in API_PAGE.read_text().splitlines()
        if line.startswith("::: pcgraph.")
    }
    assert documented == set(_public_names())


def test_every_public_name_has_a_docstring():
    missing = [name for name, obj in _public_names().items() if not (obj.__doc__ or "").strip()]
    assert missing == []
