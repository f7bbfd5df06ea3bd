"""Imported by the fork server alone, first of its preloads (forkserver.warm): it ends without the interpreter's
teardown.

The server holds the launcher's stdout and stderr (its workers print through them), so a pipe the launcher writes to
stays open until the server is gone: `shoal train ... | tee log` and any caller that reads the output to its end waited
for the server to free torch's objects one by one, 0.8 s after the job was done. When the launcher goes, the server
leaves its loop with SystemExit; the atexit handlers run (this one, registered first, runs last) and then it exits.
Its workers are forks that end with os._exit and never run it. Nothing else imports this module.
"""

from __future__ import annotations

import atexit
import os

atexit.register(os._exit, 0)
