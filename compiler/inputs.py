"""Representative inputs for verification and tuning, and the comparison with the reference.

Synthetic inputs follow the signature: symbolic dimensions take one size per symbol (1 for a
leading axis, 16 elsewhere, clipped to ``--input`` ranges); integer inputs that index a ``Gather``
stay inside the gathered table; inputs named like a mask are all ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm.runtime.artifact import TensorSpec

LEADING_DIM = 1
OTHER_DIM = 16


@dataclass(frozen=True)
class Tolerance:
    """``|ours - ref| <= atol + rtol * |ref|`` elementwise; NaN matches NaN, inf matches inf."""

    rtol: float = 1e-3
    atol: float = 1e-4

    def to_json(self) -> dict[str, float]:
        return {"rtol": self.rtol, "atol": self.atol}


def index_bounds(model: ir.Model) -> dict[str, int]:
    """For integer graph inputs used as Gather indices: the size of the gathered axis."""
    bounds: dict[str, int] = {}
    for value in model.graph.inputs:
        for node, index in value.uses():
            if node.op_type != "Gather" or index != 1 or node.domain not in ("", "ai.onnx"):
                continue
            data = node.inputs[0]
            axis_attr = node.attributes.get("axis")
            axis = axis_attr.as_int() if axis_attr is not None else 0
            if data is not None and data.shape is not None and len(data.shape) > axis:
                size = data.shape[axis]
                if isinstance(size, int):
                    bounds[value.name or ""] = min(bounds.get(value.name or "", size), size)
    return bounds


def concrete_shape(
    spec: TensorSpec, symbols: dict[str, int], leading: int = LEADING_DIM
) -> tuple[int, ...]:
    """A concrete shape for ``spec`` (consistent sizes for shared symbols).

    A dynamic leading axis takes ``leading`` (the batch), any other dynamic axis ``OTHER_DIM``.
    """
    if spec.shape is None:
        return (OTHER_DIM,)
    shape = []
    for axis, dim in enumerate(spec.shape):
        default = leading if axis == 0 else OTHER_DIM
        if isinstance(dim, int):
            shape.append(dim)
        elif isinstance(dim, str):
            shape.append(symbols.setdefault(dim, default))
        elif isinstance(dim, dict):
            high = dim.get("max", default)
            shape.append(max(int(dim.get("min", 0)), min(default, int(high))))
        else:
            shape.append(default)
    return tuple(shape)


def synthetic_inputs(
    specs: tuple[TensorSpec, ...], bounds: dict[str, int], seed: int = 0, batch: int = LEADING_DIM
) -> dict[str, np.ndarray] | None:
    """Random inputs that fit ``specs``; ``None`` if a non-tensor input makes that impossible."""
    rng = np.random.default_rng(seed)
    symbols: dict[str, int] = {}
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.kind != "tensor" or not spec.dtype:
            return None
        shape = concrete_shape(spec, symbols, batch)
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            return None
        inputs[spec.name] = _values(spec.name, shape, dtype, bounds.get(spec.name), rng)
    return inputs


def _values(
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    bound: int | None,
    rng: np.random.Generator,
) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if "mask" in name.lower():
        return np.ones(shape, dtype=dtype)
    if np.issubdtype(dtype, np.integer):
        high = bound if bound is not None else 8
        return rng.integers(0, max(high, 1), size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating) or dtype.kind == "V":
        return rng.standard_normal(size=shape).astype(np.float32).astype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return np.array(rng.choice(["a", "b", "c"], size=shape), dtype=object)
    return np.zeros(shape, dtype=dtype)


def compare(ours: Any, reference: Any, tolerance: Tolerance) -> dict[str, Any]:
    """Compare one output with the reference: max abs error, cosine similarity, pass/fail."""
    a = np.asarray(ours)
    b = np.asarray(reference)
    if a.shape != b.shape:
        return {"passed": False, "reason": f"shape {list(a.shape)} vs reference {list(b.shape)}"}
    if a.dtype.kind in "biuUSOV" or b.dtype.kind in "biuUSOV":
        equal = a == b if a.dtype.kind in "USO" else np.equal(a, b)
        mismatched = int(np.size(equal) - np.count_nonzero(equal))
        return {"passed": mismatched == 0, "mismatched": mismatched}
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    same_inf = np.isinf(a64) & (a64 == b64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a64 - b64)
        err = np.where(both_nan | same_inf, 0.0, err)
        err = np.where(np.isnan(err), np.inf, err)
        ok = err <= tolerance.atol + tolerance.rtol * np.abs(np.nan_to_num(b64))
    finite = np.isfinite(a64) & np.isfinite(b64)
    result: dict[str, Any] = {
        "passed": bool(np.all(ok)),
        "max_abs_error": float(err.max()) if err.size else 0.0,
    }
    if finite.any():
        x, y = a64[finite], b64[finite]
        norms = float(np.linalg.norm(x) * np.linalg.norm(y))
        result["cosine"] = float(np.dot(x, y) / norms) if norms > 0 else 1.0
    return result
