"""ONNX frontend: a path (external data and > 2 GB models too) or a ``ModelProto`` -> onnx_ir.

The model is validated with the ONNX checker, brought to an opset the targets support (the ONNX
version converter, only when the model is older than that), and converted to onnx_ir. Initializers
listed as graph inputs (old exporters do this) stop being inputs: users feed activations only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from ai_vmm.runtime.errors import ModelLoadError

# The oldest default-domain opset both targets accept; older models are converted up to it.
MIN_OPSET = 7
UPGRADE_TO = 13


@dataclass
class LoadedModel:
    """The IR model plus what the report and cache need to know about its source."""

    model: ir.Model
    sha256: str
    source: str
    notes: list[str]
    torch_program: Any = None
    """The ``torch.export`` program a torch source was exported from (the cuda target compiles
    it directly when the whole model goes to the GPU)."""


def load_onnx(source: str | Path | onnx.ModelProto) -> LoadedModel:
    """Load, validate and convert an ONNX model.

    Raises:
        ModelLoadError: the file is missing, not ONNX, truncated or fails the checker.
    """
    notes: list[str] = []
    if isinstance(source, onnx.ModelProto):
        proto = source
        digest = hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
        label = "<ModelProto>"
        _check(proto, label)
    else:
        path = Path(source)
        label = str(path)
        proto = _read_proto(path)
        digest = _hash_with_external_data(path, proto)
        _check(str(path), label)
        if _needs_upgrade(proto):
            try:
                onnx.load_external_data_for_model(proto, str(path.parent))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"{path}: cannot read its external data: {exc}") from exc
        else:
            # ir.load keeps external tensors on disk (memory-mapped): models over 2 GB load too.
            try:
                model = ir.load(path)
            except Exception as exc:
                raise ModelLoadError(f"{label}: cannot convert to the IR: {exc}") from exc
            return _finish(model, digest, label, notes)
    proto = _upgrade_opset(proto, notes)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise ModelLoadError(f"{label}: cannot convert to the IR: {exc}") from exc
    return _finish(model, digest, label, notes)


def _finish(model: ir.Model, digest: str, label: str, notes: list[str]) -> LoadedModel:
    initializer_inputs = [v for v in model.graph.inputs if v.name in model.graph.initializers]
    for value in initializer_inputs:
        model.graph.inputs.remove(value)
    if initializer_inputs:
        notes.append(f"{len(initializer_inputs)} initializers were also graph inputs; now weights")
    return LoadedModel(model=model, sha256=digest, source=label, notes=notes)


def _check(model: onnx.ModelProto | str, label: str) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        # A node in a domain the checker does not know is the targets' business (capability
        # says which target runs it), not a malformed file.
        if "No Op registered" in str(exc) or "No opset import for domain" in str(exc):
            return
        raise ModelLoadError(f"{label} fails the ONNX checker: {message}") from exc
    except (DecodeError, OSError) as exc:
        raise ModelLoadError(f"{label} is not a readable ONNX model: {exc}") from exc


def _needs_upgrade(proto: onnx.ModelProto) -> bool:
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return version is not None and version < MIN_OPSET


def _upgrade_opset(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    if not _needs_upgrade(proto):
        return proto
    version = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    try:
        upgraded = onnx.version_converter.convert_version(proto, UPGRADE_TO)
    except Exception as exc:
        notes.append(f"opset {version} kept: the version converter failed ({exc})")
        return proto
    notes.append(f"opset {version} converted to {UPGRADE_TO}")
    return upgraded


def onnx_file_digest(path: Path) -> str:
    """sha256 of an ONNX file and its external data files (what ``load_onnx`` records)."""
    return _hash_with_external_data(path, _read_proto(path))


def _read_proto(path: Path) -> onnx.ModelProto:
    """The file's ModelProto without external data; a clear error for anything else."""
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not an ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable ONNX model (truncated or another format): "
            f"{exc.__class__.__name__}"
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{path} is not an ONNX model: it holds no graph")
    return proto


def _hash_with_external_data(path: Path, proto: onnx.ModelProto) -> str:
    digest = hashlib.sha256(path.read_bytes())
    locations = sorted(
        {
            entry.value
            for tensor in proto.graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    for location in locations:
        data = path.parent / location
        if not data.is_file():
            raise ModelLoadError(f"{path}: its external data file {location} is missing")
        digest.update(location.encode())
        with open(data, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
