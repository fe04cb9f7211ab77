"""Issue 13, case 7: a compile killed with SIGKILL leaves nothing a later compile does not sweep.

Before: hidden staging directories (up to 60 MB) beside the output, partial cache entries and
``$TMPDIR/ai-vmm-build-*`` stayed forever. Now every such directory is held under a lock by its
live process; the next compile into the same place removes those no live process holds once
they are an hour old (the test ages them with ``os.utime`` rather than waiting an hour).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_support import leftovers, wide_model

# ai_vmm.runtime.staging's names, spelled out so that this test also runs against older code.
BUILD_PREFIX, STAGE_PREFIX = "ai-vmm-build-", ".ai-vmm-stage-"


def _age(directory: Path, hours: float = 2.0) -> None:
    then = time.time() - hours * 3600
    for name in leftovers(directory):
        os.utime(directory / name, (then, then))


def _compile(model: Path, out: Path, cache: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "ai_vmm.cli", "compile", str(model), "-o", str(out)]
    command += ["--no-tune", "--target", "onnxruntime:CPU", "--cache-dir", str(cache)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def _kill_at(process: subprocess.Popen[str], stage: str) -> None:
    """SIGKILL ``process`` as soon as its progress line for ``stage`` appears."""
    assert process.stderr is not None
    for line in process.stderr:
        if stage in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()


def _kill_then_sweep(tmp_path: Path, stage: str, check_young: bool) -> list[str]:
    tmp, out_dir, cache = tmp_path / "tmp", tmp_path / "out", tmp_path / "cache"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    model = wide_model(tmp_path / "wide.onnx", width=512)  # 1 MB of weights to copy around
    victim = _compile(model, out_dir / "m.vmm", cache, env)
    _kill_at(victim, stage)
    assert victim.returncode == -signal.SIGKILL
    left = leftovers(tmp) + leftovers(out_dir) + leftovers(cache)
    assert any(name.startswith((BUILD_PREFIX, STAGE_PREFIX)) for name in left), left
    if check_young:
        # A young leftover might belong to a compile still running elsewhere: it is kept.
        survivor = _compile(model, out_dir / "m.vmm", cache, env)
        survivor.communicate(timeout=600)
        assert survivor.returncode == 0
        assert leftovers(tmp) + leftovers(out_dir) + leftovers(cache) == left
    for directory in (tmp, out_dir, cache):
        _age(directory)
    sweeper = _compile(model, out_dir / "m.vmm", cache, env)
    sweeper.communicate(timeout=600)
    assert sweeper.returncode == 0
    assert leftovers(tmp) == leftovers(out_dir) == leftovers(cache) == []
    assert (out_dir / "m.vmm" / "manifest.json").is_file()
    return left


def test_a_compile_killed_while_writing_is_swept_by_the_next_one(tmp_path: Path) -> None:
    _kill_then_sweep(tmp_path, "writing", check_young=False)


@pytest.mark.heavy
def test_a_compile_killed_while_verifying_is_swept_and_young_leftovers_kept(
    tmp_path: Path,
) -> None:
    _kill_then_sweep(tmp_path, "verifying against the reference", check_young=True)
