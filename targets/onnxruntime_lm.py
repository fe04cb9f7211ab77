"""ONNX Runtime for causal LMs: the exported decoder step (past/present as tensors the runtime
binds), grouped-query attention without the copies of ``repeat_kv``, weights optionally packed
by ONNX Runtime's ``MatMulNBitsQuantizer``.

The exporter writes ``transformers``' ``repeat_kv`` in front of every ``Attention``: each key
and value head is copied once per query head of its group (``Unsqueeze -> Expand -> Reshape``),
the whole cache every step. The opset-23 ``Attention`` takes fewer key/value heads than query
heads itself (query head ``i`` reads key/value head ``i // group``, the order ``repeat_kv``
makes), so ``attend_grouped`` hands it the cache as it is. For SmolLM2 (9 query heads, 3
key/value heads) the logits stay bit-identical and a decode step at 400 tokens of context
loses its 63 ``Expand`` nodes (4.1 ms of a 50 ms step in ONNX Runtime's profile).

Weight-only INT8/INT4 replaces each ``MatMul`` whose weight is constant with ``MatMulNBits``
(symmetric, blocks along the input axis; ``accuracy_level`` 4 lets the CPU kernel compute in
int8 with dynamically quantized activations, the fast path). The embedding ``Gather`` stays
float (ONNX Runtime's quantized gather only saves memory, it costs time).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_vmm.runtime.errors import CompileError

if TYPE_CHECKING:
    import onnx

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
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"graph_optimization_level": "all"}
    if weights is None:
        # The graph alone is rewritten; the weights file is copied as it is (same name, so the
        # graph's references to it hold).
        model = onnx.load(str(onnx_path), load_external_data=False)
        grouped = attend_grouped(model.graph)
        onnx.save(model, str(out_dir / "decoder.onnx"))
        data = onnx_path.with_name(onnx_path.name + ".data")
        if data.is_file():
            shutil.copy2(data, out_dir / data.name)
        return "decoder.onnx", config, _grouped_note(grouped)
    bits = {"int8": 8, "int4": 4}.get(weights)
    if bits is None:
        raise CompileError(f"unknown weight compression '{weights}' (int8 or int4)")
    block = group_size or DEFAULT_BLOCK
    if block < 16 or block & (block - 1):
        raise CompileError(f"group size {block}: ONNX Runtime needs a power of two >= 16")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The quantizer logs every node it skips or packs at INFO: quiet it for the compile.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    try:
        model = onnx.load(str(onnx_path))
        grouped = attend_grouped(model.graph)
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
    note = (
        f"{packed} MatMul weights in {bits} bits (MatMulNBits, symmetric, block {block}, "
        f"accuracy level {ACCURACY_LEVEL})"
    )
    return "decoder.onnx", config, "; ".join(filter(None, [note, _grouped_note(grouped)]))


def _grouped_note(grouped: int) -> str | None:
    return f"{grouped} attention nodes read the grouped KV cache directly" if grouped else None


def attend_grouped(graph: onnx.GraphProto) -> int:
    """Feed every ``Attention`` its keys and values before ``repeat_kv``; drop the copies.

    Only the exporter's exact pattern is rewritten: ``Unsqueeze(x, axes=[2])``, an ``Expand``
    to ``[batch, kv, group, length, dim]`` and a ``Reshape`` to ``[batch, kv * group, length,
    dim]``, with ``kv`` and ``group`` constants of the graph. Returns how many ``Attention``
    nodes now read the cache as it is (0: the graph is unchanged).
    """
    from onnx import numpy_helper

    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name: init for init in graph.initializer}

    def ints(name: str) -> list[int] | None:
        node = producer.get(name)
        if name in constants and not constants[name].external_data:
            return [int(v) for v in numpy_helper.to_array(constants[name]).ravel()]
        if node is not None and node.op_type == "Constant" and node.attribute[0].name == "value":
            return [int(v) for v in numpy_helper.to_array(node.attribute[0].t).ravel()]
        return None

    def parts(name: str) -> list[list[int] | None] | None:
        """The pieces of a shape built by ``Concat`` (constants where they are)."""
        node = producer.get(name)
        if node is None or node.op_type != "Concat":
            return None
        return [ints(piece) for piece in node.input]

    def before_repeat(name: str) -> str | None:
        reshape = producer.get(name)
        if reshape is None or reshape.op_type != "Reshape":
            return None
        expand = producer.get(reshape.input[0])
        if expand is None or expand.op_type != "Expand":
            return None
        unsqueeze = producer.get(expand.input[0])
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.input) < 2:
            return None
        grown, merged = parts(expand.input[1]), parts(reshape.input[1])
        if ints(unsqueeze.input[1]) != [2] or grown is None or merged is None:
            return None
        if len(grown) != 5 or len(merged) != 4 or None in (grown[1], grown[2], merged[1]):
            return None
        if [grown[1][0] * grown[2][0]] != merged[1]:  # type: ignore[index]
            return None
        return str(unsqueeze.input[0])

    rewired = 0
    for node in graph.node:
        if node.op_type != "Attention" or len(node.input) < 3:
            continue
        sources = [before_repeat(node.input[i]) for i in (1, 2)]
        if None in sources:
            continue
        node.input[1], node.input[2] = sources  # type: ignore[assignment]
        rewired += 1
    if rewired:
        _drop_unused(graph)
    return rewired


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes whose outputs nothing reads (the graph's outputs are read), then the
    initializers nothing reads."""
    outputs = {value.name for value in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        unused = [node for node in graph.node if not any(out in read for out in node.output)]
        if not unused:
            break
        for node in unused:
            graph.node.remove(node)
    for init in [init for init in graph.initializer if init.name not in read]:
        graph.initializer.remove(init)
