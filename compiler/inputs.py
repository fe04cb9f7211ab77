"""Representative inputs for verification and tuning, and the comparison with the reference.

Synthetic inputs follow the signature: symbolic dimensions take one size per symbol (1 for a
leading axis, 16 elsewhere, clipped to ``--input`` ranges); inputs that index, count or size
something take values from their valid domain (``input_domains``: Gather indices inside the
table, full lengths, positive quantization scales, ...); inputs named like a mask are all ones;
everything else is standard normal (floats) or uniform in [0, 8) (integers).

``compare`` is the verification's test: elementwise tolerance (widened for outputs narrower than
float32), NaN equal to NaN, exact for integers, booleans and strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm.runtime.artifact import TensorSpec
from ai_vmm.runtime.errors import InputError

LEADING_DIM = 1
OTHER_DIM = 16
MAX_SYNTHETIC_BYTES = 4 << 30
"""Synthetic inputs larger than this are refused before they are allocated."""


@dataclass(frozen=True)
class Tolerance:
    """``|ours - ref| <= atol + rtol * |ref|`` elementwise; NaN matches NaN, inf matches inf
    (or the dtype's largest finite value of the same sign)."""

    rtol: float = 1e-3
    atol: float = 1e-4

    def to_json(self) -> dict[str, float]:
        return {"rtol": self.rtol, "atol": self.atol}


@dataclass(frozen=True)
class Domain:
    """Where one input's synthetic values come from.

    Uniform in ``[low, high)`` (integers exclude ``high``), or exactly ``fill``: one value for
    every element, or one value per element in order.
    """

    low: float = 0
    high: float = 8
    fill: tuple[float, ...] | None = None


_STANDARD = ("", "ai.onnx")
_LENGTH_CHAIN = frozenset({"Unsqueeze", "Reshape", "Cast", "Identity", "Squeeze", "Expand"})
_COMPARISONS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual"})
# Scale operands of quantized ops: ONNX requires them positive; a random normal scale flips the
# sign and saturates every output, where backends differ in how they round and clamp.
_SCALE_INPUTS = {
    "QuantizeLinear": (1,),
    "DequantizeLinear": (1,),
    "QLinearMatMul": (1, 4, 6),
    "QLinearConv": (1, 4, 6),
}
SCALE_DOMAIN = Domain(low=0.01, high=0.1)
RANGE_FILL = {0: 0.0, 1: float(OTHER_DIM), 2: 1.0}
"""``Range(start, limit, delta)``: 0 to 16 step 1, never an empty or endless range."""


def input_domains(model: ir.Model) -> dict[str, Domain]:
    """Value domains for graph inputs whose meaning the model's own ops pin down.

    Random values are representative for activations, not for inputs that index, count or size
    something: on those, random values run backends into the cases the ONNX spec leaves open
    (indices out of range, lengths that mask every key of an attention row, empty ranges,
    unsigned subtraction below zero), where their outputs legitimately differ. Those inputs get
    values from the valid domain, derived from the consuming op:

    - ``Gather`` / ``GatherElements`` / ``ScatterElements`` indices: within the indexed axis;
      ``GatherND`` / ``ScatterND``: within the leading axes they index; ``RoiAlign``'s
      ``batch_indices``: within the batch of its images;
    - ``TopK``'s ``K``: 1; ``OneHot``'s depth: 4;
    - lengths: ``Attention``'s ``nonpad_kv_seqlen`` and any integer compared against a constant
      ``arange(n)`` (a padding mask built from lengths) take the full length ``n``;
    - ``Range`` operands: 0, 16, 1;
    - ``Resize`` ``sizes``: batch and channels kept, spatial axes doubled;
    - quantization scales: positive;
    - an unsigned minuend of ``Sub``: above every subtrahend the defaults draw.
    """
    domains: dict[str, Domain] = {}
    for value in model.graph.inputs:
        name = value.name or ""
        for node, index in value.uses():
            if node.domain not in _STANDARD:
                continue
            domain = _domain_for_use(value, node, index)
            if domain is not None:
                domains[name] = _narrower(domains.get(name), domain)
    return domains


def index_bounds(model: ir.Model) -> dict[str, Domain]:
    """The driver's name for :func:`input_domains` (Gather indices were its first rule)."""
    return input_domains(model)


def _narrower(old: Domain | None, new: Domain) -> Domain:
    if old is None or new.fill is not None:
        return new
    if old.fill is not None:
        return old
    return Domain(low=max(old.low, new.low), high=min(old.high, new.high))


def _static_dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int)]
    return dims if len(dims) == len(value.shape) else None


def _domain_for_use(value: ir.Value, node: ir.Node, index: int) -> Domain | None:
    kind = _numpy_kind(value.dtype)
    op = node.op_type
    if op == "Gather" and index == 1:
        data = _static_dims(node.inputs[0])
        attr = node.attributes.get("axis")
        axis = attr.as_int() if attr is not None else 0
        if data is not None and -len(data) <= axis < len(data):
            return Domain(0, data[axis])
    if op in ("GatherElements", "ScatterElements") and index == 1:
        data = _static_dims(node.inputs[0])
        attr = node.attributes.get("axis")
        axis = attr.as_int() if attr is not None else 0
        if data is not None and -len(data) <= axis < len(data):
            return Domain(0, data[axis])
    if op in ("GatherND", "ScatterND") and index == 1:
        data = _static_dims(node.inputs[0])
        indices = _static_dims(value)
        if data is not None and indices:
            depth = indices[-1]
            if 0 < depth <= len(data):
                return Domain(0, min(data[:depth]))
    if op == "RoiAlign" and index == 2:  # batch_indices: which image of X each box is on
        data = _static_dims(node.inputs[0])
        return Domain(0, data[0] if data else 1)
    if op == "TopK" and index == 1:
        return Domain(fill=(1.0,))
    if op == "OneHot" and index == 1:
        return Domain(fill=(4.0,))
    if op == "Attention" and index == 6:
        key = _static_dims(node.inputs[1])
        if key is not None and len(key) in (3, 4):
            return Domain(fill=(float(key[-2] if len(key) == 4 else key[1]),))
    if op == "Range" and index in RANGE_FILL:
        return Domain(fill=(RANGE_FILL[index],))
    if op == "Resize" and index == 3:
        return _resize_sizes(node)
    if index in _SCALE_INPUTS.get(op, ()):
        return SCALE_DOMAIN
    if op == "Sub" and index == 0 and kind == "u":
        return Domain(low=8, high=16)
    if kind in "iu":
        length = _compared_length(value)
        if length is not None:
            return Domain(fill=(float(length),))
    return None


def _numpy_kind(dtype: ir.DataType | None) -> str:
    """numpy's kind letter of an IR element type (``i``, ``u``, ``f``, ``b`` ...), or ``?``."""
    try:
        return np.dtype(dtype.numpy()).kind if dtype is not None else "?"
    except (TypeError, ValueError, NotImplementedError):
        return "?"


def _resize_sizes(node: ir.Node) -> Domain | None:
    data = _static_dims(node.inputs[0])
    if data is None:
        return None
    attr = node.attributes.get("axes")
    if attr is not None:
        axes = [a % len(data) for a in attr.as_ints()]
        return Domain(fill=tuple(float(2 * data[a]) for a in axes))
    return Domain(fill=tuple(float(d if axis < 2 else 2 * d) for axis, d in enumerate(data)))


def _compared_length(value: ir.Value, depth: int = 0) -> int | None:
    """``n`` when ``value`` (through reshapes and casts) is compared with a constant arange(n)."""
    if depth > 4:
        return None
    for node, index in value.uses():
        if node.domain not in _STANDARD:
            continue
        if node.op_type in _LENGTH_CHAIN and index == 0:
            found = _compared_length(node.outputs[0], depth + 1)
        elif node.op_type in _COMPARISONS and len(node.inputs) == 2:
            found = _arange_length(node.inputs[1 - index])
        else:
            found = None
        if found is not None:
            return found
    return None


def _arange_length(value: ir.Value | None) -> int | None:
    tensor = value.const_value if value is not None else None
    if tensor is None:
        return None
    try:
        array = np.asarray(tensor.numpy()).ravel()
    except Exception:  # a tensor type numpy cannot hold: not an arange
        return None
    if array.size < 2 or not np.issubdtype(array.dtype, np.integer):
        return None
    expected = np.arange(array.size, dtype=array.dtype)
    return int(array.size) if np.array_equal(array, expected) else None


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
    specs: tuple[TensorSpec, ...],
    bounds: Mapping[str, Domain | int],
    seed: int = 0,
    batch: int = LEADING_DIM,
) -> dict[str, np.ndarray] | None:
    """Random inputs that fit ``specs``; ``None`` if a non-tensor input makes that impossible.

    ``bounds`` gives inputs their :class:`Domain` (see :func:`input_domains`); an ``int`` ``n``
    means indices in ``[0, n)``.
    """
    rng = np.random.default_rng(seed)
    symbols: dict[str, int] = {}
    planned: list[tuple[TensorSpec, tuple[int, ...], np.dtype[Any]]] = []
    for spec in specs:
        if spec.kind != "tensor" or not spec.dtype:
            return None
        shape = concrete_shape(spec, symbols, batch)
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            return None
        planned.append((spec, shape, dtype))
    # Before any allocation: a declared dimension of 2**40 is a clear error, not a MemoryError.
    total = sum(
        int(np.prod(shape, dtype=np.float64)) * dtype.itemsize for _, shape, dtype in planned
    )
    if total > MAX_SYNTHETIC_BYTES:
        largest = max(planned, key=lambda p: float(np.prod(p[1], dtype=np.float64)))
        raise InputError(
            f"synthetic inputs would take {total / 2**30:.3g} GiB (input '{largest[0].name}' "
            f"has shape {list(largest[1])}): fix its shape with --input NAME[SHAPE] or give "
            f"real inputs with --sample"
        )
    return {
        spec.name: _values(spec.name, shape, dtype, bounds.get(spec.name), rng)
        for spec, shape, dtype in planned
    }


def _values(
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    bound: Domain | int | None,
    rng: np.random.Generator,
) -> np.ndarray:
    domain = Domain(0, bound) if isinstance(bound, int) else bound
    if domain is not None and dtype.kind not in "bUSO":
        drawn = _from_domain(domain, shape, dtype, rng)
        if drawn is not None:
            return drawn
    if "mask" in name.lower():
        # All-true / all-ones: a random boolean mask masks whole attention rows out, and what a
        # backend returns for a fully masked row (NaN, zeros, uniform weights) is its own choice.
        return np.ones(shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 8, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating) or dtype.kind == "V":
        return rng.standard_normal(size=shape).astype(np.float32).astype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return np.array(rng.choice(["a", "b", "c"], size=shape), dtype=object)
    return np.zeros(shape, dtype=dtype)


def _from_domain(
    domain: Domain, shape: tuple[int, ...], dtype: np.dtype[Any], rng: np.random.Generator
) -> np.ndarray | None:
    size = int(np.prod(shape))
    if domain.fill is not None:
        if len(domain.fill) == 1:
            return np.full(shape, domain.fill[0]).astype(dtype)
        if len(domain.fill) == size:
            return np.asarray(domain.fill).reshape(shape).astype(dtype)
        return None
    if np.issubdtype(dtype, np.integer):
        low = int(domain.low)
        return rng.integers(low, max(int(domain.high), low + 1), size=shape).astype(dtype)
    return rng.uniform(domain.low, domain.high, size=shape).astype(np.float32).astype(dtype)


def _float_max(dtype: np.dtype[Any]) -> float:
    """The largest finite value of a floating dtype (``inf`` for anything else)."""
    if np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).max)
    if dtype.kind == "V" and "float" in dtype.name:
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).max)
    return float("inf")


def _float_eps(dtype: np.dtype[Any]) -> float | None:
    """Machine epsilon of a floating dtype (numpy's or ml_dtypes' bfloat16 / float8 / float4)."""
    if np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    if dtype.kind == "V" and "float" in dtype.name:
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).eps)
    return None


def output_tolerance(dtype: np.dtype[Any], tolerance: Tolerance) -> Tolerance:
    """``tolerance``, widened to four ULPs at unit scale for outputs narrower than float32.

    A half-precision output is rounded at every op that produced it, and backends order and fuse
    those ops differently: with unit-scale synthetic inputs, results that agree to the dtype's
    precision differ by a few of its ULPs (float16: 2**-10 each), far above a float32 tolerance.
    """
    eps = _float_eps(dtype)
    if eps is None or eps <= float(np.finfo(np.float32).eps):
        return tolerance
    return Tolerance(rtol=max(tolerance.rtol, 4 * eps), atol=max(tolerance.atol, 4 * eps))


def compare(ours: Any, reference: Any, tolerance: Tolerance) -> dict[str, Any]:
    """Compare one output with the reference: max abs error, cosine similarity, pass/fail."""
    a = np.asarray(ours)
    b = np.asarray(reference)
    if a.shape != b.shape:
        return {"passed": False, "reason": f"shape {list(a.shape)} vs reference {list(b.shape)}"}
    floating = _float_eps(a.dtype) is not None and _float_eps(b.dtype) is not None
    if not floating and (a.dtype.kind in "biuUSOV" or b.dtype.kind in "biuUSOV"):
        equal = a == b if a.dtype.kind in "USO" else np.equal(a, b)
        mismatched = int(np.size(equal) - np.count_nonzero(equal))
        exact: dict[str, Any] = {"passed": mismatched == 0, "mismatched": mismatched}
        if mismatched and a.dtype.kind in "biu" and b.dtype.kind in "biu":
            # The driver's one-line reason quotes max_abs_error.
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            exact["max_abs_error"] = float(diff.max())
        elif mismatched:
            exact["reason"] = f"{mismatched} of {np.size(equal)} values differ"
        return exact
    widened = output_tolerance(b.dtype, tolerance)
    tolerance, was = widened, tolerance
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    # Infinity matches infinity, and also the dtype's largest finite value of the same sign:
    # backends mask attention logits with -inf or with the lowest float, and saturate or not.
    largest = min(_float_max(a.dtype), _float_max(b.dtype))
    with np.errstate(invalid="ignore"):
        same_inf = (
            (np.isinf(a64) | np.isinf(b64))
            & (np.sign(a64) == np.sign(b64))
            & (np.minimum(np.abs(a64), np.abs(b64)) >= largest)
        )
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
    if widened != was:
        result["tolerance"] = widened.to_json()
    if finite.any():
        x, y = a64[finite], b64[finite]
        norms = float(np.linalg.norm(x) * np.linalg.norm(y))
        result["cosine"] = float(np.dot(x, y) / norms) if norms > 0 else 1.0
    return result
