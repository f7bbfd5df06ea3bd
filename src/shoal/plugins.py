"""`plugins = ["my_pkg.my_sync", ...]` in a job file: modules imported in every process before the job is
built, so a sync strategy, compressor or monitor of the user's registers itself by name (one file, one
registry line) and the job file picks it like a built-in one."""

from __future__ import annotations

import importlib

from shoal.errors import ShoalError


def import_plugins(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ShoalError(f"plugins: cannot import '{name}': {err}; put it on PYTHONPATH or fix the name") from None
        except Exception as err:  # noqa: BLE001 - the user's module failed while importing: name it, one line
            last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            raise ShoalError(f"plugins: importing '{name}' raised {type(err).__name__}: {last}") from None
