"""Whether replicas hold one model (``runtime/replica_signatures.py``): fixed sizes must agree,
a dynamic axis agrees with any size, names and element types must match."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ai_vmm.runtime.artifact import TensorSpec
from ai_vmm.runtime.errors import ArtifactError
from ai_vmm.runtime.replica_signatures import check_signatures, shared_checker


def _model(*specs: tuple[str, str, list[Any]]) -> Any:
    return SimpleNamespace(inputs=[TensorSpec(n, d, tuple(s)) for n, d, s in specs])


def test_a_fixed_batch_and_a_dynamic_batch_are_one_model() -> None:
    fixed = _model(("x", "float32", [8, 3, 32, 32]))
    dynamic = _model(("x", "float32", ["batch", 3, 32, 32]))
    check_signatures([("cuda:0", fixed), ("onnxruntime:CPU", dynamic)])
    assert shared_checker([fixed, dynamic]) is None  # shapes differ: each replica checks its own
    assert shared_checker([dynamic, _model(("x", "float32", ["batch", 3, 32, 32]))]) is not None


@pytest.mark.parametrize(
    "other",
    [
        ("x", "float16", ["batch", 3, 32, 32]),  # element type
        ("y", "float32", ["batch", 3, 32, 32]),  # name
        ("x", "float32", ["batch", 3, 64, 64]),  # fixed sizes
        ("x", "float32", ["batch", 3, 32]),  # rank
    ],
)
def test_replicas_of_different_models_are_refused(other: tuple[str, str, list[Any]]) -> None:
    base = _model(("x", "float32", ["batch", 3, 32, 32]))
    with pytest.raises(ArtifactError, match="replicas a and b take different inputs"):
        check_signatures([("a", base), ("b", _model(other))])
