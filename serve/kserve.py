"""The KServe v2 / Open Inference Protocol over HTTP: request and response shapes only.

JSON tensors (``data`` as a flat or nested list) and the binary tensor extension that
``tritonclient.http`` uses by default: the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, in input order, each
announced by ``parameters.binary_data_size``; outputs come back the same way when the request
asks (``binary_data_output``, or ``binary_data`` per output). ``BYTES`` elements travel as a
4-byte little-endian length and the bytes; models get them as ``str`` (ONNX string tensors).
Every malformed request is a ``Rejected`` (400) whose message says which tensor and what was
wrong; nothing here knows about scheduling.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_vmm.serve.admission import Rejected
from ai_vmm.serve.backend import Tensor

_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
MAX_RANK = 16


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol's datatype name for a numpy dtype (``FP32``, ``BYTES``, ``BF16``)."""
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.name == "bfloat16":
        return "BF16"
    for name, candidate in _NUMPY.items():
        if candidate == dtype:
            return name
    raise ValueError(f"dtype {dtype} has no KServe v2 datatype")


def numpy_of(datatype: str) -> np.dtype[Any] | None:
    if datatype == "BF16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return _NUMPY.get(datatype)


@dataclass
class InferRequest:
    """A parsed ``/infer`` request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, bool | None]]
    """Requested outputs ``(name, binary)``; empty: every output."""
    binary_default: bool
    parameters: dict[str, Any] = field(default_factory=dict)


def _bad(message: str) -> Rejected:
    return Rejected(400, "bad_request", message)


def parse_infer_request(
    body: bytes, header_length: int | None, signature: tuple[Tensor, ...]
) -> InferRequest:
    """Parse and check an infer request against the model's inputs.

    Raises:
        Rejected: 400 naming the first problem (JSON, names, datatypes, shapes, byte counts).
    """
    if header_length is None:
        header_bytes, binary = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise _bad(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(body)} bytes"
            )
        header_bytes, binary = body[:header_length], body[header_length:]
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the request header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _bad("the request must be a JSON object")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("'inputs' must be a non-empty list")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad("'parameters' must be an object")
    expected = {t.name: t for t in signature}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _bad(f"inputs[{i}] must be an object with a 'name'")
        name = raw["name"]
        if name in inputs:
            raise _bad(f"input '{name}' appears twice")
        spec = expected.get(name)
        if spec is None:
            raise _bad(f"unknown input '{name}'; the model takes {', '.join(map(repr, expected))}")
        array, used = _parse_tensor(raw, spec, binary, offset)
        offset += used
        inputs[name] = array
    if offset != len(binary):
        raise _bad(
            f"the body holds {len(binary)} bytes of binary tensor data but the inputs announce "
            f"{offset} (binary_data_size)"
        )
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise _bad(f"missing input {', '.join(map(repr, missing))}")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs")),
        binary_default=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def _parse_tensor(
    raw: dict[str, Any], spec: Tensor, binary: bytes, offset: int
) -> tuple[np.ndarray, int]:
    name = spec.name
    datatype = raw.get("datatype")
    expected_type = datatype_of(spec.dtype)
    if datatype != expected_type:
        raise _bad(f"input '{name}' has datatype {datatype!r}; the model expects {expected_type}")
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _bad(f"input '{name}': 'shape' must be a list of at most {MAX_RANK} sizes >= 0")
    _check_shape(spec, shape)
    count = math.prod(shape)
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad(f"input '{name}': 'parameters' must be an object")
    size = params.get("binary_data_size")
    dtype = spec.dtype
    if size is not None:
        if "data" in raw:
            raise _bad(f"input '{name}' has both 'data' and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"input '{name}': binary_data_size must be a byte count")
        if offset + size > len(binary):
            raise _bad(
                f"input '{name}' announces {size} bytes but only {len(binary) - offset} remain "
                "in the body"
            )
        chunk = binary[offset : offset + size]
        if datatype == "BYTES":
            return _as_text(_decode_bytes(chunk, count, name), name).reshape(shape), size
        if size != count * dtype.itemsize:
            raise _bad(
                f"input '{name}' has {size} bytes; shape {shape} of {datatype} needs "
                f"{count * dtype.itemsize}"
            )
        array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True)
        return array.reshape(shape), size
    if "data" not in raw:
        raise _bad(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    flat = _flatten(raw["data"], name)
    if len(flat) != count:
        raise _bad(f"input '{name}' has {len(flat)} values; shape {shape} needs {count}")
    if datatype == "BYTES":
        values = np.empty(count, dtype=object)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise _bad(f"input '{name}': BYTES values in JSON must be strings")
            values[i] = item
        return values.reshape(shape), 0
    try:
        if datatype == "BOOL":
            if not all(isinstance(v, bool) for v in flat):
                raise _bad(f"input '{name}': BOOL values must be true or false")
        elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
            raise _bad(f"input '{name}': {datatype} values must be numbers")
        if dtype.kind in "iu" and not all(isinstance(v, int) for v in flat):
            raise _bad(f"input '{name}': {datatype} values must be integers")
        array = np.array(flat, dtype=dtype)
    except OverflowError:
        raise _bad(f"input '{name}': a value does not fit {datatype}") from None
    return array.reshape(shape), 0


def _check_shape(spec: Tensor, shape: list[int]) -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise _bad(
            f"input '{spec.name}' has shape {shape} (rank {len(shape)}); the model expects "
            f"{list(spec.shape)} (rank {len(spec.shape)}, -1 = any size)"
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want >= 0 and got != want:
            raise _bad(
                f"input '{spec.name}' has shape {shape}; the model expects {list(spec.shape)} "
                f"(axis {axis} must be {want})"
            )


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > MAX_RANK:
                    raise _bad(f"input '{name}': 'data' is nested deeper than {MAX_RANK}")
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _decode_bytes(chunk: bytes, count: int, name: str) -> np.ndarray:
    values = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(chunk):
            raise _bad(f"input '{name}': BYTES data ends inside element {i} of {count}")
        (length,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + length > len(chunk):
            raise _bad(f"input '{name}': BYTES element {i} runs past the tensor's data")
        values[i] = chunk[pos : pos + length]
        pos += length
    if pos != len(chunk):
        raise _bad(f"input '{name}': {len(chunk) - pos} bytes left after {count} BYTES elements")
    return values


def _as_text(values: np.ndarray, name: str) -> np.ndarray:
    """BYTES elements as ``str``: what ONNX string tensors hold (ONNX Runtime would turn a
    ``bytes`` object into the text ``"b'...'"``)."""
    for i, item in enumerate(values):
        try:
            values[i] = item.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f"input '{name}': BYTES element {i} is not UTF-8 text") from None
    return values


def _requested_outputs(raw: Any) -> list[tuple[str, bool | None]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("'outputs' must be a list")
    requested: list[tuple[str, bool | None]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"outputs[{i}] must be an object with a 'name'")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"outputs[{i}]: 'parameters' must be an object")
        if "classification" in params:
            raise _bad("the classification extension is not supported")
        binary = params.get("binary_data")
        requested.append((item["name"], None if binary is None else bool(binary)))
    return requested


def encode_infer_response(
    model: str,
    version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
    signature: tuple[Tensor, ...],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it.

    Raises:
        Rejected: 400 when the request asked for an output the model does not have.
    """
    known = [t.name for t in signature]
    wanted = request.outputs or [(name, None) for name in known]
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in wanted:
        if name not in outputs:
            raise _bad(f"unknown output '{name}'; the model has {', '.join(map(repr, known))}")
        array = np.asarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if request.binary_default if binary is None else binary:
            raw = _encode_binary(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(array)
        entries.append(entry)
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        header["id"] = request.id
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return header_bytes, None
    return b"".join([header_bytes, *chunks]), len(header_bytes)


def _encode_binary(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.reshape(-1):
            raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()


def _json_data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if array.dtype.kind in "OSU":
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in flat
        ]
    if array.dtype.name == "bfloat16" or array.dtype == np.float16:
        flat = flat.astype(np.float32)
    return list(flat.tolist())


def tensor_metadata(tensors: tuple[Tensor, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "datatype": datatype_of(t.dtype),
            "shape": [-1] if t.shape is None else list(t.shape),
        }
        for t in tensors
    ]


def error_body(message: str) -> dict[str, str]:
    """The protocol's error shape (what ``tritonclient`` reads into its exception)."""
    return {"error": message}


__all__ = [
    "InferRequest",
    "datatype_of",
    "encode_infer_response",
    "error_body",
    "numpy_of",
    "parse_infer_request",
    "tensor_metadata",
]
