"""Helpers for the reliability tests of issue 13: real artifacts, real processes, real mounts.

Read-only directories and full disks are made for real: ``chmod`` plus, when the tests run as
root (root ignores permission bits), the command runs under ``setpriv`` without the
``CAP_DAC_OVERRIDE`` capability; a full disk is a small ``tmpfs`` mount (root only). Where the
machine allows neither, the test is skipped and says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import ai_vmm
from tests_support import make_mlp_model

DROP_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


def compile_mlp(root: Path, name: str = "mlp.vmm") -> Path:
    """A real artifact of the small MLP (``x[batch,16] -> y[batch,8]``) on ONNX Runtime CPU."""
    model = root / "mlp.onnx"
    if not model.exists():
        onnx.save(make_mlp_model(), model)
    return ai_vmm.compile(model, "onnxruntime:CPU", root / name, tune=False).path


def wide_model(path: Path, width: int = 512) -> Path:
    """``x[1,width] -> MatMul(width x width) -> y``: about ``4 * width**2`` bytes of weights."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "W")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "W"], ["y"])],
        "wide",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [weights],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def vmmc(
    *args: str | Path, env: dict[str, str] | None = None, drop_dac: bool = False, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``vmmc`` in a fresh process (``python -m ai_vmm.cli``)."""
    command = [sys.executable, "-m", "ai_vmm.cli", *map(str, args)]
    if drop_dac and os.geteuid() == 0:
        command = DROP_DAC + command
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a failed run (asserts there is exactly one)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(("error:", "internal"))]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]


def require_permission_checks() -> None:
    """Skip unless a read-only directory really stops the processes ``vmmc(drop_dac=True)`` runs."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits are not enforced")


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A real ``tmpfs`` of ``size`` mounted at ``path`` (skips where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def leftovers(directory: Path) -> list[str]:
    """Names in ``directory`` that only a writer's staging or a loader's unpacking makes."""
    prefixes = (".ai-vmm-", "ai-vmm-build-", "ai-vmm-artifact-")
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefixes))
