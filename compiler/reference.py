"""The reference: ONNX Runtime, all graph optimizations off, on the original model.

Every candidate is compared with it. It also decides which synthetic shapes make sense
(``ai_vmm.shapes`` asks it to run each one). A reference that cannot run is recorded as the
reason the artifact is unverified; it is never blamed on a candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm.runtime.errors import VmmError
from ai_vmm.runtime.executors import Executor, create_executor

# Ops whose outputs are random by definition: comparing them with a reference proves nothing.
NONDETERMINISTIC_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
MAX_REFERENCE_BYTES = 4 << 30
"""A sample whose inputs alone take more than this is not run (a declared 2**40 dimension)."""


class Reference:
    """ONNX Runtime on the model as given; ``note`` says why it cannot be compared with."""

    def __init__(self, model: ir.Model, path: Path) -> None:
        self.note = ""
        """Non-empty when outputs must not be compared (random ops) or cannot be produced."""
        self._executor: Executor | None = None
        random_ops = sorted(
            {n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)}
            & NONDETERMINISTIC_OPS
        )
        if random_ops:
            self.note = f"the model draws random numbers ({', '.join(random_ops)})"
        names = tuple(v.name or "" for v in model.graph.outputs)
        try:
            self._executor = create_executor(
                "onnxruntime", path, "CPU", {"graph_optimization_level": "disable"}, names
            )
        except VmmError as exc:
            self.note = f"ONNX Runtime cannot load the original model: {exc}"

    @property
    def runs(self) -> bool:
        """Whether the reference can run at all (shape trials need only this)."""
        return self._executor is not None

    @property
    def comparable(self) -> bool:
        """Whether its outputs are what candidates must reproduce."""
        return self._executor is not None and not self.note

    def try_run(self, sample: dict[str, np.ndarray]) -> str | None:
        """Run on ``sample``: ``None`` when it ran, else why not, in one line."""
        if self._executor is None:
            return self.note or "no reference"
        size = sum(int(np.asarray(a).nbytes) for a in sample.values())
        if size > MAX_REFERENCE_BYTES:
            return f"inputs of {size / 2**30:.1f} GiB are too large to run"
        try:
            self._executor.run(sample)
        except (VmmError, MemoryError) as exc:
            return " ".join(str(exc).split())[:300] or type(exc).__name__
        return None

    def outputs(self, sample: dict[str, np.ndarray]) -> dict[str, Any]:
        """The reference outputs for ``sample``.

        Raises:
            VmmError: ONNX Runtime failed on it.
        """
        assert self._executor is not None
        return self._executor.run(sample)
