"""Run a freshly built AOTInductor package once in a child process before this one loads it.

Inductor's lowering of loops (``scan`` -> ``while_loop``) can build a package whose code
crashes the process that runs it: chars2vec's two chained LSTM loops built with a dynamic
batch on PyTorch 2.13 and died with a segmentation fault on their first call, at every batch
(CPU package, 2026-12-05), while the exported program ran right. A crash in the compiler's
own process would take the user's compile with it, so packages of programs with loops
(``OnnxGraphModule.runs_loops``) run once in a child process first; a crash there is a
``CompileError`` for this candidate, like any other build failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import CompileError

_CHILD = """
import sys
import torch
from ai_vmm.runtime.executors.cuda_load import load_package
device = torch.device(sys.argv[3])
args = [t.to(device) for t in torch.load(sys.argv[2])]
runner = load_package(torch, __import__("pathlib").Path(sys.argv[1]), device)
with torch.inference_mode():
    runner(*args)
if device.type == "cuda":
    torch.cuda.synchronize(device)
"""

TIMEOUT_S = 600
"""A package that has not finished one call in this long is refused too."""


def run_in_child(entry: Path, example: list[Any], torch_device: str) -> None:
    """Load ``entry`` and call it once on ``example`` in a child process.

    Raises:
        CompileError: the child crashed, failed or did not finish (the message says which).
    """
    import torch

    with tempfile.TemporaryDirectory(prefix="ai-vmm-child-run-") as tmp:
        inputs = Path(tmp) / "inputs.pt"
        torch.save([t.detach().cpu() for t in example], inputs)
        command = [sys.executable, "-c", _CHILD, str(entry), str(inputs), torch_device]
        # The child imports what this process imports, from where it imports it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env
            )
        except subprocess.TimeoutExpired:
            raise CompileError(
                f"cuda target: the package did not finish one call in {TIMEOUT_S} s "
                "in a child process (not used)"
            ) from None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise CompileError(
            f"cuda target: AOTInductor's package crashed ({name}) on its first call in a child "
            "process (an Inductor code-generation fault; the exported program itself runs): "
            "not used"
        )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise CompileError(f"cuda target: the package failed in a child process: {last[:300]}")
