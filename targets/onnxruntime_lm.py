"""ONNX Runtime for causal LMs: the exported decoder step (past/present as tensors the runtime
binds), grouped-query attention without the copies of ``repeat_kv``, weights optionally packed
by ONNX Runtime's ``MatMulNBitsQuantizer``.

The exporter writes ``transformers``' ``repeat_kv`` in front of every ``Attention``: each key
and value head is copied once per query head of its group, the whole cache every step. The
build applies the fusion step ``attention_gqa`` (``passes/fusion/attention.py``), which hands
``Attention`` the cache as it is (the opset-23 op takes fewer key/value heads itself). For
SmolLM2 (9 query heads, 3 key/value heads) the logits stay bit-identical and a decode step at
400 tokens of context loses its 63 ``Expand`` nodes (3.9 ms of a 50 ms step in ONNX Runtime's
profile: ``scripts/llm_ort_study.py profile``).

Weight-only INT8/INT4 replaces each ``MatMul`` whose weight is constant with ``MatMulNBits``
(symmetric, blocks along the input axis; ``accuracy_level`` 4 lets the CPU kernel compute in
int8 with dynamically quantized activations, the fast path). The embedding ``Gather`` stays
float (ONNX Runtime's quantized gather only saves memory, it costs time).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm.passes.fusion import FUSIONS
from ai_vmm.passes.fusion.core import apply_fusion
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
        model = ir.load(str(onnx_path))
        grouped = _drop_repeat_kv(model)
        ir.save(model, str(out_dir / "decoder.onnx"), external_data="decoder.onnx.data")
        return "decoder.onnx", config, _grouped_note(grouped)
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
        model = ir.serde.deserialize_model(onnx.load(str(onnx_path)))
        grouped = _drop_repeat_kv(model)
        quantizer = MatMulNBitsQuantizer(
            ir.serde.serialize_model(model),
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
    note = (
        f"{packed} MatMul weights in {bits} bits (MatMulNBits, symmetric, block {block}, "
        f"accuracy level {ACCURACY_LEVEL})"
    )
    return "decoder.onnx", config, "; ".join(filter(None, [note, _grouped_note(grouped)]))


def _grouped_note(grouped: int) -> str | None:
    return f"{grouped} attention nodes read the grouped KV cache directly" if grouped else None


def _drop_repeat_kv(model: ir.Model) -> int:
    """``attention_gqa`` on the decoder; how many ``Attention`` nodes now read the cache as it
    is."""
    return apply_fusion(model, FUSIONS["attention_gqa"]).count
