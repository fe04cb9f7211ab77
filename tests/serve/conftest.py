"""Shared fixtures of the serve tests: compiled artifacts and live servers on 127.0.0.1.

Servers run in a thread of the test process (uvicorn bound to port 0, so the OS picks a free
port and nothing races for one); load tests start ``vmmc serve`` in a subprocess instead, so
the server and the load driver do not share a GIL.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
REAL = Path.home() / ".cache" / "ai-vmm" / "realmodels"
KEYS = {"alice": "sk-alice-3f0c7d1e", "bob": "sk-bob-99aa01b2", "root": "sk-root-5e5e"}


def compile_artifact(source: Path, out: Path) -> Path:
    import ai_vmm

    if not (out / "manifest.json").is_file():
        ai_vmm.compile(source, output=out, tune=False, verify=False)
    return out


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-artifacts")


@pytest.fixture(scope="session")
def cnn_artifact(artifacts: Path) -> Path:
    """The bundled tiny CNN ([N,3,32,32] -> [N,10]), compiled once per session."""
    return compile_artifact(REPO / "models" / "bundled" / "tiny_cnn.onnx", artifacts / "cnn.vmm")


def real_model(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        fetched = subprocess.run(
            ["bash", str(REPO.parent / "shared" / "realmodels" / "fetch.sh"), str(REAL)],
            capture_output=True,
            text=True,
        )
        if not path.is_file():
            pytest.skip(f"real model {name} unavailable (fetch failed: {fetched.stderr[-200:]})")
    return path


@pytest.fixture(scope="session")
def encoder_artifact(artifacts: Path) -> Path:
    """paraphrase-MiniLM-L3 (a real BERT-style sentence encoder), compiled once."""
    return compile_artifact(real_model("paraphrase_minilm_l3.onnx"), artifacts / "minilm.vmm")


def make_repo(root: Path, models: dict[str, Path], config: str = "") -> Path:
    """A repository folder: ``models`` linked in by name, ``config`` as its serve.toml."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in models.items():
        if source.is_file():
            suffix = ".vmm.zip" if source.name.endswith(".vmm.zip") else source.suffix
            target = root / f"{name}{suffix}"
        else:
            target = root / f"{name}.vmm"
        if not target.exists():
            target.symlink_to(source, target_is_directory=source.is_dir())
    if config:
        (root / "serve.toml").write_text(config)
    return root


class LiveServer:
    """A uvicorn server for ``app`` on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, ready_timeout: float = 120.0) -> None:
        import uvicorn

        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.ready_timeout = ready_timeout
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/v2/health/ready").status_code == 200:
                return
            time.sleep(0.05)
        raise RuntimeError("the test server never became ready")

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture
def live() -> Any:
    """``live(app)``: a context manager serving ``app`` on a free local port."""
    return LiveServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``vmmc serve REPO`` in a subprocess on a free port (for load and shutdown tests)."""

    def __init__(self, repo: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        vmmc = shutil.which("vmmc") or "vmmc"
        self.args = [vmmc, "serve", str(repo), "--port", str(self.port), *extra]
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vmmc serve exited: {self.proc.stdout.read()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("vmmc serve never became ready")

    def stop(self, timeout: float = 60) -> str:
        assert self.proc is not None
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=timeout)
        return out

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def python() -> str:
    return sys.executable
