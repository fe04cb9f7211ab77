"""Issue 13, case 4: loading a zip artifact leaves no files behind, whatever happens.

Before: every ``run`` / ``inspect`` / ``load`` of a ``.vmm.zip`` unpacked it into
``$TMPDIR/ai-vmm-artifact-*`` and never removed it (``CompiledModel`` had no ``close()``), and a
rejected zip left an empty one.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from reliability_support import compile_mlp, leftovers, vmmc

from ai_vmm.runtime import ArtifactError, load
from ai_vmm.runtime.artifact import write_zip


@pytest.fixture(scope="module")
def zipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zipped")
    directory = compile_mlp(root)
    write_zip(directory, root / "mlp.vmm.zip")
    return root / "mlp.vmm.zip"


@pytest.fixture
def tmpdir_(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's ``$TMPDIR``, empty at the start of the test."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


X = np.ones((2, 16), np.float32)


def test_close_and_with_remove_the_unpacked_files(zipped: Path, tmpdir_: Path) -> None:
    model = load(zipped)
    assert len(leftovers(tmpdir_)) == 1
    assert model(x=X)["y"].shape == (2, 8)
    model.close()
    model.close()  # idempotent
    assert leftovers(tmpdir_) == []
    with pytest.raises(ArtifactError, match="was closed; load it again"):
        model(x=X)
    with load(zipped) as again:
        assert again(x=X)["y"].shape == (2, 8)
    assert leftovers(tmpdir_) == []


def test_garbage_collection_removes_them_too(zipped: Path, tmpdir_: Path) -> None:
    model = load(zipped)
    model(x=X)
    del model
    gc.collect()
    assert leftovers(tmpdir_) == []


def test_a_process_that_never_closes_leaves_nothing(zipped: Path, tmp_path: Path) -> None:
    root = tmp_path / "proc-tmp"
    root.mkdir()
    code = (
        "import numpy as np, ai_vmm; m = ai_vmm.load(__import__('sys').argv[1]); "
        "global_model = m; print(m(x=np.ones((1, 16), np.float32))['y'].shape)"
    )
    env = {**os.environ, "TMPDIR": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(zipped)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 8)"
    assert leftovers(root) == []


def test_cli_run_and_inspect_leave_nothing(zipped: Path, tmp_path: Path) -> None:
    root = tmp_path / "cli-tmp"
    root.mkdir()
    env = {**os.environ, "TMPDIR": str(root)}
    assert vmmc("run", zipped, "--random-inputs", env=env).returncode == 0
    inspected = vmmc("inspect", zipped, "--json", env=env)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["manifest"]["partitions"][0]["id"] == "p0"
    assert leftovers(root) == []


def _variant(zipped: Path, where: Path, change: str) -> Path:
    out = where / f"{change}.vmm.zip"
    with zipfile.ZipFile(zipped) as source:
        members = {name: source.read(name) for name in source.namelist()}
    if change == "tampered":
        members["p0/model.onnx"] += b"\0"
    elif change == "bad-manifest":
        members["manifest.json"] = b'{"format": "ai-vmm-artifact", "format_version": 1}'
    elif change == "missing-payload":
        del members["p0/model.onnx"]
    if change in ("truncated", "junk"):
        data = zipped.read_bytes()
        out.write_bytes(data[: len(data) // 2] if change == "truncated" else b"PK\x03\x04junk")
        return out
    with zipfile.ZipFile(out, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    return out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("tampered", "changed after compile"),
        ("bad-manifest", "'inputs' is a required property"),
        ("missing-payload", "has no p0/model.onnx"),
        ("truncated", "neither an artifact directory nor an artifact zip"),
        ("junk", "neither an artifact directory nor an artifact zip"),
    ],
)
def test_rejected_zips_leave_nothing(
    zipped: Path, tmp_path: Path, tmpdir_: Path, change: str, expected: str
) -> None:
    with pytest.raises(ArtifactError, match=expected):
        load(_variant(zipped, tmp_path, change))
    assert leftovers(tmpdir_) == []


def test_a_killed_loader_is_swept_by_the_next_load(zipped: Path, tmp_path: Path) -> None:
    root = tmp_path / "killed-tmp"
    root.mkdir()
    code = (
        "import sys, time, ai_vmm; m = ai_vmm.load(sys.argv[1]); print('loaded', flush=True); "
        "time.sleep(60)"
    )
    env = {**os.environ, "TMPDIR": str(root)}
    loader = subprocess.Popen(
        [sys.executable, "-c", code, str(zipped)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert loader.stdout is not None and loader.stdout.readline().strip() == "loaded"
    # While the loader lives, its directory is held: even an old one is not swept.
    (held,) = leftovers(root)
    hour_ago = time.time() - 7200
    os.utime(root / held, (hour_ago, hour_ago))
    assert vmmc("run", zipped, "--random-inputs", env=env).returncode == 0
    assert leftovers(root) == [held]
    loader.send_signal(signal.SIGKILL)
    loader.wait()
    assert leftovers(root) == [held]  # SIGKILL runs no cleanup
    assert vmmc("run", zipped, "--random-inputs", env=env).returncode == 0
    assert leftovers(root) == []
