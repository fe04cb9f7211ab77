"""Concrete sizes for symbolic dimensions, and a copy of the model at those sizes.

FLOPs and activation memory are only defined at concrete shapes. The caller names the size of
each symbolic dimension (``dims``: the shapes of the inputs the compile runs on); every
dimension left unnamed takes a documented default of the common-size ladder:

=============  =====  ===============================================================
role           size   which dimensions
=============  =====  ===============================================================
``batch``      1      named ``*batch*``; else the names most often on an input's first
                      axis (not named like a sequence); an unnamed first axis
``spatial``    224    the other axes of a 4-D / 5-D floating-point input (an image or
                      video), unless the name says sequence (``seq``, ``len``, ...) or the
                      same name also sizes a non-image input
``sequence``   128    every other dimension (token, time and cache lengths)
=============  =====  ===============================================================

An unnamed dimension is addressed as ``"<input name>[<axis>]"``. ``concrete_copy`` then fixes
the inputs of a copy to those sizes, folds constants (shape arithmetic, masks built from
``ConstantOfShape``) and infers shapes, so that every tensor downstream has a concrete shape.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from ai_vmm.passes.canonicalize import TolerantFoldConstantsPass
from ai_vmm.runtime.errors import InputError

BATCH_SIZE = 1
SEQUENCE_SIZE = 128
SPATIAL_SIZE = 224
DEFAULT_SIZES = {"batch": BATCH_SIZE, "sequence": SEQUENCE_SIZE, "spatial": SPATIAL_SIZE}
FOLD_LIMIT = 1 << 20
"""Largest tensor (elements) the copy folds: masks and position tables, not weights."""

_SEQUENCE_WORDS = ("seq", "len", "time", "token", "step", "past", "total", "cache", "frame")
_SPATIAL_WORDS = ("height", "width", "depth")


def nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """Every node of ``graph`` and of its subgraphs."""
    yield from ir.traversal.RecursiveGraphIterator(graph)


def dim_key(value: ir.Value, axis: int, dim: ir.SymbolicDim) -> str:
    """The name that addresses a symbolic dimension: its own, or ``input[axis]``."""
    return str(dim.value) if dim.value is not None else f"{value.name}[{axis}]"


def _symbolic_axes(inputs: Sequence[ir.Value]) -> Iterator[tuple[ir.Value, int, str]]:
    for value in inputs:
        if value.shape is None:
            continue
        for axis, dim in enumerate(value.shape):
            if not isinstance(dim, int):
                yield value, axis, dim_key(value, axis, dim)


def _batch_names(inputs: Sequence[ir.Value]) -> set[str]:
    """Named ``*batch*``; else the names most often on a first axis (all of them on a tie:
    inputs read side by side share their batch) unless named like a sequence; and every
    unnamed first axis."""
    axes = list(_symbolic_axes(inputs))
    named = {key for _, axis, key in axes if not key.endswith(f"[{axis}]")}
    batch = {name for name in named if "batch" in name.lower()}
    unnamed_firsts = {key for _, axis, key in axes if axis == 0 and key not in named}
    if batch:
        return batch | unnamed_firsts
    firsts = Counter(
        key
        for _, axis, key in axes
        if axis == 0 and key in named and not any(w in key.lower() for w in _SEQUENCE_WORDS)
    )
    most = max(firsts.values(), default=0)
    return {name for name, count in firsts.items() if count == most} | unnamed_firsts


def default_roles(inputs: Sequence[ir.Value]) -> dict[str, str]:
    """The ladder role (``batch``, ``spatial``, ``sequence``) of every symbolic input dim."""
    batch = _batch_names(inputs)
    image_only: dict[str, bool] = {}
    for value, axis, key in _symbolic_axes(inputs):
        dtype = value.dtype
        rank = len(value.shape or ())
        on_image = rank in (4, 5) and axis >= 1 and dtype is not None and dtype.is_floating_point()
        image_only[key] = image_only.get(key, True) and on_image
    roles: dict[str, str] = {}
    for key, image in image_only.items():
        lower = key.lower()
        if key in batch:
            roles[key] = "batch"
        elif any(word in lower for word in _SPATIAL_WORDS) or (
            image and not any(word in lower for word in _SEQUENCE_WORDS)
        ):
            roles[key] = "spatial"
        else:
            roles[key] = "sequence"
    return roles


@dataclass(frozen=True)
class DimSizes:
    """The size of every symbolic input dimension, and where it came from."""

    sizes: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """``given`` (by the caller) or the ladder role of a default (``batch``, ...)."""

    def note(self) -> str:
        """One line for the report: which sizes were given, which assumed."""
        if not self.sizes:
            return "all input shapes are static"
        given = [f"{k}={v}" for k, v in self.sizes.items() if self.sources[k] == "given"]
        assumed = [
            f"{k}={v} ({source})"
            for k, v in self.sizes.items()
            if (source := self.sources[k]) != "given"
        ]
        parts = []
        if given:
            parts.append("given " + ", ".join(given))
        if assumed:
            parts.append("assumed " + ", ".join(assumed))
        return "symbolic dims: " + "; ".join(parts)


def resolve_dims(inputs: Sequence[ir.Value], dims: Mapping[str, int] | None = None) -> DimSizes:
    """Sizes of the symbolic dimensions of ``inputs``: from ``dims``, else the ladder default.

    Args:
        inputs: the model's graph inputs.
        dims: sizes by dimension name (``"batch"``) or, for an unnamed dimension,
            ``"input_ids[1]"``; names the model does not have are ignored.

    Raises:
        InputError: a size in ``dims`` is not a positive integer.
    """
    dims = dict(dims or {})
    for name, size in dims.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise InputError(f"dimension '{name}' must be a positive integer, got {size!r}")
    sizes: dict[str, int] = {}
    sources: dict[str, str] = {}
    for key, role in default_roles(inputs).items():
        if key in dims:
            sizes[key], sources[key] = int(dims[key]), "given"
        else:
            sizes[key], sources[key] = DEFAULT_SIZES[role], role
    return DimSizes(sizes, sources)


def dims_from_shapes(
    inputs: Sequence[ir.Value], shapes: Mapping[str, Sequence[int]]
) -> dict[str, int]:
    """The ``dims`` that concrete input shapes imply (e.g. the shapes of sample arrays).

    Inputs missing from ``shapes``, or of another rank, are skipped.
    """
    found: dict[str, int] = {}
    for value in inputs:
        shape = shapes.get(value.name or "")
        if shape is None or value.shape is None or len(shape) != len(value.shape):
            continue
        for axis, (dim, size) in enumerate(zip(value.shape, shape, strict=True)):
            if not isinstance(dim, int):
                found.setdefault(dim_key(value, axis, dim), int(size))
    return found


@dataclass
class ConcreteModel:
    """A copy of a model with input dimensions fixed, constants folded and shapes inferred."""

    model: ir.Model
    dims: DimSizes
    origin: dict[int, ir.Node]
    """``id(copy node) -> original node`` for the nodes that survived folding."""
    notes: list[str] = field(default_factory=list)


def _fold_small_constant_of_shape(node: ir.Node) -> bool | None:
    """onnxscript keeps every ``ConstantOfShape`` (model size); at fixed shapes the small ones
    must fold: an attention mask or a class-token ``Expand`` hangs on one."""
    if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return None
    shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
    if shape is None:
        return None
    return math.prod(int(d) for d in shape.numpy().reshape(-1)) <= FOLD_LIMIT or None


_SAME_SHAPE_CONTRIB = frozenset(
    {
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "SimplifiedLayerNormalization",
        "FastGelu",
        "BiasGelu",
        "Gelu",
        "QuickGelu",
        "BiasAdd",
        "RotaryEmbedding",
    }
)


def _contrib_shape(node: ir.Node) -> list[int] | None:
    """The first output shape of common com.microsoft ops (ONNX shape inference knows none of
    them, and every shape after an unknown one is lost), from their documented layouts."""
    shapes: list[list[int] | None] = [
        [int(d) for d in v.shape.numpy()]
        if v is not None and v.shape is not None and v.shape.is_static()
        else None
        for v in node.inputs
    ]
    shapes += [None] * 4
    x = shapes[0]
    op = node.op_type
    if x is None:
        return None
    if op in _SAME_SHAPE_CONTRIB:
        return x
    heads = node.attributes.get_int("num_heads", 1) or 1
    if op == "Attention" and shapes[1] is not None and len(x) == 3:
        hidden = node.attributes.get_ints("qkv_hidden_sizes", None)
        return [x[0], x[1], hidden[2] if hidden else shapes[1][1] // 3]
    if op == "MultiHeadAttention":
        v = shapes[2]
        if len(x) == 5:  # packed QKV [B, S, N, 3, H]
            return [x[0], x[1], x[2] * x[4]]
        if v is not None and len(v) == 4:  # BNSH value
            return [x[0], x[1], v[1] * v[3]]
        return [x[0], x[1], v[2] if v is not None and len(v) == 3 else x[2]]
    if op == "GroupQueryAttention" and len(x) == 3:
        kv_heads = node.attributes.get_int("kv_num_heads", heads) or heads
        packed = node.inputs[1] is None if len(node.inputs) > 1 else True
        head = x[2] // (heads + 2 * kv_heads) if packed else x[2] // heads
        return [x[0], x[1], heads * head]
    if op == "MatMulNBits":
        return [*x[:-1], node.attributes.get_int("N", 0)]
    if op in ("FusedMatMul", "FusedGemm") and shapes[1] is not None:
        a, b = list(x), list(shapes[1])
        if node.attributes.get_int("transA", 0):
            a[-2:] = a[-2:][::-1]
        if node.attributes.get_int("transB", 0):
            b[-2:] = b[-2:][::-1]
        if len(a) < 2 or len(b) < 2:
            return None
        batch = list(np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))
        return [*batch, a[-2], b[-1]]
    if op == "EmbedLayerNormalization" and shapes[2] is not None and len(x) == 2:
        return [x[0], x[1], shapes[2][1]]  # input_ids [B, S], word_embedding [V, H]
    return None


class _ConcreteFold(TolerantFoldConstantsPass):
    """Constant folding with incremental shape inference that also knows the contrib ops."""

    def process_node(self, node: ir.Node, is_function: bool) -> Any:
        replacement = super().process_node(node, is_function)
        if node.domain == "com.microsoft" and node.outputs and node.outputs[0].shape is None:
            shape = _contrib_shape(node)
            if shape is not None and all(d >= 0 for d in shape):
                node.outputs[0].shape = ir.Shape(shape)
                floats = [
                    v.dtype
                    for v in node.inputs
                    if v is not None and v.dtype is not None and v.dtype.is_floating_point()
                ]
                if node.outputs[0].dtype is None and floats:
                    node.outputs[0].dtype = floats[0]  # the activations' type, not the ids'

        return replacement


def concrete_copy(model: ir.Model, dims: Mapping[str, int] | None = None) -> ConcreteModel:
    """A copy of ``model`` (unchanged) whose symbolic input dims take the sizes of ``dims``
    (defaults: see the module docstring), with constants folded and shapes inferred."""
    copy = model.clone()
    pairs = list(zip(nodes(copy.graph), nodes(model.graph), strict=False))
    # A clone walks in the same order as its original: node i of one is node i of the other.
    origin = {id(new): old for new, old in pairs if new.op_type == old.op_type}
    sizes = resolve_dims(list(copy.graph.inputs), dims)
    for value in copy.graph.inputs:
        if value.shape is not None:
            value.shape = ir.Shape(_concrete(value, value.shape, sizes.sizes))
    for node in nodes(copy.graph):
        for output in node.outputs:
            if output.is_graph_output() and output.shape is not None:
                # Named dims shared with the inputs become sizes; the rest comes from inference.
                output.shape = ir.Shape(
                    [
                        sizes.sizes.get(str(d.value), d) if not isinstance(d, int) else d
                        for d in output.shape
                    ]
                )
            elif not output.is_graph_output() and node.graph is copy.graph:
                output.shape = None  # stale symbolic shapes would hide the inferred ones
    notes: list[str] = []
    quiet = logging.getLogger("onnxscript")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            folding = _ConcreteFold(
                shape_inference=True,
                input_size_limit=FOLD_LIMIT,
                output_size_limit=FOLD_LIMIT,
                should_fold=_fold_small_constant_of_shape,
            )
            folding(copy)
        common.RemoveUnusedNodesPass()(copy)
        common.TopologicalSortPass()(copy)
        if folding.unfolded:
            notes.append(f"{len(folding.unfolded)} nodes could not be folded")
    except Exception as exc:  # folding is best effort: analyse what we have
        notes.append(f"constant folding failed: {' '.join(str(exc).split())[:150]}")
    finally:
        quiet.setLevel(level)
    return ConcreteModel(copy, sizes, origin, notes)


def _concrete(value: ir.Value, shape: ir.Shape, sizes: Mapping[str, int]) -> list[int]:
    return [
        d if isinstance(d, int) else sizes[dim_key(value, axis, d)] for axis, d in enumerate(shape)
    ]
