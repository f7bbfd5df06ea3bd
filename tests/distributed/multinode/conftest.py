"""Fixtures for jobs that span several "machines" built from network namespaces (see netns.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from netns import Network, namespaces_available

LINK_CUTS = "test_link_cuts.py"
STOP_LINK_CUTS = pytest.StashKey[Callable[[], None]]()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(config, items):
    """The link-cut checks run last: their cases start before the first test and run meanwhile (test_link_cuts.Comings)."""
    cuts = [item for item in items if item.path.name == LINK_CUTS]
    if cuts and len(cuts) < len(items):
        items[:] = [item for item in items if item.path.name != LINK_CUTS] + cuts


def pytest_collection_finish(session):
    cuts = [item for item in session.items if item.path.name == LINK_CUTS]
    if cuts and len(cuts) < len(session.items) and not session.config.option.collectonly:
        session.config.stash[STOP_LINK_CUTS] = cuts[0].module.start_early(session.config)


def pytest_sessionfinish(session):
    stop = session.config.stash.get(STOP_LINK_CUTS, None)
    if stop is not None:
        stop()


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
