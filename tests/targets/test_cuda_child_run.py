"""The child-process first call of a package with loops: a crash or a failure there is a clean
``CompileError`` for the candidate, and the compiling process lives on. The child's code is
replaced by code that crashes or fails the way a bad Inductor package did (chars2vec: SIGSEGV
on its first call); a real package's run is covered by the counted-loop build test in
test_cuda_build.py."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ai_vmm.runtime.errors import CompileError  # noqa: E402
from ai_vmm.targets import cuda_child_run  # noqa: E402


def test_a_package_that_crashes_its_process_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        cuda_child_run, "_CHILD", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    with pytest.raises(CompileError, match=r"crashed \(SIGSEGV\) on its first call"):
        cuda_child_run.run_in_child(tmp_path / "model.pt2", [torch.ones(2)], "cpu")


def test_a_package_that_raises_in_the_child_is_refused_with_its_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cuda_child_run, "_CHILD", "raise RuntimeError('bad kernel')\n")
    with pytest.raises(CompileError, match=r"failed in a child process: RuntimeError: bad kernel"):
        cuda_child_run.run_in_child(tmp_path / "model.pt2", [torch.ones(2)], "cpu")


def test_the_child_gets_the_example_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child reads the saved example and gets the same tensors (it exits 0)."""
    monkeypatch.setattr(
        cuda_child_run,
        "_CHILD",
        "import sys, torch\nargs = torch.load(sys.argv[2])\n"
        "assert sys.argv[3] == 'cpu' and torch.equal(args[0], torch.arange(3.0)), args\n",
    )
    cuda_child_run.run_in_child(tmp_path / "model.pt2", [torch.arange(3.0)], "cpu")
