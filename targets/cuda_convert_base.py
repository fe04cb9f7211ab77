"""What the ONNX -> torch op functions share: values, node context and the op registry.

:mod:`ai_vmm.targets.cuda_convert` builds the module; the op functions live in
:mod:`~ai_vmm.targets.cuda_ops_tensor` (elementwise, shape and tensor ops, Q/DQ),
:mod:`~ai_vmm.targets.cuda_ops_nn` (convolution, pooling, normalization, attention),
:mod:`~ai_vmm.targets.cuda_ops_resize` (Resize, Upsample), :mod:`~ai_vmm.targets.cuda_ops_rnn`
(LSTM, GRU, RNN) and :mod:`~ai_vmm.targets.cuda_ops_index` (OneHot, scatters, bitwise ops).
Each registers its functions in :data:`OPS` with :func:`onnx_op`. See
:mod:`~ai_vmm.targets.cuda_convert` for why int64 shape tensors are carried as
:class:`ShapeValue`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

__all__ = [
    "CONST_INPUTS",
    "DTYPES",
    "INT_TYPES",
    "OPS",
    "SHAPE_AWARE",
    "SMALL_CONSTANT",
    "ConversionError",
    "Node",
    "Op",
    "ShapeValue",
    "as_tensor",
    "attr_value",
    "axis_index",
    "constant_array",
    "ints",
    "is_shape",
    "onnx_op",
    "scalar_of",
    "shape_elementwise",
    "to_compute",
    "torch_dtype",
    "torch_pads",
]


class ConversionError(Exception):
    """An ONNX node that this converter cannot express in torch (the message says why)."""


@dataclass
class ShapeValue:
    """A 0-D or 1-D integer ONNX tensor held as Python ints / ``SymInt``\\ s (see module doc).

    ``dtype`` float32 marks a size cast to float (YOLO heads build their anchor grids with
    ``Range(0.0, Cast(Shape(x)[3]), 1.0)``): only ``Range`` and ``Cast`` read such a value; the
    conversion hands every other op a tensor of it.
    """

    values: list[Any]
    scalar: bool = False
    dtype: torch.dtype = torch.int64


DTYPES: dict[ir.DataType, torch.dtype] = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}
INT_TYPES = {torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8}
SMALL_CONSTANT = 64
"""Integer constants with at most this many elements (0-D/1-D) are kept as ShapeValues."""


def bind_sizes(y: torch.Tensor, sizes: Sequence[Any]) -> torch.Tensor:
    """``y`` (a step's output inside a ``scan``) reshaped to ``sizes``, its own shape written in
    the symbols of the graph outside the loop.

    Inductor lowers a scan to a while loop whose stacked outputs it preallocates, computing
    their sizes from the scan's symbolic-int operands only (PyTorch 2.13,
    ``post_grad.decompose_scan_to_while_loop``): a size built from a symbol that is not one of
    them (a dynamic batch) fails the build with ``KeyError: s..``. Sizes used in the step's
    code are lifted as such operands.
    """
    return y.reshape(tuple(sizes))


def to_compute(tensor: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """A float32 constant in the compute dtype, clamped to its finite range first.

    Exporters write masks as ``(1 - mask) * float32.min``: -3.4e38 is -inf in float16, and
    0 * -inf is NaN (MiniLM's attention then NaNs everything). ONNX Runtime's float16 converter
    clamps the same way.
    """
    if compute == torch.float16 and tensor.dtype == torch.float32:
        info = torch.finfo(compute)
        tensor = tensor.clamp(info.min, info.max)
    return tensor.to(compute)


def torch_dtype(
    dtype: ir.DataType | int | None, compute: torch.dtype = torch.float32
) -> torch.dtype:
    """The torch dtype of an ONNX element type (float32 becomes ``compute``)."""
    if dtype is None:
        raise ConversionError("a tensor without an element type")
    dt = ir.DataType(dtype)
    if dt == ir.DataType.FLOAT:
        return compute
    if dt not in DTYPES:
        raise ConversionError(f"element type {dt.name} has no torch equivalent here")
    return DTYPES[dt]


# --------------------------------------------------------------------------------------------
# Node context: attributes as Python values
# --------------------------------------------------------------------------------------------


@dataclass
class Node:
    """One ONNX node, reduced to what the op functions read."""

    op_type: str
    attrs: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    opset: int
    compute: torch.dtype
    consts: dict[int, np.ndarray] = field(default_factory=dict)
    """Inputs (by position) that must be known when the module is built (e.g. Resize's
    scales: sizes are computed from them), read from initializers and Constant nodes."""

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


CONST_INPUTS: dict[str, tuple[int, ...]] = {}
"""op_type -> positions of float inputs the op function reads as ``Node.consts``."""


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The data of an initializer or a Constant node's output; ``None`` when computed."""
    if value is None:
        return None
    if value.const_value is not None:
        return np.asarray(value.const_value.numpy())
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        tensor = producer.attributes["value"].value
        return np.asarray(tensor.numpy())
    return None


def attr_value(attr: ir.Attr) -> Any:
    kind = attr.type
    if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        raise ConversionError("subgraph attributes (If/Loop/Scan) are not converted")
    if kind == ir.AttributeType.TENSOR:
        return attr.value.numpy()
    if kind == ir.AttributeType.STRING:
        value = attr.value
        return value.decode() if isinstance(value, bytes) else value
    if kind in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(attr.value)
    return attr.value


# --------------------------------------------------------------------------------------------
# Values: tensors or ShapeValues
# --------------------------------------------------------------------------------------------


def is_shape(value: Any) -> bool:
    """An integer ShapeValue (the float ones only reach ``Range`` and ``Cast``)."""
    return isinstance(value, ShapeValue) and not value.dtype.is_floating_point


def as_tensor(value: Any, device: torch.device) -> Any:
    """A torch tensor for ``value`` (a ShapeValue becomes a tensor of its dtype on ``device``)."""
    if not isinstance(value, ShapeValue):
        return value
    items, dtype = value.values, value.dtype
    if all(isinstance(v, int) for v in items):
        out = torch.tensor(items, dtype=dtype, device=device)
    else:
        out = torch.stack([torch.scalar_tensor(v, dtype=dtype, device=device) for v in items])
    return out.reshape(()) if value.scalar else out


def ints(value: Any, what: str) -> list[Any]:
    """Sizes / axes / indices given as a ShapeValue (a data tensor cannot be read in export)."""
    if value is None:
        return []
    if isinstance(value, ShapeValue):
        return list(value.values)
    if isinstance(value, list | tuple):
        return list(value)
    raise ConversionError(
        f"{what} is computed from tensor data, not from shapes or constants; "
        "torch.export cannot read it (data-dependent shape)"
    )


def scalar_of(value: Any, what: str) -> Any:
    items = ints(value, what)
    if len(items) != 1:
        raise ConversionError(f"{what} must hold one value, got {len(items)}")
    return items[0]


def shape_elementwise(fn: Callable[..., Any], args: Sequence[ShapeValue]) -> ShapeValue:
    length = max(len(a.values) for a in args)
    cols = []
    for a in args:
        if len(a.values) not in (1, length):
            raise ConversionError("shape arithmetic on lists of different lengths")
        cols.append(a.values * length if len(a.values) == 1 else a.values)
    return ShapeValue(
        [fn(*row) for row in zip(*cols, strict=True)],
        scalar=all(a.scalar for a in args),
        dtype=args[0].dtype,
    )


def axis_index(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --------------------------------------------------------------------------------------------
# Op functions: (node, device, *inputs) -> output or tuple of outputs
# --------------------------------------------------------------------------------------------

Op = Callable[..., Any]
OPS: dict[str, Op] = {}
SHAPE_AWARE: set[str] = set()
"""Ops whose function receives ShapeValues as they are (others get tensors)."""


def onnx_op(*names: str, shape_aware: bool = False) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
            if shape_aware:
                SHAPE_AWARE.add(name)
        return fn

    return register


def torch_pads(begin: Sequence[Any], end: Sequence[Any]) -> list[Any]:
    """ONNX per-axis (begin..., end...) pads of the spatial axes -> ``F.pad``'s order (last
    axis first, (begin, end) pairs)."""
    flat: list[Any] = []
    for i in reversed(range(len(begin))):
        flat.extend((begin[i], end[i]))
    return flat
