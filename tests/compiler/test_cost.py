"""The cost model's micro-benchmark models load in every runtime that times them."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from ai_vmm.cost import IR_VERSION, _micro_models


def test_micro_models_pin_an_ir_version_onnx_runtime_reads(tmp_path: Path) -> None:
    """onnx's default IR version runs ahead of ONNX Runtime's: the GPU machine's onnx 1.23.1
    wrote IR 14 and its ONNX Runtime 1.30 refused the file, so `--target auto` failed there."""
    for path in _micro_models(tmp_path):
        assert onnx.load(str(path)).ir_version == IR_VERSION
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()
