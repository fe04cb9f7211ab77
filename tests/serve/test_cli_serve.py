"""``vmmc serve``: --check, one-line config errors, and a graceful shutdown on SIGTERM.

The shutdown test runs the real command in a subprocess, puts requests in flight, sends
SIGTERM and expects every one of them answered (200, right values) before the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import numpy as np
from conftest import ServerProcess, make_repo

import ai_vmm.runtime as rt
from ai_vmm.serve.loadgen import Case, Outcome, Stream, send


def _vmmc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["vmmc", *args], capture_output=True, text=True, timeout=120)


def test_check_lists_the_repository(tmp_path: Path, cnn_artifact: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact}, "[models.cnn]\npinned = true\n")
    done = _vmmc("serve", str(repo), "--check")
    assert done.returncode == 0, done.stderr
    assert "cnn" in done.stdout and "tenants: 0" in done.stdout


def test_bad_config_is_one_line(tmp_path: Path, cnn_artifact: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact}, "[classes.x]\novreflow = 1\n")
    done = _vmmc("serve", str(repo), "--check")
    assert done.returncode == 6
    assert done.stderr.strip().count("\n") == 0
    assert "classes.x.ovreflow: unknown key" in done.stderr
    missing = _vmmc("serve", str(tmp_path / "nowhere"))
    assert missing.returncode == 6 and "not a directory" in missing.stderr


def test_sigterm_drains_requests_in_flight(tmp_path: Path, cnn_artifact: Path) -> None:
    # One call at a time, 256 rows each: 8 requests keep the server busy for a while.
    repo = make_repo(
        tmp_path / "repo", {"cnn": cnn_artifact}, "[models.cnn]\nbatching.max_batch = 0\n"
    )
    direct = rt.load(cnn_artifact)
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(8):
        x = rng.standard_normal((256, 3, 32, 32)).astype(np.float32)
        cases.append(Case({"pixel_values": x}, "logits", direct.run({"pixel_values": x})["logits"]))
    with ServerProcess(repo) as server:
        proc = server.proc
        assert proc is not None

        async def load_then_stop() -> list[Outcome]:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=8)
            async with aiohttp.ClientSession(connector=connector) as session:
                # Open the 8 connections first, so each request below is on an accepted one.
                await asyncio.gather(
                    *(session.get(f"{server.url}/v2/health/live") for _ in range(8))
                )
                stream = Stream("t", None, rate=1, cases=cases)
                url = f"{server.url}/v2/models/cnn/infer"
                tasks = [asyncio.create_task(send(session, url, stream, c)) for c in cases]
                # SIGTERM once the server holds all 8 (one running, the rest queued); asked on
                # a connection of its own (the session's 8 are busy).
                async with aiohttp.ClientSession() as probe:
                    for _ in range(600):
                        async with probe.post(f"{server.url}/v2/repository/index") as response:
                            (row,) = await response.json()
                        if row["in_use"] >= 8 or all(t.done() for t in tasks):
                            break
                        await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                return list(await asyncio.gather(*tasks))

        outcomes = asyncio.run(load_then_stop())
        code = proc.wait(timeout=60)
        output = proc.stdout.read()  # type: ignore[union-attr]
    # uvicorn re-raises the signal once drained: exit by SIGTERM, after the drain.
    assert code in (0, -signal.SIGTERM), output
    assert [o.status for o in outcomes] == [200] * 8, output
    assert all(o.correct for o in outcomes)
    # Requests were still being answered after the shutdown began: they were drained.
    after = output.split("Shutting down", 1)[1]
    assert after.count('"path":"/v2/models/cnn/infer","status":200') >= 1, output


def test_vmm_serve_is_the_seed_spelling(tmp_path: Path, cnn_artifact: Path) -> None:
    """``from ai_vmm import VMM; VMM().serve(repo)`` serves like ``vmmc serve`` does."""
    import sys

    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact}, "[models.cnn]\npinned = true\n")
    server = ServerProcess(repo)
    server.args = [
        sys.executable,
        "-c",
        "import sys; from ai_vmm import VMM; VMM().serve(sys.argv[1], port=int(sys.argv[2]))",
        str(repo),
        str(server.port),
    ]
    with server:
        import httpx

        models = httpx.get(f"{server.url}/v2/repository/index", timeout=10).json()
        assert [m["name"] for m in models] == ["cnn"]
        out = server.stop()
    assert server.proc is not None and server.proc.returncode in (0, -15), out
