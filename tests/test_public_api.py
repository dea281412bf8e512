"""The public surface: every exported name is documented and in the API reference."""

import pathlib

import pcgraph

API_PAGE = pathlib.Path(__file__).parents[1] / "docs" / "api.md"


def test_every_public_name_is_in_the_api_reference():
    documented = {
        line.removeprefix("::: pcgraph.").strip()
        for line in API_PAGE.read_text().splitlines()
        if line.startswith("::: pcgraph.")
    }
    assert documented == set(pcgraph.__all__)


def test_every_public_name_has_a_docstring():
    missing = [
        name for name in pcgraph.__all__ if not (getattr(pcgraph, name).__doc__ or "").strip()
    ]
    assert missing == []
