"""Settings for every test, and the one reordering of the suite: the link-cut cases of
tests/distributed/multinode/test_link_cuts.py spend ~3 minutes mostly asleep, so they start in the background with the
first test outside their directory and their checks run last."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

# Tests share 2 cores; one intra-op thread per process keeps multi-process tests from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")


LINK_CUTS = "test_link_cuts.py"
PENDING_LINK_CUTS = pytest.StashKey[pytest.Item]()  # the first link-cut check, until its cases are started
STOP_LINK_CUTS = pytest.StashKey[Callable[[], None]]()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(config, items):
    """The link-cut checks run last; their cases start with the first test outside their directory and run meanwhile
    (test_link_cuts.Comings). Not with the first test of all: the other multinode tests time their own nodes, and the
    cases' 17 processes starting at once slowed them several-fold."""
    cuts = [item for item in items if item.path.name == LINK_CUTS]
    if cuts and len(cuts) < len(items) and not config.option.collectonly:
        items[:] = [item for item in items if item.path.name != LINK_CUTS] + cuts
        config.stash[PENDING_LINK_CUTS] = cuts[0]


def pytest_runtest_setup(item):
    cut = item.config.stash.get(PENDING_LINK_CUTS, None)
    if cut is not None and (item is cut or item.path.parent != cut.path.parent):
        del item.config.stash[PENDING_LINK_CUTS]
        item.config.stash[STOP_LINK_CUTS] = cut.module.start_early(item.config)


def pytest_sessionfinish(session):
    stop = session.config.stash.get(STOP_LINK_CUTS, None)
    if stop is not None:
        stop()
