"""The serving benchmark's server side (benchmarks/serving.py): one configuration's search
service as a child process on 127.0.0.1, its health, its memory, and the service started with
inference overrides (this file run as ``python serving_server.py --serve-with-overrides JSON ...``)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE_WITH_OVERRIDES = "--serve-with-overrides"  # internal: this file as the server, see serve_with_overrides


def serve_with_overrides(overrides: dict, argv: list[str]) -> None:
    """``python -m recbole_onevision.serve`` with ``overrides`` passed to every
    ``Searcher.from_checkpoint`` (the service itself takes no inference settings)."""
    sys.path.insert(0, ROOT)
    from recbole_onevision.search import Searcher
    from recbole_onevision.serve.__main__ import main

    load = Searcher.from_checkpoint.__func__

    def from_checkpoint(cls, checkpoint, more=None, encoder=None):
        return load(cls, checkpoint, {**overrides, **(more or {})}, encoder)

    Searcher.from_checkpoint = classmethod(from_checkpoint)
    main(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a live process; {} once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    except (FileNotFoundError, ProcessLookupError):
        return {}


class Server:
    """One configuration's service, a child process on 127.0.0.1."""

    def __init__(self, name: str, checkpoint: str, batch: int, wait_ms: float, overrides: dict | None):
        self.port = free_port()
        serve_args = ["--checkpoint", f"{name}={checkpoint}", "--host", "127.0.0.1", "--port", str(self.port),
                      "--batch-size", str(batch), "--batch-wait-ms", str(wait_ms)]
        if overrides:
            command = [sys.executable, os.path.abspath(__file__), SERVE_WITH_OVERRIDES, json.dumps(overrides),
                       *serve_args]
        else:
            command = [sys.executable, "-m", "recbole_onevision.serve", *serve_args]
        self.command = command
        self.log = tempfile.TemporaryFile()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float) -> float:
        """Seconds from process start to a 200 from /health; RuntimeError (with the log) if it
        exits or times out first."""
        import httpx2 as httpx  # the test extra's client

        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != SERVE_WITH_OVERRIDES:
        raise SystemExit(f"usage: {sys.argv[0]} {SERVE_WITH_OVERRIDES} JSON [serve arguments]: "
                         "started by benchmarks/serving.py, not by hand")
    serve_with_overrides(json.loads(sys.argv[2]), sys.argv[3:])
