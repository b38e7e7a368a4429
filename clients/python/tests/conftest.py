"""Starts a real `agentplane serve` on 127.0.0.1:0 over a fresh SQLite database for the
session, reading the bound address and the admin key from what it prints."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agentplane_client  # noqa: E402  (the generated package, one directory up)

ROOT = Path(__file__).resolve().parents[3]


def _binary() -> str:
    if os.environ.get("AGENTPLANE_BIN"):
        return os.environ["AGENTPLANE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "debug" / "agentplane")


class Server:
    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="agentplane-py-")
        self.proc = subprocess.Popen(
            [
                _binary(),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                # AGENTPLANE_E2E_DATABASE (a fresh database URL) runs the suite on another
                # backend.
                os.environ.get("AGENTPLANE_E2E_DATABASE")
                or f"sqlite://{self.dir.name}/agentplane.db",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.base_url, self.admin_key = self._wait_ready()

    def _wait_ready(self) -> tuple[str, str]:
        found: dict[str, str] = {}
        done = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if key := re.search(r"\b(ap_[A-Za-z0-9]+)", line):
                    found["key"] = key.group(1)
                if url := re.search(r"listening on (http://[0-9.:]+)", line):
                    found["url"] = url.group(1)
                if "key" in found and "url" in found:
                    done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(30):
            self.stop()
            raise RuntimeError(f"agentplane did not start: {found}")
        return found["url"], found["key"]

    def client(self, key: str) -> agentplane_client.ApiClient:
        config = agentplane_client.Configuration(host=self.base_url, access_token=key)
        return agentplane_client.ApiClient(config)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.dir.cleanup()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def api(server):
    with server.client(server.admin_key) as client:
        yield client
