"""Model signatures (inputs/outputs as ``TensorSpec``) and the ``--input NAME[SHAPE]`` option.

``--input`` follows OpenVINO ovc's syntax: ``pixel_values[1,3,224,224]`` fixes every dimension,
``input_ids[1,?]`` leaves the second one dynamic, ``input_ids[1,1..128]`` bounds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import onnx_ir as ir

from ai_vmm.runtime.artifact import Dim, TensorSpec
from ai_vmm.runtime.errors import CompileError

_SPEC = re.compile(r"^\s*([^\[\]]+?)\s*\[([^\]]*)\]\s*$")


def value_spec(value: ir.Value) -> TensorSpec:
    """The ``TensorSpec`` of a graph input or output."""
    kind, dtype = _kind_and_dtype(value.type)
    shape: tuple[Dim, ...] | None = None
    if kind == "tensor" and value.shape is not None:
        shape = tuple(_dim(d) for d in value.shape)
    return TensorSpec(name=value.name or "", dtype=dtype, shape=shape, kind=kind)


def model_signature(model: ir.Model) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs of ``model``'s main graph."""
    return (
        tuple(value_spec(v) for v in model.graph.inputs),
        tuple(value_spec(v) for v in model.graph.outputs),
    )


def numpy_dtype_name(dtype: ir.DataType | None) -> str:
    if dtype is None:
        return ""
    try:
        return str(dtype.numpy().name)
    except (TypeError, ValueError, NotImplementedError):
        return dtype.name.lower()


def _kind_and_dtype(type_: ir.TypeProtocol | None) -> tuple[str, str]:
    if type_ is None or isinstance(type_, ir.TensorType):
        return "tensor", numpy_dtype_name(type_.dtype if type_ is not None else None)
    if isinstance(type_, ir.SequenceType):
        return "sequence", numpy_dtype_name(type_.dtype)
    if isinstance(type_, ir.OptionalType):
        return "optional", numpy_dtype_name(type_.dtype)
    return "other", ""


def _dim(dim: int | ir.SymbolicDim) -> Dim:
    if isinstance(dim, int):
        return dim
    return dim.value if dim.value else None


def parse_input_specs(specs: Iterable[str]) -> dict[str, list[Dim]]:
    """Parse ``NAME[d0,d1,...]`` options; a dim is ``N``, ``?``/``-1`` or ``LOW..HIGH``."""
    parsed: dict[str, list[Dim]] = {}
    for raw in specs:
        for text in _split_top_level(raw):
            match = _SPEC.match(text)
            if not match:
                raise CompileError(
                    f"--input {text!r} is not NAME[SHAPE] (e.g. pixel_values[1,3,224,224] or "
                    f"input_ids[1,?] or input_ids[1,1..128])"
                )
            name, body = match.group(1), match.group(2).strip()
            dims: list[Dim] = []
            for item in [p.strip() for p in body.split(",")] if body else []:
                dims.append(_parse_dim(item, text))
            parsed[name] = dims
    return parsed


def _split_top_level(text: str) -> list[str]:
    """``a[1,2],b[3]`` -> ``['a[1,2]', 'b[3]']`` (commas inside brackets do not split)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _parse_dim(item: str, text: str) -> Dim:
    if item in ("?", "-1", ""):
        return None
    if ".." in item:
        low, _, high = item.partition("..")
        try:
            low_i = int(low) if low.strip() else 0
            high_i = int(high) if high.strip() else -1
        except ValueError:
            raise CompileError(f"--input {text!r}: bad range {item!r}") from None
        if high_i != -1 and high_i < low_i:
            raise CompileError(f"--input {text!r}: empty range {item!r}")
        return {"min": low_i, "max": high_i} if high_i != -1 else {"min": low_i}
    try:
        size = int(item)
    except ValueError:
        raise CompileError(f"--input {text!r}: {item!r} is not a size, '?' or LOW..HIGH") from None
    if size < 0:
        raise CompileError(f"--input {text!r}: negative size {size}")
    return size


def apply_input_shapes(model: ir.Model, shapes: dict[str, list[Dim]]) -> dict[str, list[Any]]:
    """Set graph input shapes from ``--input``; return the bounded inputs for the targets.

    A fixed size replaces the model's dimension; ``?`` keeps (or makes) it dynamic; a range makes
    it dynamic in the ONNX model and is recorded as bounds for the signature and OpenVINO.
    """
    inputs = {v.name: v for v in model.graph.inputs}
    bounds: dict[str, list[Any]] = {}
    for name, dims in shapes.items():
        if name not in inputs:
            raise CompileError(
                f"--input names '{name}', which is not a model input "
                f"(inputs: {', '.join(sorted(n for n in inputs if n))})"
            )
        value = inputs[name]
        old = list(value.shape) if value.shape is not None else None
        if old is not None and len(old) != len(dims):
            raise CompileError(
                f"--input {name}: {len(dims)} dimensions given, the model's input has {len(old)}"
            )
        new: list[int | str | None] = []
        for axis, dim in enumerate(dims):
            previous = old[axis] if old is not None else None
            if isinstance(dim, int):
                if isinstance(previous, int) and previous != dim:
                    raise CompileError(
                        f"--input {name}: axis {axis} is fixed to {previous} in the model, "
                        f"cannot set it to {dim}"
                    )
                new.append(dim)
            elif isinstance(previous, ir.SymbolicDim) and previous.value:
                new.append(previous.value)
            elif isinstance(previous, int) and dim is None:
                new.append(previous)
            else:
                new.append(f"{name}_dim{axis}")
        value.shape = ir.Shape(new)
        if any(isinstance(d, dict) for d in dims):
            bounds[name] = [d if isinstance(d, dict) else n for d, n in zip(dims, new, strict=True)]
    return bounds


def bounded_signature(
    inputs: tuple[TensorSpec, ...], bounds: dict[str, list[Any]]
) -> tuple[TensorSpec, ...]:
    """Replace the dims of bounded inputs by their ``{"min", "max"}`` ranges."""
    out = []
    for spec in inputs:
        if spec.name in bounds and spec.shape is not None:
            shape = tuple(
                b if isinstance(b, dict) else s
                for b, s in zip(bounds[spec.name], spec.shape, strict=True)
            )
            spec = TensorSpec(spec.name, spec.dtype, shape, spec.kind)
        out.append(spec)
    return tuple(out)
