"""Zoo models compiled with --target auto (and per target) match ONNX Runtime on the original.

Tolerances: float outputs within atol 1e-4 + rtol 1e-3 of the reference (OpenVINO and ONNX
Runtime order float sums differently; fp32 kernels agree to ~1e-5 on these models).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

import ai_vmm

MODELS = ["small_cnn", "transformer_encoder", "lstm"]
RTOL, ATOL = 1e-3, 1e-4


def _reference(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("target", ["auto", "openvino:CPU", "onnxruntime:CPU"])
def test_zoo_model_matches_reference(
    name: str,
    target: str,
    zoo: ModuleType,
    zoo_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    path = zoo_model(name)
    result = ai_vmm.compile(
        path, target, tmp_path / f"{name}.vmm", tune=target == "auto", tune_seconds=0.3
    )
    assert result.report["verification"]["passed"] is True
    model = ai_vmm.load(result.path)
    for batch in (1, 3):
        feed = zoo.example_inputs(name, batch=batch)
        expected = _reference(path, feed)
        got = model(**feed)
        assert set(got) == set(expected)
        for output, want in expected.items():
            np.testing.assert_allclose(got[output], want, rtol=RTOL, atol=ATOL, err_msg=output)
