"""Fixtures for jobs that span several "machines" built from network namespaces (see netns.py)."""

from __future__ import annotations

import pytest
from netns import Network, namespaces_available


@pytest.fixture
def network():
    """network(n) -> a Network of n nodes, torn down (processes killed, namespaces deleted) after the test."""
    why_not = namespaces_available()
    if why_not:
        pytest.skip(why_not)
    made: list[Network] = []

    def build(nodes: int) -> Network:
        made.append(Network(nodes))
        return made[-1]

    yield build
    for net in made:
        net.close()
