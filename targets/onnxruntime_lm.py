"""ONNX Runtime for causal LMs: the exported decoder step as it is (past/present as tensors the
runtime binds), weights optionally packed by ONNX Runtime's ``MatMulNBitsQuantizer``.

Weight-only INT8/INT4 replaces each ``MatMul`` whose weight is constant with ``MatMulNBits``
(symmetric, blocks along the input axis; ``accuracy_level`` 4 lets the CPU kernel compute in
int8 with dynamically quantized activations, the fast path). The embedding ``Gather`` stays
float (ONNX Runtime's quantized gather only saves memory, it costs time).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import CompileError

DEFAULT_BLOCK = 64
ACCURACY_LEVEL = 4


def build(
    onnx_path: Path, out_dir: Path, *, weights: str | None, group_size: int | None
) -> tuple[str, dict[str, Any], str | None]:
    """Write the decoder payload into ``out_dir``.

    Returns:
        The entry file name, the executor config, and what was done to the weights (or None).

    Raises:
        CompileError: bad compression settings, or the quantizer failed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"graph_optimization_level": "all"}
    if weights is None:
        shutil.copy2(onnx_path, out_dir / "decoder.onnx")
        data = onnx_path.with_name(onnx_path.name + ".data")
        if data.is_file():
            shutil.copy2(data, out_dir / data.name)
        return "decoder.onnx", config, None
    bits = {"int8": 8, "int4": 4}.get(weights)
    if bits is None:
        raise CompileError(f"unknown weight compression '{weights}' (int8 or int4)")
    block = group_size or DEFAULT_BLOCK
    if block < 16 or block & (block - 1):
        raise CompileError(f"group size {block}: ONNX Runtime needs a power of two >= 16")
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The quantizer logs every node it skips or packs at INFO: quiet it for the compile.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    try:
        model = onnx.load(str(onnx_path))
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=bits,
            block_size=block,
            is_symmetric=True,
            accuracy_level=ACCURACY_LEVEL,
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
        quantizer.model.save_model_to_file(
            str(out_dir / "decoder.onnx"), use_external_data_format=True
        )
    except Exception as exc:
        raise CompileError(f"ONNX Runtime weight quantization failed: {exc}") from exc
    packed = sum(1 for n in quantizer.model.model.graph.node if n.op_type == "MatMulNBits")
    return (
        "decoder.onnx",
        config,
        f"{packed} MatMul weights in {bits} bits (MatMulNBits, symmetric, block {block}, "
        f"accuracy level {ACCURACY_LEVEL})",
    )
