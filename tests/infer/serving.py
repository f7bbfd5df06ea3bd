"""A `shoal serve` process for the tests: started on a free port, waited for, and stopped (only the one started)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from shoal.distributed.env import free_port


class Server:
    def __init__(self, run: Path, *args: str, env: dict | None = None, token: str | None = None, log: Path | None = None):
        self.port = free_port()
        self.token = token
        self.log = open(log or os.devnull, "w")
        cmd = [sys.executable, "-m", "shoal", "serve", str(run), "--port", str(self.port), *args]
        if token:
            cmd += ["--token", token]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 180.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"shoal serve exited with {self.proc.returncode}")
            try:
                if self.request("GET", "/readyz", token=False)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("shoal serve did not become ready")

    def request(self, method: str, path: str, body=None, *, raw: bytes | None = None, token: bool | str = True,
                content_type: str = "application/json", timeout: float = 60.0) -> tuple[int, dict, object]:
        """(status, headers, parsed JSON body or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": content_type} if data is not None else {}
        given = self.token if token is True else (token or None)
        if given:
            headers["Authorization"] = f"Bearer {given}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, hdrs, text = r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as err:
            status, hdrs, text = err.code, dict(err.headers), err.read().decode()
        try:
            return status, hdrs, json.loads(text)
        except json.JSONDecodeError:
            return status, hdrs, text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
